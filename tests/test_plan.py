import json

import onnx
import pytest

from edgetune.cli import main
from edgetune.errors import EdgetuneError, ModelError
from edgetune.graph import prepare
from edgetune.graph.trainable import TrainableSpec
from edgetune.graph.units import parse_size_mb
from edgetune.graph.wire import read_skeleton
from edgetune.plan import Planner, suggest
from edgetune.tuner import Tuner
from models.tiny import build_causal_lm, wrap_lm_head

LORA = "lora:r=4,targets=q,v"
LAST_1 = TrainableSpec.parse("last:1")


@pytest.fixture(scope="module")
def clf_planner(classifier):
    return Planner(classifier["model"])


@pytest.fixture(scope="module")
def lm_planner(lm):
    return Planner(lm["model"])


def test_skeleton_keeps_shapes_not_bytes(classifier):
    full = onnx.load(str(classifier["model"]))
    skeleton = read_skeleton(classifier["model"])
    assert [(i.name, list(i.dims), i.data_type) for i in skeleton.graph.initializer] == \
        [(i.name, list(i.dims), i.data_type) for i in full.graph.initializer]
    assert all(not i.raw_data and not i.float_data for i in skeleton.graph.initializer)
    assert [n.name for n in skeleton.graph.node] == [n.name for n in full.graph.node]
    assert skeleton.ByteSize() < full.ByteSize() / 5


def test_skeleton_of_a_bad_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff\xff\xff not a model")
    with pytest.raises(ModelError, match="bad.onnx: not a valid ONNX model") as info:
        read_skeleton(bad)
    assert "\n" not in str(info.value)


def test_trainable_counts_match_the_tuner(classifier):
    planner = Planner(classifier["model"])
    for spec in ("all", "last:1", LORA):
        tuner = Tuner.from_onnx(classifier["model"], trainable=spec)
        assert planner.edgetune(TrainableSpec.parse(spec), 2, 16).trainable_params == tuner.trainable_params, spec
        if spec == "all":
            assert planner.arch.total_params == tuner.trainable_params


def test_trainable_counts_match_graph_preparation_for_an_lm(lm):
    """The tuner's slice is ``prepare``'s (in-process here: the cached path runs it in a child)."""
    planner = Planner(lm["model"])
    for spec in ("all", "last:1", LORA + ",fa"):
        parsed = TrainableSpec.parse(spec)
        prepared = prepare(lm["model"], parsed)
        assert planner.edgetune(parsed, 2, 16).trainable_params == sum(p.size for p in prepared.params), spec


@pytest.mark.parametrize("spec", ["head,sparse:density=0.1", "importance:1"])
def test_modes_that_need_weights_or_data_are_refused_in_one_line(clf_planner, spec):
    with pytest.raises(EdgetuneError, match=f"--trainable '{spec}': plan predicts plain and lora: modes only"):
        clf_planner.edgetune(TrainableSpec.parse(spec), 2, 16)


def test_architecture_of_the_tiny_lm(lm_planner):
    arch = lm_planner.arch
    assert (arch.task, arch.blocks, arch.hidden, arch.heads, arch.vocab) == ("lm", 2, 32, 2, 64)
    assert arch.intermediate > arch.hidden


@pytest.mark.parametrize("which", ["clf_planner", "lm_planner"])
def test_predictions_grow_with_batch_and_length(which, request):
    planner = request.getfixturevalue(which)
    modes = planner.default_modes()

    def peaks(batch, length):
        return [row.peak_mb for row in planner.table(batch, length, modes)]

    for smaller, larger in ((peaks(4, 32), peaks(64, 32)), (peaks(4, 32), peaks(4, 512))):
        assert all(a <= b for a, b in zip(smaller, larger))
        assert sum(larger) > sum(smaller)


def test_lora_first_order_needs_less_than_full(lm_planner):
    full = lm_planner.first_order(8, 64)
    lora = lm_planner.first_order(8, 64, lora=TrainableSpec.parse(LORA))
    assert lora.peak_mb < full.peak_mb and lora.trainable_params < full.trainable_params


def test_checkpointing_saves_memory_only_with_more_blocks_than_it_recomputes(lm_planner, tmp_path):
    """A recomputed block and its gradients (2 blocks' worth) are alive at once during its backward."""
    assert lm_planner.first_order(8, 64, checkpointing=True).peak_mb >= lm_planner.first_order(8, 64).peak_mb
    build_causal_lm(tmp_path / "deep.onnx", layers=6)
    deep = Planner(tmp_path / "deep.onnx")
    assert deep.arch.blocks == 6
    assert deep.first_order(8, 64, checkpointing=True).peak_mb < deep.first_order(8, 64).peak_mb


