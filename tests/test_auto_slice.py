"""--trainable auto, the default: the slice chosen by the model's kind (a classifier with a fresh or a trained
head, a causal LM by verbaliser or on text), said in the run's first line, recorded resolved (summary, trajectory:
a replay is exact); an explicit --trainable always wins; where nothing reads the model, auto is one error line."""

import json

import pytest

from edgetune import Tuner
from edgetune.artifacts.trajectory import Trajectory
from edgetune.config import TrainConfig
from edgetune.graph.auto_slice import (FRESH_HEAD, GENERATIVE, TRAINED_HEAD, VERBALISER, choose_slice,
                                       exact_head_fits)
from edgetune.graph.trainable import TrainableSpec
from models.tiny import TINY_VOCAB, build_causal_lm, build_tokenizer, make_classifier_bundle
from tests.badinput import assert_rejected
from tests.test_verbalizer import TEMPLATE, VERBALIZER


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """The tiny classifier with its head as Hugging Face initialises a new one (bias zeros)."""
    return make_classifier_bundle(tmp_path_factory.mktemp("fresh"), n_train=128, n_dev=64, mangle_names=True,
                                  fresh_head=True)


def test_each_kind_gets_its_slice(fresh, classifier, lm):
    assert choose_slice(fresh["model"]).kind == FRESH_HEAD
    assert choose_slice(classifier["model"]).kind == TRAINED_HEAD  # a random bias: not a fresh initialisation
    text = choose_slice(lm["model"])
    assert text.kind == GENERATIVE and text.spec.lora is not None and text.spec.lora.layers == (1, 1)  # the late
    # quarter of the tiny LM's 2 blocks
    assert choose_slice(lm["model"], verbalized=True).kind == VERBALISER


def test_from_onnx_resolves_auto_and_reads_a_verbaliser(tmp_path, fresh):
    tuner = Tuner.from_onnx(fresh["model"])  # the default
    assert tuner.auto_slice.kind == FRESH_HEAD and tuner.trainable_spec == tuner.auto_slice.spec
    build_tokenizer(tmp_path / "tokenizer.json", TINY_VOCAB, cls_sep=False)
    build_causal_lm(tmp_path / "model.onnx", seed=1)
    tuner = Tuner.from_onnx(tmp_path / "model.onnx", trainable="auto", verbalizer=VERBALIZER, template=TEMPLATE)
    assert tuner.auto_slice.kind == VERBALISER and tuner.trainable_spec.lora is not None
    assert Tuner.from_onnx(fresh["model"], trainable="head").auto_slice is None


def test_the_cli_says_which_slice_in_one_line_and_records_it(fresh, tmp_path, cli):
    out = tmp_path / "run"
    done = cli("tune", "--onnx", fresh["model"], "--data", fresh["train"], "--steps", 10, "--output-dir", out)
    assert done.returncode == 0, done.stderr
    chosen = choose_slice(fresh["model"]).spec
    banner = done.stderr.splitlines()[0]  # the one line at start says which slice and why
    assert banner.startswith("edgetune classification model ")
    # and the head: --head auto tunes the classifier's linear head exactly where the slice holds it
    assert (f" weights ({chosen}; auto: a classifier with a fresh head; --trainable to choose); head: exact "
            "(--head auto: the slice holds the classifier's linear head; --head zo to tune it by ZO), ") in banner
    assert (done.stdout + done.stderr).count("auto: a classifier") == 1
    config = json.loads((out / "summary.json").read_text())["config"]
    assert config["trainable"] == str(chosen) and config["head"] == "exact"  # what auto resolved to
    assert Trajectory.read(out / "run.etlog").header["config"]["head"] == "exact"
    replayed = cli("replay", "--onnx", fresh["model"], "--log", out / "run.etlog", "--output", tmp_path / "replayed")
    assert replayed.returncode == 0, replayed.stderr
    assert (tmp_path / "replayed" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()


def test_an_explicit_trainable_wins(fresh, tmp_path, cli):
    out = tmp_path / "run"
    done = cli("tune", "--onnx", fresh["model"], "--data", fresh["train"], "--steps", 5, "--output-dir", out,
               "--trainable", "blocks:0")
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert "(auto:" not in said and "(blocks:0)" in said
    assert json.loads((out / "summary.json").read_text())["config"]["trainable"] == "blocks:0"


def test_auto_where_nothing_reads_the_model_is_one_line(classifier, cli):
    assert_rejected(cli("plan", "--onnx", classifier["model"], "--trainable", "auto"),
                    "--trainable 'auto'", "auto chooses the slice from the model when tuning")


def test_head_auto_is_exact_only_where_the_slice_holds_a_classifier_s_linear_head(fresh, lm, tmp_path):
    assert exact_head_fits(fresh["model"], TrainableSpec.parse("last:1"))
    assert not exact_head_fits(fresh["model"], TrainableSpec.parse("blocks:0"))  # the head stays frozen
    assert not exact_head_fits(lm["model"], TrainableSpec.parse("all"))  # no classifier
    assert Tuner.from_onnx(fresh["model"], trainable="head").head is not None
    assert Tuner.from_onnx(fresh["model"], trainable="head", head="zo").head is None
    config = TrainConfig()
    assert config.head == "auto" and config.resolved_head(True) == "exact" and config.resolved_head(False) == "zo"
    for other in (TrainConfig(optimizer="zo-adam"), TrainConfig(parallel="on"), TrainConfig(rotate=1)):
        assert other.resolved_head(True) == "zo" and other.graph_head() == "zo"  # they perturb the whole slice
    assert TrainConfig(head="zo").resolved_head(True) == "zo"  # --head zo: the old behaviour
