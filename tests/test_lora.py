"""LoRA / LoRA-FA as the trainable slice: insertion, placement, the prefix split, learning, resume, bad specs."""

import numpy as np
import onnx
import pytest

from edgetune import Tuner
from edgetune.errors import ModelError
from edgetune.graph import prepare
from edgetune.graph.blocks import find_params
from edgetune.graph.lora import find_linears, initial_values, plan_lora
from edgetune.graph.prepare import arena_group
from edgetune.graph.trainable import LoraSpec, TrainableSpec
from models.tiny import build_causal_lm, build_classifier


def _sizes(model_path, targets):
    """Σ r·(in+out) and Σ r·out over the layers ``targets`` names, read off the base graph."""
    model = onnx.load(str(model_path))
    layers = plan_lora(model, LoraSpec(rank=4, alpha=8, targets=targets))
    return layers, sum(4 * (l.linear.in_features + l.linear.out_features) for l in layers), \
        sum(4 * l.linear.out_features for l in layers)


def test_only_adapters_are_in_the_arena_placed_in_their_layer_block(classifier):
    layers, full, b_only = _sizes(classifier["model"], ("q", "v"))
    assert [l.linear.module for l in layers] == [
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(3) for m in ("query", "value")
    ], "modules come from node scopes although the weights are named onnx::MatMul_*"
    tuner = Tuner.from_onnx(classifier["model"], trainable="lora:r=4,targets=q,v")
    names = [p.name for p in tuner.params]
    assert all(n.endswith((".lora_A.weight", ".lora_B.weight")) for n in names) and len(names) == 12
    assert tuner.trainable_params == full == 3 * 2 * 4 * (32 + 32)
    for param in tuner.params:
        assert param.block == int(param.name.split(".")[3]) and arena_group(param) == param.block + 1
    shapes = {p.name: p.shape for p in tuner.params}
    assert shapes["bert.encoder.layer.1.attention.self.query.lora_A.weight"] == (4, 32)  # [r, in]
    assert shapes["bert.encoder.layer.1.attention.self.query.lora_B.weight"] == (32, 4)  # [out, r]

    fa = Tuner.from_onnx(classifier["model"], trainable="lora:r=4,targets=q,v,fa")
    assert [p.name for p in fa.params] == [n for n in names if n.endswith("lora_B.weight")]
    assert fa.trainable_params == b_only
    # B starts at zero: the adapted model is the base model until tuning moves B
    assert all(not fa.weights[n].any() for n in fa.weights)


def test_initialisation_is_peft_like_and_deterministic(classifier):
    model = onnx.load(str(classifier["model"]))
    layers = plan_lora(model, LoraSpec(rank=8, alpha=16, targets=("q",)))
    first, again, other = initial_values(layers, 0), initial_values(layers, 0), initial_values(layers, 1)
    a = first[layers[0].a_name]
    assert np.abs(a).max() <= 1 / np.sqrt(32) and a.std() > 0.5 / np.sqrt(3 * 32)  # U(±1/√in)
    assert not first[layers[0].b_name].any()
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(a, other[layers[0].a_name])


def test_split_keeps_everything_before_the_first_adapter_in_the_frozen_prefix(classifier):
    prepared = prepare(classifier["model"], TrainableSpec.parse("lora:r=4,targets=o"))
    prefix_ops = {n.name for n in prepared.prefix.graph.node}
    suffix_ops = {n.name for n in prepared.suffix.graph.node}
    assert any(n.startswith("/bert/embeddings/") for n in prefix_ops)
    # layer 0's attention runs once per step; its output projection (the first adapted layer) does not
    assert "/bert/encoder/layer.0/attention/self/Softmax" in prefix_ops
    assert "/bert/encoder/layer.0/attention/output/dense/lora/Add" in suffix_ops
    assert not any(n.startswith("/bert/embeddings/") for n in suffix_ops)
    assert not any("/lora/" in n for n in prefix_ops)
    lifted = {i.name for i in prepared.suffix.graph.input}
    assert {p.name for p in prepared.params} <= lifted
    assert not any(".lora_" in i.name for i in prepared.suffix.graph.initializer)