def test_scored_tokens_shrink_the_lm_logits_the_tuning_graph_computes(lm):
    """edgetune's LM graph runs the head on scored positions only: 2 logits-sized tensors of B·S rows."""
    every, one = Planner(lm["model"]), Planner(lm["model"], scored_tokens=1)
    batch, length, vocab = 8, 512, every.arch.vocab
    lora = TrainableSpec.parse(LORA)
    saved = every.edgetune(lora, batch, length).peak_mb - one.edgetune(lora, batch, length).peak_mb
    assert saved == pytest.approx(2 * 4 * batch * (length - 1) * vocab / 2**20, rel=1e-6)
    assert one.inference(batch, length).peak_mb == every.inference(batch, length).peak_mb  # ORT alone: all logits


def test_scored_tokens_change_nothing_when_the_head_is_not_a_lone_matmul(lm, tmp_path):
    onnx.save(wrap_lm_head(onnx.load(str(lm["model"]))), str(tmp_path / "capped.onnx"))
    every, one = Planner(tmp_path / "capped.onnx"), Planner(tmp_path / "capped.onnx", scored_tokens=1)
    lora = TrainableSpec.parse(LORA)
    assert one.edgetune(lora, 8, 512).peak_mb == every.edgetune(lora, 8, 512).peak_mb


def test_budget_suggests_the_fewest_weights_that_fit(clf_planner):
    modes = [TrainableSpec.parse("all"), LAST_1]
    cheapest = clf_planner.edgetune(LAST_1, 1, 32).peak_mb
    pick = suggest(clf_planner, 64, 32, modes, cheapest + 1.0)
    assert pick.mode == "last:1" and pick.prediction.peak_mb <= cheapest + 1.0
    roomy = suggest(clf_planner, 64, 32, modes, 10_000)
    assert (roomy.mode, roomy.batch) == ("last:1", 64)
    tight = clf_planner.edgetune(LAST_1, 8, 512).peak_mb
    middle = suggest(clf_planner, 64, 512, modes, tight)
    assert middle.batch >= 8 and clf_planner.edgetune(LAST_1, middle.batch + 1, 512).peak_mb > tight


def test_parse_size_mb():
    assert parse_size_mb("1.5GB", "--budget") == 1536.0
    assert {parse_size_mb(text, "--budget") for text in ("800MB", "800", "800 MiB", "800M")} == {800.0}
    for bad in ("lots", "1.5 XB", "-3GB", "0"):
        with pytest.raises(EdgetuneError, match=f"--budget '{bad}'"):
            parse_size_mb(bad, "--budget")


def test_cli_plan_json_and_budget(classifier, capsys):
    assert main(["plan", "--onnx", str(classifier["model"]), "--batch", "8", "--max-length", "32",
                 "--trainable", "all", "--trainable", "last:1", "--budget", "2GB", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    kinds = [row["kind"] for row in report["rows"]]
    assert kinds[0] == "inference" and kinds.count("edgetune") == 2 and "first-order" in kinds
    assert report["suggestion"]["mode"] == "last:1"
    assert report["suggestion"]["peak_mb"] <= report["budget_mb"] == 2048.0


def test_cli_plan_refuses_when_nothing_fits(classifier, cli):
    result = cli("plan", "--onnx", classifier["model"], "--budget", "10MB")
    assert result.returncode == 2
    assert result.stderr.startswith("edgetune: error: nothing fits in 10 MB") and result.stderr.count("\n") == 1


def test_cli_plan_bad_budget_is_one_line(classifier, capsys):
    assert main(["plan", "--onnx", str(classifier["model"]), "--budget", "a lot"]) == 2
    err = capsys.readouterr().err
    assert err == "edgetune: error: --budget 'a lot': give a size such as 800MB or 1.5GB\n"


def test_cli_plan_scored_tokens(lm, capsys):
    args = ["plan", "--onnx", str(lm["model"]), "--batch", "8", "--max-length", "256", "--trainable", LORA, "--json"]
    assert main(args) == 0
    every = json.loads(capsys.readouterr().out)["rows"][1]["peak_mb"]
    assert main(args + ["--scored-tokens", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][1]["peak_mb"] < every
    assert main(args + ["--scored-tokens", "0"]) == 2
    assert capsys.readouterr().err == "edgetune: error: --batch, --max-length and --scored-tokens must be at least 1\n"
