"""bench_peers.py's first-order peer: ONNX Runtime on-device training (onnxruntime-training-cpu), AdamW.

Runs only inside the venv that peers_ort_venv.py builds. Two jobs:

    python peers_ort_training.py --generate model.onnx WORKDIR   training artifacts from the export
    python peers_ort_training.py --mode time|train ...              a peer child (see peers_common)

Config keys: lr, threads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from peers_common import INPUTS, measure  # noqa: E402

ARTIFACTS = "ort_artifacts"  # under the run's workdir
FORWARD_EQUIVALENTS = 3  # per training step: 1 forward + 1 backward of ~2 forwards' work
ort.set_default_logger_severity(3)  # artifact generation and sessions log every graph pass at INFO


def generate_artifacts(model_path: Path, workdir: Path) -> None:
    """Training, eval and AdamW graphs over every float weight, with cross-entropy on ``logits``."""
    import onnx
    from onnxruntime.training import artifacts

    model = onnx.load(str(model_path))
    # ORT's LayerNormalization gradient reads the saved mean and inverse std dev, which opset-17
    # exports leave out; without the two optional outputs the gradient graph cannot be built.
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            node.output.extend([f"{node.name}/mean", f"{node.name}/inv_std_dev"])
    weights = [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    out_dir = workdir / ARTIFACTS
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts.generate_artifacts(model, requires_grad=weights, frozen_params=[],
                                 loss=artifacts.LossType.CrossEntropyLoss, optimizer=artifacts.OptimType.AdamW,
                                 artifact_directory=out_dir, additional_output_names=["logits"])


class OrtTrainingPeer:
    def __init__(self, config: dict, workdir: Path):
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        art = workdir / ARTIFACTS
        options = ort.SessionOptions()
        options.intra_op_num_threads = config["threads"]
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as edgetune's sessions
        self.state = CheckpointState.load_checkpoint(str(art / "checkpoint"))
        self.module = Module(str(art / "training_model.onnx"), self.state, str(art / "eval_model.onnx"),
                             session_options=options)
        self.optimizer = Optimizer(str(art / "optimizer_model.onnx"), self.module)
        self.optimizer.set_learning_rate(config["lr"])

    def _run(self, batch: dict[str, np.ndarray]):
        return self.module(*(batch[name] for name in INPUTS), batch["labels"])

    def step(self, t: int, batch: dict[str, np.ndarray]) -> float:
        self.module.train()
        loss, _ = self._run(batch)
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return float(loss)

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        self.module.eval()
        return self._run(batch)[1]

    def forwards(self, steps: int) -> int:
        """Forward-equivalents: a step is one forward and one backward, and a backward does about twice a
        forward's work (a matmul's gradient is two matmuls, for its input and its weight)."""
        return FORWARD_EQUIVALENTS * steps

    def describe(self) -> dict:
        return {"trainable_params": int(self.module.get_parameters_size(trainable_only=True)),
                "framework": f"onnxruntime-training {ort.__version__}"}


if __name__ == "__main__":
    if sys.argv[1] == "--generate":
        generate_artifacts(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        measure(OrtTrainingPeer)