def test_lora_fa_keeps_a_frozen_as_an_initializer(lm):
    prepared = prepare(lm["model"], TrainableSpec.parse("lora:r=2,targets=q,v,fa"))
    graphs = [prepared.suffix] + ([prepared.prefix] if prepared.prefix is not None else [])
    inits = {i.name for g in graphs for i in g.graph.initializer}
    assert "model.layers.0.self_attn.q_proj.lora_A.weight" in inits
    assert "model.layers.0.self_attn.q_proj.lora_B.weight" in {i.name for i in prepared.suffix.graph.input}


def test_head_plus_lora_learns_the_classifier_task(classifier):
    tuner = Tuner.from_onnx(classifier["model"], trainable="head,lora:r=4,targets=q,v")
    head = {p.name for p in tuner.params if p.region == "head"}
    assert head and head == {p.name for p in find_params(onnx.load(str(classifier["model"]))) if p.region == "head"}
    # 300 steps: 200 ended at 0.945 in numpy's batch order but 0.898 in the core's (et_epoch_permutation), one
    # example under the bar; 300 reach 0.969
    result = tuner.fit(classifier["train"], eval_data=classifier["dev"], steps=300, lr=5e-3, eps=1e-3,
                       batch_size=16, queries=2, schedule="linear")
    assert result.before["accuracy"] < 0.7 and result.after["accuracy"] >= 0.9


@pytest.mark.parametrize("spec", ["lora:r=4,targets=q,v,o,up,down", "lora:r=4,targets=q,v,o,up,down,fa"])
def test_lora_alone_lowers_the_causal_lm_loss(lm, spec):
    tuner = Tuner.from_onnx(lm["model"], trainable=spec)
    result = tuner.fit(lm["train"], eval_data=lm["dev"], steps=150, lr=1e-2, eps=1e-3, batch_size=8, queries=2)
    assert result.after["loss"] < result.before["loss"] - 0.05


def test_lora_resume_is_bit_identical(lm, tmp_path, kill_and_resume):
    spec = "lora:r=2,targets=q,v"
    options = dict(steps=20, lr=1e-2, eps=1e-3, seed=5, queries=2, batch_size=8)
    straight = Tuner.from_onnx(lm["model"], trainable=spec)
    straight.fit(lm["train"], output_dir=tmp_path / "a", **options)

    resumed, _ = kill_and_resume(lm["model"], lm["train"], tmp_path / "b", trainable=spec, kill_at=12, save_every=5,
                                 **options)
    assert any(straight.weights[n].any() for n in straight.weights if "lora_B" in n)
    for name, value in straight.weights.items():
        np.testing.assert_array_equal(value, resumed.weights[name], err_msg=name)


def test_spec_grammar_and_defaults():
    assert TrainableSpec.parse("last:1").lora is None
    parsed = TrainableSpec.parse("head,lora:r=4,targets=q,v")
    assert str(parsed) == "head,lora:r=4,targets=q,v" and parsed.lora == LoraSpec(rank=4, alpha=8.0, targets=("q", "v"))
    default = TrainableSpec.parse("lora").lora
    assert (default.rank, default.alpha, default.scale, default.targets, default.frozen_a) == (8, 16.0, 2.0, ("q", "v"), False)
    fa = TrainableSpec.parse("lora:targets=gate,up,alpha=4,fa,r=2,seed=3").lora
    assert fa == LoraSpec(rank=2, alpha=4.0, targets=("gate", "up"), frozen_a=True, seed=3)
    assert default.layers is None
    late = TrainableSpec.parse("lora:r=2,layers=22-29,targets=o,down,fa").lora
    assert late == LoraSpec(rank=2, alpha=4.0, targets=("o", "down"), frozen_a=True, layers=(22, 29))
    assert TrainableSpec.parse("lora:targets=q,layers=3").lora.layers == (3, 3)


