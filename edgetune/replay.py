"""``edgetune replay``: rebuild a tuned model from its base model and the run's ``.etlog``.

The base model is prepared with the run's ``--trainable`` spec exactly as ``tune`` prepares it, so
the arena starts at the same values; each logged step's arena passes are then redone by the run's
optimizer (:meth:`edgetune.zo.Optimizer.replay`) without a single forward, and the result is saved
as ``tune`` saves it. The passes are fixed-order float32 without FMA over noise that is bit-identical
on every CPU build, so the replayed weights equal the tuned ones bit for bit (docs/artifacts.md: the trajectory log).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgetune.artifacts.checkpoint import file_digest
from edgetune.config import TrainConfig
from edgetune.data import LabelSet
from edgetune.data.verbalizer import TEMPLATE_KEY, VERBALIZER_KEY
from edgetune.errors import EdgetuneError
from edgetune.artifacts.finite import require_finite_numbers, require_finite_tensors
from edgetune.graph.model import LABELS_KEY, check_model_file
from edgetune.artifacts.outdir import output_lock, refuse_existing_run, refuse_input_folder, remove_run
from edgetune.artifacts.trajectory import Trajectory
from edgetune.tuner import Tuner
from edgetune.zo import build_optimizer
from edgetune.zo.exact_head import ExactHead
from edgetune.zo.subset import block_subsets


def replay_run(base_path: str | Path, log_path: str | Path, output_dir: str | Path,
               tokenizer: str | Path | None = None, threads: int | None = None,
               overwrite: bool = False) -> tuple[Path, Trajectory]:
    """Write the tuned model of the run logged in ``log_path`` to ``output_dir``; returns its path and the log.

    A folder that already holds a run (or an earlier replay) is replaced only with ``overwrite``."""
    base_path, log_path = Path(base_path), Path(log_path)
    refuse_input_folder(output_dir, [base_path, tokenizer or base_path.with_name("tokenizer.json"), log_path],
                        "--output")
    refuse_existing_run(output_dir, None, overwrite, "--output")
    log = Trajectory.read(log_path)
    records = log.records
    header = log.header
    check_model_file(base_path)  # before hashing it: missing, unreadable or empty is one line
    digest = file_digest(base_path)
    if digest != header.get("base_sha256"):
        raise EdgetuneError(f"{log_path}: recorded on another base model (sha256 {str(header.get('base_sha256'))[:12]}…), "
                            f"not {base_path} ({digest[:12]}…)")
    try:
        config = TrainConfig(**header["config"])
        require_finite_numbers(header["config"].items(), f"{log_path}: run configuration")
    except (TypeError, KeyError, AttributeError) as exc:
        raise EdgetuneError(f"{log_path}: run configuration this edgetune cannot read ({exc})") from None
    config.validate()
    metadata = header.get("metadata", {})
    try:
        verbalizer = json.loads(metadata[VERBALIZER_KEY]) if VERBALIZER_KEY in metadata else None
        labels = LabelSet(json.loads(metadata[LABELS_KEY])) if LABELS_KEY in metadata else None
    except (ValueError, TypeError):
        raise EdgetuneError(f"{log_path}: the model metadata in its header is not readable") from None
    tuner = Tuner.from_onnx(base_path, trainable=header.get("trainable"), tokenizer=tokenizer, threads=threads,
                            verbalizer=verbalizer, template=metadata.get(TEMPLATE_KEY) if verbalizer else None,
                            head="exact" if config.head == "exact" else "zo")
    if [[p.name, list(p.shape)] for p in tuner.params] != header.get("arena"):
        raise EdgetuneError(f"{log_path}: --trainable '{header.get('trainable')}' selects other tensors on "
                            f"{base_path} than the run tuned (a different edgetune version?)")
    if verbalizer is None and labels is not None:
        tuner.labels = labels  # labels from the run's data, not the base
    if config.head == "exact":  # the head's values are in the records, the layers below by their seeds
        if records and records[-1].head_values is None:
            raise EdgetuneError(f"{log_path}: its last step holds no values of the exact head, which replay sets "
                                "(written by an earlier edgetune?)")
        optimizer = ExactHead.replayer(config, tuner.arena, tuner.weights, tuner.head)
    else:
        optimizer = build_optimizer(config, tuner.arena.buffer(), anchors=tuner.anchors,
                                    subsets=block_subsets(config, tuner.params, tuner.arena), weights=tuner.weights)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, as one line
        for record in records:
            optimizer.replay(record)
    # finite steps can still overflow (a huge lr): never write a model of NaNs and infinities
    require_finite_tensors(tuner.weights, f"{log_path}: the replayed weights")
    summary = {"replayed": str(log_path), "base": str(base_path), "steps": log.count, "config": header["config"]}
    with output_lock(output_dir):
        refuse_existing_run(output_dir, None, overwrite, "--output")  # again: another run may have written since
        if overwrite:
            remove_run(output_dir)
        return tuner.save(output_dir, summary), log
