"""The --trainable grammar: TrainableSpec.parse reads every term once; str() is a canonical text that parses back."""

import pytest

from edgetune import Tuner
from edgetune.errors import ModelError
from edgetune.graph.trainable import (BLOCKS, DEFAULT, DEFAULT_TRAINABLE, GLOB, LAST, REGEX, LoraSpec, SparseSpec,
                                      Term, TrainableSpec)
from tests.badinput import Snapshot, assert_rejected


def test_each_kind_of_term_parses_into_its_parts():
    spec = TrainableSpec.parse("all, head,embeddings,last:2,blocks:1-3,blocks:4,re:Layer.*,*.bias")
    assert spec.terms == (Term("all"), Term("head"), Term("embeddings"), Term(LAST, 2), Term(BLOCKS, 1, 3),
                          Term(BLOCKS, 4, 4), Term(REGEX, pattern="Layer.*"), Term(GLOB, pattern="*.bias"))
    assert (spec.lora, spec.sparse, spec.importance) == (None, None, None)
    lora = TrainableSpec.parse("head,lora:r=4,targets=q,v,o,fa,seed=2,layers=1-2")
    assert lora.terms == (Term("head"),)
    assert lora.lora == LoraSpec(rank=4, alpha=8.0, targets=("q", "v", "o"), frozen_a=True, seed=2, layers=(1, 2))
    sparse = TrainableSpec.parse("sparse:density=0.05,targets=q")
    assert sparse.terms == () and sparse.sparse == SparseSpec(0.05, "magnitude", ("q",))
    assert TrainableSpec.parse("embeddings,importance:3").importance == 3


def test_the_default_is_auto_which_only_a_tuning_run_resolves():
    assert DEFAULT_TRAINABLE == "auto" and str(DEFAULT) == "last:1"  # DEFAULT: the planner's typical slice
    with pytest.raises(ModelError, match="auto chooses the slice from the model when tuning"):
        TrainableSpec.parse(DEFAULT_TRAINABLE)


@pytest.mark.parametrize("text, canonical", [
    ("last:1", "last:1"),
    (" head , last:02,,", "head,last:2"),
    ("blocks:1-1,blocks:0-2", "blocks:1,blocks:0-2"),
    ("lora", "lora:r=8,targets=q,v"),
    ("head,lora:r=4,targets=q,v", "head,lora:r=4,targets=q,v"),
    ("lora:targets=gate,up,alpha=4,fa,r=2,seed=3", "lora:r=2,targets=gate,up,fa,seed=3"),
    ("lora:r=2,alpha=5.5,layers=3,targets=o", "lora:r=2,alpha=5.5,targets=o,layers=3"),
    ("sparse:density=1", "sparse:density=1"),
    ("head,sparse:targets=q,v,density=0.01", "head,sparse:density=0.01,targets=q,v"),
    ("importance:2,embeddings", "embeddings,importance:2"),
])
def test_str_is_a_canonical_text_that_parses_back(text, canonical):
    spec = TrainableSpec.parse(text)
    assert str(spec) == canonical and spec.text == text  # the user's words are kept for messages
    again = TrainableSpec.parse(str(spec))
    assert again == spec and str(again) == canonical


def test_equal_slices_compare_equal_whatever_their_spelling():
    assert TrainableSpec.parse("lora") == TrainableSpec.parse("lora:alpha=16,targets=q,v,r=8")
    assert TrainableSpec.parse("lora:r=4") != TrainableSpec.parse("lora:r=4,alpha=4")


def test_importance_resolves_into_the_best_blocks_and_the_head():
    spec = TrainableSpec.parse("embeddings,importance:2,lora:r=2")
    resolved = spec.resolve([3, 1, 0, 2])
    assert str(resolved) == "embeddings,blocks:1,blocks:3,head,lora:r=2,targets=q,v"
    assert resolved.importance is None and resolved.lora == spec.lora
    assert TrainableSpec.parse("last:1").resolve([0]) == TrainableSpec.parse("last:1")


@pytest.mark.parametrize("text, fragment", [
    ("last:0", "'last:0': '0' is not a valid block count"),
    ("head,last:x", "'last:x': 'x' is not a valid block count"),
    ("blocks:x", "'blocks:x': 'x' is not a valid block count or index"),
    ("blocks:3-1", "'blocks:3-1': an empty range"),
    ("re:(", "'re:(': bad regular expression"),
    ("", "'' selects no weights"),
    (" , ", "' , ' selects no weights"),
    ("importance:x", "write importance:K with K a positive number"),
    ("importance:0", "importance:K needs K >= 1"),
    ("importance:1,importance:2", "importance:K given twice"),
    ("lora:r=0", "lora r must be a positive integer, not '0'"),
    ("lora:alpha=inf", "lora alpha must be a positive number, not 'inf'"),
    ("lora:rank=4", "unknown lora option 'rank'"),
    ("lora:targets=q,last:1", "'last:1' follows the lora: term"),
    ("lora:r=2,sparse:density=0.1", "a lora: and a sparse: term cannot be combined"),
    ("sparse:density=0.1,lora:r=2", "'lora:r=2' follows the sparse: term"),
    ("sparse:targets=q", "sparse needs density="),
    ("sparse:density=2", "sparse density must be in (0, 1], not '2'"),
    ("sparse:density=0.1,score=fisher", "sparse score must be one of magnitude, not 'fisher'"),
])
def test_each_bad_term_is_one_line_naming_the_flag_and_the_term(text, fragment):
    with pytest.raises(ModelError) as info:
        TrainableSpec.parse(text)
    message = str(info.value)
    assert message.startswith("--trainable '") and fragment in message and "\n" not in message


def test_the_python_api_refuses_a_bad_spec_before_reading_the_model(tmp_path):
    with pytest.raises(ModelError, match="--trainable 'last:0'"):
        Tuner.from_onnx(tmp_path / "missing.onnx", trainable="last:0")


@pytest.mark.parametrize("command", ["tune", "plan"])
def test_the_cli_refuses_a_bad_spec_before_reading_the_model(classifier, cli, tmp_path, command):
    untouched = Snapshot(classifier["dir"], tmp_path)
    extra = ("--data", classifier["train"], "--output-dir", tmp_path / "out") if command == "tune" else ()
    # the model is missing too: its error would come first if the spec were read after the model
    proc = cli(command, "--onnx", tmp_path / "missing.onnx", "--trainable", "blocks:2-1", *extra)
    assert_rejected(proc, "--trainable 'blocks:2-1': an empty range")
    untouched.assert_unchanged()