@pytest.mark.parametrize("spec, message", [
    ("lora:r=0", "lora r must be a positive integer, not '0'"),
    ("lora:r=x", "lora r must be a positive integer"),
    ("lora:alpha=-1", "lora alpha must be a positive number"),
    ("lora:targets=q,v,last:1", "'last:1' follows the lora: term, which must come last"),
    ("lora:r=4,targets=q,head", "'head' follows the lora: term, which must come last"),
    ("lora:rank=4", "unknown lora option 'rank'"),
    ("lora:targets=", "targets= names no layers"),
    ("lora:layers=3-1", "lora layers=3-1 is an empty range"),
    ("lora:layers=x-2", "lora layers must be a non-negative integer, not 'x'"),
    ("lora:layers=1-2,layers=3", "lora option 'layers' given twice"),
])
def test_bad_lora_specs_are_one_line_errors(spec, message):
    with pytest.raises(ModelError, match=message) as info:
        TrainableSpec.parse(spec)
    assert "\n" not in str(info.value)


def test_unknown_target_lists_the_linear_layers():
    model = build_causal_lm(None, layers=2, mangle_names=True)
    with pytest.raises(ModelError, match=r"lora target 'qkv' matches no linear layer \(linear layers: "
                                         r"self_attn.q_proj, self_attn.k_proj, .*mlp.down_proj, lm_head\)"):
        plan_lora(model, LoraSpec(targets=("q", "qkv")), "tiny.onnx")
    # a module-name suffix works as a target, inside or outside the blocks
    chosen = [l.linear.module for l in plan_lora(model, LoraSpec(targets=("layers.1.mlp.up_proj", "lm_head")))]
    assert chosen == ["model.layers.1.mlp.up_proj", "lm_head"]


def test_aliases_map_per_family_and_bert_down_is_not_the_attention_output():
    bert = {l.module for l in plan_lora_modules(build_classifier(None, layers=1), ("o", "up", "down"))}
    assert bert == {"bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.intermediate.dense",
                    "bert.encoder.layer.0.output.dense"}
    llama = {l.module for l in plan_lora_modules(build_causal_lm(None, layers=1), ("q", "k", "v", "o", "gate", "up", "down"))}
    assert llama == {f"model.layers.0.{m}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                        "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    # stripped node names with readable weight names: modules come from the weight names
    stripped = plan_lora_modules(build_classifier(None, layers=1, strip_node_names=True), ("q",))
    assert [l.module for l in stripped] == ["bert.encoder.layer.0.attention.self.query"]
    # tied lm_head (a Transpose of the embedding) is not a linear layer edgetune can merge into
    assert "lm_head" not in {l.module for l in find_linears(build_causal_lm(None, tie_embeddings=True))}


def test_layers_option_adapts_only_the_blocks_in_range_and_the_prefix_runs_the_rest(tmp_path):
    path = tmp_path / "lm.onnx"
    build_causal_lm(path, layers=4)
    model = onnx.load(str(path))
    chosen = [l.linear.module for l in plan_lora(model, TrainableSpec.parse("lora:targets=o,down,layers=2-3").lora)]
    assert chosen == [f"model.layers.{i}.{m}" for i in (2, 3) for m in ("self_attn.o_proj", "mlp.down_proj")]
    with pytest.raises(ModelError, match="lora target 'lm_head' matches no linear layer"):  # outside every block
        plan_lora(model, LoraSpec(targets=("lm_head",), layers=(2, 3)))
    with pytest.raises(ModelError, match=r"lm.onnx: lora layers=4-9 matches no linear layer \(blocks 0-3\)"):
        plan_lora(model, LoraSpec(layers=(4, 9)), "lm.onnx")

    prepared = prepare(path, TrainableSpec.parse("lora:r=2,targets=q,layers=3"))
    assert {p.block for p in prepared.params} == {3}
    prefix_ops = {n.name for n in prepared.prefix.graph.node}
    assert any(n.startswith("/model/layers.2/") for n in prefix_ops), "blocks before the range run once per step"
    assert not any(n.name.startswith("/model/layers.2/") for n in prepared.suffix.graph.node)


def plan_lora_modules(model, targets):
    return [layer.linear for layer in plan_lora(model, LoraSpec(targets=targets))]


def test_cli_rejects_a_bad_lora_spec_with_one_line(cli, classifier, tmp_path):
    proc = cli("tune", "--onnx", classifier["model"], "--data", classifier["train"], "--steps", 1,
               "--trainable", "lora:r=4,targets=q,nope", "--output-dir", tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lora target 'nope' matches no linear layer" in lines[0], proc.stderr
