"""bench_peers.py's edgetune child: ZO-SGD through ONNX Runtime on the exported model (no torch here).

Config keys: onnx, trainable, split, queries, lr, eps, seed, threads, tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from peers_common import measure  # noqa: E402

import edgetune  # noqa: E402
from edgetune import Tuner  # noqa: E402
from edgetune.data.batching import Batch  # noqa: E402
from edgetune.zo import ZOSGD, Schedule  # noqa: E402


class EdgetunePeer:
    def __init__(self, config: dict, workdir: Path):
        self.tuner = Tuner.from_onnx(config["onnx"], trainable=config["trainable"], max_length=config["tokens"],
                                     threads=config["threads"], split=config["split"])
        self.optimizer = ZOSGD(self.tuner.arena.buffer(), seed=config["seed"], lr=Schedule(config["lr"]),
                               eps=Schedule(config["eps"]), queries=config["queries"],
                               noise="gaussian")  # MeZO's noise: the peers differ in implementation only

    def _batch(self, arrays: dict[str, np.ndarray]) -> Batch:
        inputs = {name: arrays[name] for name in self.tuner.info.data_inputs}
        return Batch(inputs=inputs, labels=arrays["labels"], size=len(arrays["labels"]))

    def step(self, t: int, batch: dict[str, np.ndarray]) -> float:
        engine = self.tuner.engine
        engine.set_batch(self._batch(batch))
        # chained, as `edgetune tune` runs: the next step's first perturbation rides on this step's last pass
        return self.optimizer.step(t, lambda: float(np.mean(engine.loss())), chain=True).loss

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        self.optimizer.settle()  # a chained step left θ + εz behind
        return self.tuner.engine.loss_and_logits(self._batch(batch))[1]

    def describe(self) -> dict:
        if "torch" in sys.modules:  # it would inflate the peak RSS this child reports
            raise RuntimeError("torch was imported into the edgetune child")
        import onnxruntime

        return {"trainable_params": self.tuner.trainable_params,
                "framework": f"edgetune {edgetune.__version__}, onnxruntime {onnxruntime.__version__}"}


if __name__ == "__main__":
    measure(EdgetunePeer)
