"""bench_peers.py's and bench_race.py's edgetune children, through ONNX Runtime on the exported model (no torch
here): :class:`EdgetunePeer` (ZO-SGD at a given lr/ε; config keys: onnx, trainable, split, queries, lr, eps,
seed, threads, tokens) and, with config key ``defaults``, :class:`EdgetuneDefaultsPeer` (the tune loop's defaults).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from peers_common import DATA_FILE, measure  # noqa: E402

import edgetune  # noqa: E402
from edgetune import Tuner  # noqa: E402
from edgetune.data.batching import Batch  # noqa: E402
from edgetune.errors import NonFiniteLoss  # noqa: E402
from edgetune.zo import ZOSGD, Schedule  # noqa: E402


class EdgetunePeer:
    def __init__(self, config: dict, workdir: Path):
        self.tuner = Tuner.from_onnx(config["onnx"], trainable=config["trainable"], max_length=config["tokens"],
                                     threads=config["threads"], split=config["split"])
        self.optimizer = ZOSGD(self.tuner.arena.buffer(), seed=config["seed"], lr=Schedule(config["lr"]),
                               eps=Schedule(config["eps"]), queries=config["queries"],
                               noise="gaussian")  # MeZO's noise: the peers differ in implementation only

    def step(self, t: int, batch: dict[str, np.ndarray]) -> float:
        engine = self.tuner.engine
        engine.set_batch(_batch(self.tuner, batch))
        # chained, as `edgetune tune` runs: the next step's first perturbation rides on this step's last pass
        return self.optimizer.step(t, lambda: float(np.mean(engine.loss())), chain=True).loss

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        self.optimizer.settle()  # a chained step left θ + εz behind
        return self.tuner.engine.loss_and_logits(_batch(self.tuner, batch))[1]

    def describe(self) -> dict:
        return _describe(self.tuner)


def _batch(tuner: Tuner, arrays: dict[str, np.ndarray]) -> Batch:
    inputs = {name: arrays[name] for name in tuner.info.data_inputs}
    return Batch(inputs=inputs, labels=arrays["labels"], size=len(arrays["labels"]))


def _describe(tuner: Tuner) -> dict:
    if "torch" in sys.modules:  # it would inflate the peak RSS this child reports
        raise RuntimeError("torch was imported into the edgetune child")
    import onnxruntime

    return {"trainable_params": tuner.trainable_params,
            "framework": f"edgetune {edgetune.__version__}, onnxruntime {onnxruntime.__version__}"}


class EdgetuneDefaultsPeer:
    """edgetune as ``edgetune tune`` runs it: :class:`edgetune.loop.TrainingRun` with the default TrainConfig
    (--lr auto calibrated in the first step, the guard on, the activation cache auto) on the slice and head the
    config names; trainable "auto" and head "auto" are tune's defaults, the slice resolved by ``Tuner.from_onnx``
    as tune's is (:attr:`Tuner.auto_slice`). Config keys: onnx, train_path, trainable, head, head_lr, head_l2, lr
    (optional), batch_size, seed, threads, tokens, max_steps.

    The run draws its batches from the training file with its own BatchStream, which is bench_peers'
    order (same rows, batch size and seed; checked here), so the batch handed to :meth:`step` is not used
    (after a guard's rollback, whose record takes a step index, the run is one batch ahead of the race's count).
    """

    def __init__(self, config: dict, workdir: Path):
        from edgetune.config import TrainConfig
        from edgetune.loop import TrainingRun

        self.tuner = Tuner.from_onnx(config["onnx"], trainable=config["trainable"], max_length=config["tokens"],
                                     threads=config["threads"], head=config["head"])
        # what bench_race may try instead (a head L2 of 0 too)
        levers = {k: config[k] for k in ("head_lr", "lr", "head_l2") if config.get(k) is not None}
        train_config = TrainConfig(batch_size=config["batch_size"], seed=config["seed"], head=config["head"],
                                   steps=config["max_steps"], **levers)
        self.run = TrainingRun(self.tuner, train_config, config["train_path"])
        with np.load(workdir / DATA_FILE) as f:
            order = f["order"][:64]
        if not all(np.array_equal(self.run.stream.indices(t), rows) for t, rows in enumerate(order)):
            raise RuntimeError("the run's batch order differs from the race's (data.npz)")

    def step(self, t: int, batch: dict[str, np.ndarray]) -> float:
        # the run's own step count, not t: a guard's rollback is a record too and moves it on by one
        # unchained, and guarded as fit's loop (loop._train) runs it: watch(), not the guard alone, also keeps
        # the exact head's state at the guard's best, which a rollback of an --head exact run restores
        try:
            record = self.run.step()
        except NonFiniteLoss:
            if not self.run.recover():
                raise
            return float("nan")  # the failed step left no record; the run goes on from the best state
        if self.run.guard is not None and self.run.watch(record):
            self.run.guard_acts()
        return record.loss

    def forwards(self, steps: int) -> int:
        return self.run.spent  # the steps' forwards and the calibration's

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.tuner.engine.loss_and_logits(_batch(self.tuner, batch))[1]

    def describe(self) -> dict:
        calibration = self.run.calibration
        return {**_describe(self.tuner), "trainable": str(self.tuner.trainable_spec),
                "config": self.run.resolved.to_dict(),
                "calibration": calibration.to_json() if calibration else None,
                "guard": self.run.guard_lines, "activation_cache": self.run.cache.describe() if self.run.cache else None}


def _peer(config: dict, workdir: Path):
    return (EdgetuneDefaultsPeer if config.get("defaults") else EdgetunePeer)(config, workdir)


if __name__ == "__main__":
    measure(_peer)
