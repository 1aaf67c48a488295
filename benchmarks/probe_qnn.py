"""Probe of the QNN execution provider (``onnxruntime-qnn``) on a tiny static-shape bundle, on this machine.

    pip download --no-deps onnxruntime-qnn -d /tmp/qnn && unzip -q /tmp/qnn/onnxruntime_qnn-*.whl -d /tmp/qnn/x
    python benchmarks/probe_qnn.py --qnn-dir /tmp/qnn/x/onnxruntime_qnn

The wheel is a plugin provider (``libonnxruntime_providers_qnn.so``, registered with ORT's
``register_execution_provider_library``) carrying the HTP backend built for x86-64 (``libQnnHtp.so``: the
simulator). It is not a dependency of edgetune: this probe loads it from the folder given. It records
(1) where ORT places each trainable node of the suffix, (2) whether a changed weight input changes QNN's
output as it changes the CPU's (an HTP that baked the weight in would not), (3) a ZO tune through QNN against
the same tune on the CPU. Results: ``benchmarks/results/probe_qnn.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.tiny import make_classifier_bundle  # noqa: E402

from edgetune import Tuner  # noqa: E402
from edgetune.bundle.build import BundleOptions, bundle  # noqa: E402
from edgetune.bundle.placement import KEEP_MATMUL, trainable_nodes  # noqa: E402
from edgetune.config import ModelOptions  # noqa: E402
from edgetune.engine import runner  # noqa: E402
from edgetune.engine.session import session_options  # noqa: E402

QNN = "QNNExecutionProvider"
BATCH, LENGTH = 8, 32


def qnn_session(path: str, qnn_dir: Path, record: bool = False) -> ort.InferenceSession:
    options = session_options(None)
    options.add_session_config_entry(*KEEP_MATMUL)
    if record:
        options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    devices = [d for d in ort.get_ep_devices() if d.ep_name == QNN]
    # fp32 graphs run on the HTP as fp16, which needs the SoC named (an SM8650-class HTP v75 here)
    options.add_provider_for_devices(devices, {"backend_path": str(qnn_dir / "libQnnHtp.so"),
                                               "enable_htp_fp16_precision": "1", "soc_model": "60",
                                               "htp_arch": "75"})
    return ort.InferenceSession(path, options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qnn-dir", type=Path, required=True, help="the wheel's onnxruntime_qnn folder")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    ort.register_execution_provider_library(QNN, str(args.qnn_dir / "libonnxruntime_providers_qnn.so"))
    work = Path(tempfile.mkdtemp(prefix="edgetune-qnn-"))
    paths = make_classifier_bundle(work / "model", n_train=256, n_dev=128)
    made = bundle(BundleOptions(str(paths["model"]), "last:1", work / "bundle", ModelOptions(max_length=LENGTH),
                                batch_size=BATCH, head="zo"))
    suffix = str(work / "bundle" / "suffix.onnx")
    trainable = [t.name for t in made.manifest.arena.tensors]
    result: dict = {"ort": ort.__version__, "bundle": "tiny classifier last:1, static 8 x 32"}

    session = qnn_session(suffix, args.qnn_dir, record=True)
    assigned = {n.name: (sub.ep_name, n.op_type) for sub in session.get_provider_graph_assignment_info()
                for n in sub.get_nodes()}
    import onnx

    nodes = trainable_nodes(onnx.load(suffix), trainable)
    placed = Counter(assigned.get(name, ("?", "?"))[0] for name in nodes)
    result["trainable_nodes"] = dict(placed)
    result["trainable_matmuls_on_qnn"] = sum(1 for n in nodes if assigned.get(n, ("", ""))[1] == "MatMul"
                                             and assigned[n][0] == QNN)
    result["all_nodes"] = dict(Counter(ep for ep, _ in assigned.values()))

    # a weight update must reach the HTP: the output moves with the weights as the CPU's does
    cpu = ort.InferenceSession(suffix, session_options(None), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: np.ones(i.shape, np.int64) for i in cpu.get_inputs() if "int" in i.type}
    weights = {i.name: rng.standard_normal(i.shape).astype(np.float32) * 0.1
               for i in cpu.get_inputs() if "float" in i.type}
    moved = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32) for k, v in weights.items()}
    outs = [s.run(["logits"], {**feeds, **w})[0] for w in (weights, moved) for s in (cpu, session)]
    result["qnn_vs_cpu_max_abs"] = [float(np.abs(outs[0] - outs[1]).max()), float(np.abs(outs[2] - outs[3]).max())]
    result["update_moves_cpu"] = float(np.abs(outs[2] - outs[0]).max())
    result["update_moves_qnn"] = float(np.abs(outs[3] - outs[1]).max())

    # the tune: the same bundle, seed and flags, the suffix on QNN against the CPU
    flags = dict(steps=args.steps, lr=1e-3, eps=1e-2, guard="off", batch_size=BATCH, seed=0)
    runs = {}
    for name in ("cpu", "qnn"):
        create = runner.create_session
        if name == "qnn":
            runner.create_session = lambda model, threads, providers=None: (
                qnn_session(model, args.qnn_dir) if str(model).endswith("suffix.onnx") else create(model, threads))
        try:
            tuner = Tuner.from_bundle(work / "bundle")
            before = tuner.evaluate(paths["dev"])
            fit = tuner.fit(paths["train"], **flags)
            runs[name] = {"before": before, "after": tuner.evaluate(paths["dev"]), "steps": fit.steps}
        finally:
            runner.create_session = create
    result["tune"] = runs
    out = Path(__file__).resolve().parent / "results"
    (out / "probe_qnn.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
