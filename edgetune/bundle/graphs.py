"""The bundle's prefix and suffix graphs, written in a child process (:func:`write_graphs`).

Editing a graph holds it as protobuf objects; done in a child, that memory never counts in the process
that called ``edgetune bundle`` (the same reason ``graph/cache.py`` prepares in one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetune.bundle.passes import fix_input_shapes, gemm_to_matmul
from edgetune.bundle.placement import placement_report
from edgetune.engine.session import create_session
from edgetune.graph.lift import save_model
from edgetune.graph.loss import LABELS_INPUT
from edgetune.graph.model import load_model
from edgetune.process.child import child_main

def write_graphs(prefix: str | None, suffix: str, out: str, trainable: list[str], data_inputs: list[str],
                 per_token: bool, static: list[int] | None, gemm: bool, provider: str | None) -> dict[str, Any]:
    """Write ``prefix.onnx`` (when there is a prefix) and ``suffix.onnx`` into ``out``; returns the Gemm nodes
    rewritten and, with ``provider``, the suffix's trainable nodes' placement (refusing one that would ignore
    updates). With ``static`` = [batch, length] every input of both graphs gets a fixed shape, the boundary's
    from a run of the fixed prefix, and both graphs are run once at that shape."""
    out_dir = Path(out)
    feeds: dict[str, np.ndarray] = {}
    if static is not None:
        batch, length = static
        feeds = {name: np.zeros((batch, length), np.int64) for name in data_inputs}
        feeds[LABELS_INPUT] = np.zeros((batch, length) if per_token else (batch,), np.int64)
    if prefix is not None:
        prefix_model = load_model(prefix)
        target = out_dir / "prefix.onnx"
        if static is not None:
            fix_input_shapes(prefix_model, {k: v.shape for k, v in feeds.items()}, str(target))
        save_model(prefix_model, target)
        if static is not None:  # the boundary's shapes as ORT computes them at the fixed input shapes
            session = create_session(str(target), threads=None, providers=["CPUExecutionProvider"])
            inputs = {i.name: _typed(feeds[i.name], i.type) for i in session.get_inputs()}
            names = [o.name for o in session.get_outputs()]
            feeds.update(zip(names, session.run(names, inputs)))
        del prefix_model
    model = load_model(suffix)
    target = out_dir / "suffix.onnx"
    rewritten = gemm_to_matmul(model, set(trainable), str(target)) if gemm else []
    if static is not None:
        fix_input_shapes(model, {k: v.shape for k, v in feeds.items()}, str(target))
    save_model(model, target)
    del model
    if static is not None:  # ORT must run the graph at the shapes it now declares
        session = create_session(str(target), threads=None, providers=["CPUExecutionProvider"])
        shapes = {i.name: i for i in session.get_inputs()}
        run_feeds = {name: _typed(feeds[name], shapes[name].type) if name in feeds else
                     np.zeros(shapes[name].shape, np.float32) for name in shapes}
        session.run(None, run_feeds)
    report = placement_report(str(target), provider, trainable) if provider else None
    return {"rewritten": rewritten, "placement": report}


def _typed(array: np.ndarray, onnx_type: str) -> np.ndarray:
    """``array`` as the input's element type (ORT's type string: ``tensor(int32)``)."""
    kind = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32}.get(onnx_type)
    return array.astype(kind) if kind is not None else array


if __name__ == "__main__":
    child_main(write_graphs)
