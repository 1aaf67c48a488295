"""``edgetune bundle``: prepare a model as ``tune`` does and write everything a device needs to tune it."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from edgetune.cli.args import add_model_args, add_option_flags, options_of
from edgetune.cli.progress import console
from edgetune.config import Bound, ModelOptions, option, validate_fields
from edgetune.errors import EdgetuneError
from edgetune.graph.trainable import AUTO, DEFAULT_TRAINABLE, TrainableSpec


@dataclass
class _BundleFlags:
    """The flags of `bundle` beside the model's."""

    output: str | None = option(None, "the bundle's folder (created; one that holds a bundle needs --force)")
    trainable: str = option(DEFAULT_TRAINABLE, "weights to tune, as tune's --trainable (importance:K excepted; "
                            "auto is resolved here and the bundle names the slice it chose)")
    batch_size: int | None = option(None, "static shapes: every graph input fixed to this many rows and "
                                    "--max-length tokens (NPUs need them; padding then goes to --max-length)",
                                    bound=Bound(1), parse=True)
    provider: str | None = option(None, "report where ONNX Runtime would run each trainable node with this "
                                  "execution provider (xnnpack, coreml, qnn, cpu, ...), and refuse a placement "
                                  "that would ignore updates")
    gemm_to_matmul: bool = option(True, "keep trainable Gemm nodes as they are (by default they become "
                                  "MatMul + Add, which accelerators take with a non-constant weight)")
    force: bool = option(False, "replace the bundle --output already holds")
    head: str = option("auto", "how devices tune the classifier's head: exact (its gradient computed in the graph, "
                       "an Adam step), zo, or auto: exact where tune's defaults tune it exactly (a linear head in "
                       "the slice; zo with --provider qnn)", choices=("auto", "exact", "zo"))

    def validate(self) -> None:
        if not self.output:
            raise EdgetuneError("--output is required")
        validate_fields(self)


def add_parser(commands) -> None:
    parser = commands.add_parser("bundle", help="write a bundle a device tunes from (graphs, arena, tokenizer)")
    add_model_args(parser)
    add_option_flags(parser, _BundleFlags)


def run(args: argparse.Namespace) -> int:
    from edgetune.bundle.build import BundleOptions, bundle
    from edgetune.bundle.placement import describe

    given = {k: v for k, v in vars(args).items() if v is not None}
    flags, model = options_of(_BundleFlags, given), options_of(ModelOptions, given)
    if not args.onnx:
        raise EdgetuneError("--onnx is required")
    flags.validate()
    model.validate()
    # a bad term is refused before any folder or model is touched; auto is resolved when the model is read
    trainable = flags.trainable if flags.trainable.strip() == AUTO else TrainableSpec.parse(flags.trainable)
    if isinstance(trainable, TrainableSpec) and trainable.importance is not None:
        raise EdgetuneError(f"--trainable {flags.trainable}: importance:K ranks blocks on data; bundle the "
                            "blocks it chose (edgetune tune prints them)")
    start = time.perf_counter()
    result = bundle(BundleOptions(args.onnx, trainable, Path(flags.output), model, flags.batch_size,
                                  flags.gemm_to_matmul, flags.provider, flags.force, flags.head))
    seconds = time.perf_counter() - start
    manifest = result.manifest
    size = sum(entry["bytes"] for entry in manifest.files.values())
    console.print(f"bundle {flags.output}: {len(manifest.files) + 1} files, {size / 2**20:.1f} MB, "
                  f"{manifest.arena.count:,} trainable floats ({manifest.trainable}) in {seconds:.1f} s",
                  markup=False)
    for line in result.notes:
        console.print(line, markup=False)
    for name in result.rewritten:
        console.print(f"Gemm -> MatMul + Add: {name}", markup=False)
    for line in describe(result.placement or []):
        console.print(f"placement: {line}", markup=False)
    return 0
