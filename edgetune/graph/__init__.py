"""ONNX graph surgery: loss heads, trainable slices lifted to inputs, prefix/suffix split, fold-back."""

from edgetune.graph.prepare import PreparedModel, prepare

__all__ = ["PreparedModel", "prepare"]
