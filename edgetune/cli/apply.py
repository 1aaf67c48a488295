"""``edgetune apply``: merge a LoRA adapter or a sparse diff into a plain ONNX model."""

from __future__ import annotations

import argparse

from edgetune.cli.progress import console


def add_parser(commands) -> None:
    apply = commands.add_parser("apply", help="merge a LoRA adapter or a sparse diff into a plain ONNX model")
    apply.add_argument("--onnx", required=True, help="the base model the adapter was tuned on")
    apply.add_argument("--adapter", required=True,
                       help="an .onnx_adapter file, a PEFT folder, a LoRA run's trainable.safetensors, "
                       "or a sparse run's sparse.etdiff")
    apply.add_argument("--output", required=True, help="where the merged model.onnx goes")
    apply.add_argument("--overwrite", action="store_true", help="replace --output if it exists")


def run(args: argparse.Namespace) -> int:
    from edgetune.artifacts.adapters import apply_adapter

    path = apply_adapter(args.onnx, args.adapter, args.output, overwrite=args.overwrite)
    console.print(f"merged {args.adapter} into {args.onnx}: {path}")
    return 0
