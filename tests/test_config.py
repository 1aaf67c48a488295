"""Options that describe themselves: every field carries its help, range or choices and trajectory mark;
one generic check validates them, and the tune/eval flags, the replay keys and docs/cli.md come from them."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from edgetune.cli import build_parser
from edgetune.cli.tune import _RunOptions
from edgetune.config import ModelOptions, TrainConfig, cli_fields
from edgetune.errors import EdgetuneError
from edgetune.zo import OPTIMIZERS
from edgetune.zo.options import OPTIMIZER_NAMES, OPTIMIZER_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
OPTION_CLASSES = (TrainConfig, ModelOptions, _RunOptions)


def command_flags(name: str) -> dict[str, argparse.Action]:
    """The flags of ``edgetune NAME``, by destination."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in subparsers.choices[name]._actions}


@pytest.mark.parametrize("cls", OPTION_CLASSES, ids=lambda c: c.__name__)
def test_every_option_field_has_help(cls):
    for f in fields(cls):
        assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help"


def test_every_option_of_tune_is_a_flag_whose_help_says_its_default():
    flags = command_flags("tune")
    for cls in OPTION_CLASSES:
        for f in cli_fields(cls):
            assert f.name in flags, f"tune has no flag for {f.name}"
            if f.default is not None and not isinstance(f.default, bool):
                assert str(f.default) in flags[f.name].help, f.name
    assert "providers" not in flags  # the Python API's alone: the CLI runs on the CPU


def test_eval_has_the_model_flags_but_no_split():
    flags = command_flags("eval")
    assert {f.name for f in cli_fields(ModelOptions)} - set(flags) == {"split"}
    assert flags["task"].choices == ("classification", "lm")


def test_choices_are_shown_in_the_flags():
    flags = command_flags("tune")
    assert flags["optimizer"].metavar == "{" + ",".join(OPTIMIZER_NAMES) + "}"
    assert flags["noise"].metavar == "{rademacher,gaussian}"


def test_the_choices_of_optimizer_are_the_optimizers():
    assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES


def _out_of_range(bound) -> float:
    if bound.positive:
        return 0
    if bound.low is not None:
        return bound.low - 1
    return bound.high + 1


def _bounded(cls):
    return [f for f in fields(cls) if f.metadata.get("bound") is not None]


@pytest.mark.parametrize("cls", (TrainConfig, ModelOptions), ids=lambda c: c.__name__)
def test_each_range_in_the_metadata_is_checked_naming_the_flag(cls):
    assert _bounded(cls)
    for f in _bounded(cls):
        bad = _out_of_range(f.metadata["bound"])
        options = cls(**{f.name: float(bad) if f.type in ("float", float) else int(bad)})
        with pytest.raises(EdgetuneError, match=f"^--{f.name.replace('_', '-')} must be "):
            options.validate()


@pytest.mark.parametrize("cls", (TrainConfig, ModelOptions), ids=lambda c: c.__name__)
def test_each_choice_list_in_the_metadata_is_checked_naming_the_flag_and_the_choices(cls):
    chosen = [f for f in fields(cls) if f.metadata.get("choices")]
    assert chosen
    for f in chosen:
        with pytest.raises(EdgetuneError) as info:
            cls(**{f.name: "no-such-value"}).validate()
        message = str(info.value)
        assert message.startswith(f"--{f.name.replace('_', '-')} must be ") and "'no-such-value'" in message
        assert all(choice in message for choice in f.metadata["choices"])


@pytest.mark.parametrize("options,message", [
    ({"beta1": 1.0}, "--beta1 must be at least 0 and below 1, got 1.0"),
    ({"dizo_tau": 1.0}, "--dizo-tau must be positive and below 1, got 1.0"),
    ({"topk_density": 0.0}, "--topk-density must be positive and at most 1, got 0.0"),
    ({"queries_min": 0}, "--queries-min must be at least 1, got 0"),
    ({"queries": 2, "queries_min": 3}, "--queries-min must be between 1 and --queries (2)"),
    ({"noise": "uniform"}, "--noise must be rademacher or gaussian, not 'uniform'"),
    ({"steps": 2**32 + 1}, "--steps must be between 1 and 4294967296"),
])
def test_ranges_and_rules_read_as_before(options, message):
    with pytest.raises(EdgetuneError) as info:
        TrainConfig(**options).validate()
    assert str(info.value).startswith(message)


def test_the_edges_of_each_range_are_accepted():
    TrainConfig(beta1=0.0, beta2=0.0, dizo_tau=0.999, topk_density=1.0, rotate=0).validate()


def test_validation_keeps_an_int_given_for_a_float_as_that_float():
    config = TrainConfig(lr=1, beta1=0)
    config.validate()
    assert isinstance(config.lr, float) and isinstance(config.beta1, float)


