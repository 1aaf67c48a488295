"""Bundles: everything a device needs to tune a model without Python (``docs/bundle.md``).

``format`` is the manifest and its one reader, ``build`` writes a bundle, ``load`` turns one back into
the prepared graphs a :class:`edgetune.Tuner` runs, ``passes`` rewrites graphs for accelerators and
``placement`` reports where ONNX Runtime would run each trainable node.
"""