def test_each_optimizer_owns_its_options_and_the_public_names_stay_flat():
    owned = {f.name for group in OPTIMIZER_OPTIONS for f in fields(group)}
    assert owned == {"dizo_interval", "dizo_iters", "dizo_eps", "dizo_step", "dizo_tau",
                     "window", "beta1", "beta2", "topk_density", "lozo_rank", "lozo_interval", "hizoo_smooth",
                     "hizoo_max_params"}
    assert all(set(group.for_optimizers) <= set(OPTIMIZER_NAMES) for group in OPTIMIZER_OPTIONS)
    assert TrainConfig.from_options({"optimizer": "dizo", "dizo_interval": 7}).dizo_interval == 7
    config = TrainConfig.from_options({"optimizer": "zo-adam", "window": 3})
    assert config.window == 3
    assert {"dizo_interval", "window", "topk_density"} <= set(config.to_dict())
    assert build_parser().parse_args(["tune", "--dizo-interval", "7"]).dizo_interval == 7


def test_the_trajectory_keys_are_the_fields_marked_for_it():
    keys = set(TrainConfig.trajectory_keys())
    # every optimizer option changes the trajectory; what only decides when to stop, evaluate or save does not
    assert {f.name for group in OPTIMIZER_OPTIONS for f in fields(group)} <= keys
    assert {"optimizer", "lr", "eps", "seed", "noise", "batch_size", "rotate", "parallel"} <= keys
    assert not keys & {"steps", "forward_budget", "eval_every", "save_every", "eval_batch_size"}


def test_model_options_are_from_onnx_keywords():
    import inspect

    from edgetune import Tuner

    # head is TrainConfig's option (--head exact), passed at load time because it changes the prepared graph
    keywords = set(inspect.signature(Tuner.from_onnx).parameters) - {"cls", "onnx_path", "trainable", "head"}
    assert set(ModelOptions().keywords()) == keywords
    assert "head" in {f.name for f in fields(TrainConfig)}


def test_an_unknown_config_key_and_a_wrong_type_name_the_file_and_the_key(tmp_path):
    from edgetune.config import read_config_options

    path = tmp_path / "tune.yaml"
    path.write_text("dizo-interval: 5\nproviders: [CPU]\n")
    with pytest.raises(EdgetuneError, match=r"tune.yaml: unknown option 'providers'$"):
        read_config_options(path, (TrainConfig, ModelOptions))
    path.write_text("dizo-interval: five\n")
    with pytest.raises(EdgetuneError, match=r"tune.yaml: key 'dizo_interval': expected an integer, got 'five'$"):
        read_config_options(path, (TrainConfig,))
    path.write_text("dizo-interval: 5\nmax_length: 32\n")
    assert read_config_options(path, (TrainConfig, ModelOptions)) == {"dizo_interval": 5, "max_length": 32}


def test_docs_cli_md_is_generated_from_the_parsers():
    fresh = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli_reference.py")], capture_output=True,
                           text=True, check=True).stdout
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == fresh, "docs/cli.md is stale: python scripts/cli_reference.py > docs/cli.md"
    for flag in ("--dizo-interval", "--beta1", "--topk-density", "--no-split", "--max-length"):
        assert f"`{flag}`" in fresh


@pytest.mark.parametrize("options,message", [
    ({"beta1": 0.5}, "--beta1 0.5 is an option of --optimizer zo-momentum, zo-adam or zo-microadam, not zo-sgd"),
    ({"optimizer": "zo-adam", "dizo_interval": 5}, "--dizo-interval 5 is an option of --optimizer dizo, not zo-adam"),
    ({"optimizer": "zo-adam", "topk_density": 0.1}, "--topk-density 0.1 is an option of --optimizer zo-microadam"),
])
def test_an_option_of_another_optimizer_is_refused_not_ignored(options, message):
    with pytest.raises(EdgetuneError) as info:
        TrainConfig.from_options(options)
    assert str(info.value).startswith(message)


def test_an_option_of_another_optimizer_at_its_default_passes():
    """A run's summary.json config lists every option: reused as a --config, its defaults must pass."""
    config = TrainConfig.from_options({"optimizer": "zo-sgd", "beta1": 0.9, "dizo_interval": 50})
    assert config.beta1 == 0.9
    assert TrainConfig.from_options({"optimizer": "zo-microadam", "beta1": 0.5, "topk_density": 0.1}).beta1 == 0.5


def test_the_cli_refuses_an_option_of_another_optimizer_in_one_line(classifier, cli, tmp_path):
    from tests.badinput import Snapshot, assert_rejected

    untouched = Snapshot(classifier["dir"], tmp_path)
    proc = cli("tune", "--onnx", classifier["model"], "--data", classifier["train"], "--output-dir", tmp_path / "out",
               "--window", "4", cwd=tmp_path)
    assert_rejected(proc, "--window 4 is an option of --optimizer zo-momentum, zo-adam or zo-microadam, not zo-sgd")
    untouched.assert_unchanged()
