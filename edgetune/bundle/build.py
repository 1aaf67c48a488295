"""Writing a bundle: the model prepared exactly as ``tune`` prepares it, then its files and the manifest last."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgetune import __version__
from edgetune.artifacts.io import atomic_writer, is_temporary
from edgetune.artifacts.outdir import LOCK_FILE, output_lock, refuse_input_folder
from edgetune.bundle.format import ARENA_FILE, MANIFEST, ArenaLayout, ArenaTensor, Manifest, TokenizerEntry, \
    read_manifest, write_manifest
from edgetune.bundle.placement import QNN, provider_name, require_provider
from edgetune.config import ModelOptions, TrainConfig, validate_fields
from edgetune.data.jsonl import TASK_LM
from edgetune.data.tokenizer import SIDECARS, TEMPLATE_FILE, pad_id, read_tokenizer_config, special_tokens
from edgetune.errors import EdgetuneError
from edgetune.graph.loss import LABELS_INPUT, LOGITS_OUTPUT, LOSS_OUTPUT, TOKEN_LOGITS_OUTPUT
from edgetune.graph.trainable import TrainableSpec
from edgetune.process.child import run_child
from edgetune.zo.options import HeadOptions

_DTYPES = {onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64"}  # the data inputs' element types
# The names a bundle may hold (model.onnx and the graphs may add a .data file beside them).
_GRAPHS = ("prefix.onnx", "suffix.onnx", "model.onnx")


@dataclass
class BundleOptions:
    onnx: str
    trainable: TrainableSpec | str  # a spec, or auto (resolved by the model)
    output: Path
    model: ModelOptions
    batch_size: int | None = None  # static shapes: rows per batch (the length is max_length)
    gemm_to_matmul: bool = True
    provider: str | None = None
    force: bool = False
    head: str = "auto"  # tune's --head: auto prepares the exact head where tune's defaults would choose it


@dataclass
class BundleResult:
    manifest: Manifest
    rewritten: list[str] = field(default_factory=list)  # Gemm nodes the pass rewrote
    placement: list[dict[str, Any]] | None = None  # --provider's report
    notes: list[str] = field(default_factory=list)  # one line each: what the bundle chose and why


def bundle(options: BundleOptions) -> BundleResult:
    """Prepare ``options.onnx`` as ``tune`` would and write the bundle to ``options.output``."""
    from edgetune.tuner import Tuner

    out = options.output
    tokenizer = Path(options.model.tokenizer or Path(options.onnx).parent / "tokenizer.json")
    refuse_input_folder(out, [options.onnx, tokenizer], flag="--output")
    head, notes = _graph_head(options)
    if options.provider:  # before the model is prepared: a provider this build lacks is a typo or a wrong wheel
        if provider_name(options.provider) == QNN and not options.batch_size:
            raise EdgetuneError("--provider qnn needs static shapes (QNN compiles its graph for one shape): pass "
                                "--batch-size (and --max-length)")
        require_provider(options.provider)
    with output_lock(out):
        old = _claim(out, options.force)
        # the same cache entry and arena as `tune` with these options: the bundle is what tune would run (auto:
        # the exact head's gradient in the graph where tune's defaults tune the head exactly)
        tuner = Tuner.from_onnx(options.onnx, trainable=options.trainable, head=head, **options.model.keywords())
        written: list[str] = []
        try:
            # --force: the old bundle goes once the model is prepared (a model that fails to load leaves it
            # whole), its manifest first: from then on the folder is no bundle until the new manifest
            for name in old:
                (out / name).unlink(missing_ok=True)
            result = _write(tuner, options, out, written)
            result.notes = notes
        except BaseException:
            for name in written:  # an unfinished bundle leaves nothing (its manifest was never written)
                (out / name).unlink(missing_ok=True)
            raise
    return result


def _graph_head(options: BundleOptions) -> tuple[str, list[str]]:
    """The ``head`` to prepare the graph for, and a line where --provider rules the exact head out: QNN compiles
    one static graph, and the gradient's one-hot takes its class count from the logits' shape at run time."""
    validate_fields(HeadOptions(head=options.head))
    if options.provider and provider_name(options.provider) == QNN and options.head != "zo":
        if options.head == "exact":
            raise EdgetuneError("--head exact is not for --provider qnn: the head's gradient (a one-hot sized at run "
                                "time) does not compile for QNN; bundle with --head zo")
        return "zo", ["head: zo (--provider qnn: the exact head's gradient does not compile for QNN)"]
    return options.head, []


def _claim(out: Path, force: bool) -> list[str]:
    """The files of the finished bundle ``out`` holds (to replace, with ``force``); refuses a folder with a
    finished bundle without ``force``, or with files no bundle writes (they would be mixed into this one)."""
    old: list[str] = []
    if (out / MANIFEST).exists():
        if not force:
            raise EdgetuneError(f"--output {out} already holds a bundle ({MANIFEST}): choose another folder or "
                                "replace it with --force")
        try:
            old = [MANIFEST, *read_manifest(out).files]
        except EdgetuneError:  # a damaged manifest: its files are still bundle files, which --force replaces
            old = [MANIFEST]
    foreign = [p.name for p in sorted(out.iterdir()) if p.name not in old and p.name != LOCK_FILE
               and not is_temporary(p) and not _bundle_name(p.name)]
    if foreign:
        raise EdgetuneError(f"--output {out} holds files that are not a bundle's ({', '.join(foreign[:3])}): "
                            "choose an empty folder")
    return old


def _bundle_name(name: str) -> bool:
    """A name a half-written bundle may have left (no manifest: nothing of it is the user's)."""
    return name in (*_GRAPHS, ARENA_FILE, "tokenizer.json", *SIDECARS) or name.endswith(".onnx.data")


def _write(tuner, options: BundleOptions, out: Path, written: list[str]) -> BundleResult:
    static = [options.batch_size, tuner.max_length] if options.batch_size else None
    names = [p.name for p in tuner.params]
    per_token = tuner.info.task == TASK_LM
    written += ["prefix.onnx"] * (tuner._prefix_graph is not None) + ["suffix.onnx"]  # the child writes them
    graphs = run_child("edgetune.bundle.graphs", [
        tuner._prefix_graph, tuner._suffix_graph, str(out), names, tuner.info.data_inputs, per_token, static,
        options.gemm_to_matmul, options.provider], f"bundling {options.onnx}")
    _write_model(tuner, out / "model.onnx", static)
    written.append("model.onnx")
    with atomic_writer(out / ARENA_FILE) as handle:  # the arena as the core lays it out, gaps included
        handle.write(memoryview(tuner.arena.buffer()).cast("B"))
    written.append(ARENA_FILE)
    for source in [tuner.tokenizer_path, *(tuner.tokenizer_path.parent / s for s in SIDECARS)]:
        if source.is_file():
            target = "tokenizer.json" if source == tuner.tokenizer_path else source.name
            with open(source, "rb") as src, atomic_writer(out / target) as dst:
                shutil.copyfileobj(src, dst)
            written.append(target)
    written += [p.name for p in out.iterdir() if p.name.endswith(".onnx.data")]
    manifest = _manifest(tuner, options, static)
    write_manifest(out, manifest, sorted(set(written)))
    return BundleResult(manifest, graphs["rewritten"], graphs["placement"])


def _write_model(tuner, path: Path, static: list[int] | None) -> None:
    """The plain inference graph, streamed from the base file with the tuned model's metadata; with static
    shapes its inputs get them too (an NPU app infers at the shape it tunes at)."""
    from edgetune.bundle.passes import fix_input_shapes
    from edgetune.graph.stream import ModelFile

    base = ModelFile(tuner.model_path)
    skeleton = None
    if static is not None:
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(base.skeleton)
        fix_input_shapes(skeleton, {name: static for name in tuner.info.data_inputs}, str(path))
    base.write(path, None, tuner.output_metadata(), skeleton=skeleton)


def _manifest(tuner, options: BundleOptions, static: list[int] | None) -> Manifest:
    config = read_tokenizer_config(tuner.tokenizer_path)
    template_file = tuner.tokenizer_path.parent / TEMPLATE_FILE
    chat = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
    verbalizer = tuner.verbalizer
    defaults = TrainConfig()
    outputs = {o.name for o in tuner.engine.suffix.get_outputs()}
    return Manifest(
        edgetune_version=__version__,
        task=tuner.info.task,
        labels=tuner.labels.names if tuner.labels is not None else None,
        verbalizer={"words": dict(zip(verbalizer.labels, verbalizer.words)), "template": verbalizer.template,
                    "token_ids": list(verbalizer.token_ids)} if verbalizer is not None else None,
        chat_template=chat if isinstance(chat, str) else None,
        eos_token=special_tokens(config).get("eos_token"),
        trainable=str(tuner.trainable_spec),
        graphs={"prefix": "prefix.onnx" if tuner._prefix_graph is not None else None, "suffix": "suffix.onnx",
                "model": "model.onnx"},
        inputs=[{"name": name, "dtype": _DTYPES.get(tuner.info.input_types[name], "int64")}
                for name in tuner.info.data_inputs],
        labels_input={"name": LABELS_INPUT, "dtype": "int64", "per_token": tuner.info.task == TASK_LM},
        boundary=list(tuner.engine.boundary),
        outputs={"loss": LOSS_OUTPUT, "logits": TOKEN_LOGITS_OUTPUT if TOKEN_LOGITS_OUTPUT in outputs else LOGITS_OUTPUT},
        arena=ArenaLayout(ARENA_FILE, "float32", len(tuner.arena), [
            ArenaTensor(p.name, tuner.arena.offset(p.name), list(p.shape), tuner.arena.group(p.name))
            for p in tuner.params]),
        tokenizer=TokenizerEntry("tokenizer.json", tuner.max_length, pad_id(tuner.tokenizer),
                                 tokenizer_kind(tuner.tokenizer_path)),
        static_shapes={"batch_size": static[0], "max_length": static[1]} if static else None,
        noise=defaults.noise,
        # tune's defaults as they are, "auto" included: the C runtime calibrates as tune does (older bundles
        # carry a number there, which it still reads)
        defaults={"lr": defaults.lr, "eps": defaults.eps, "queries": defaults.queries,
                  "batch_size": static[0] if static else defaults.batch_size, "seed": defaults.seed,
                  "steps": defaults.steps},
        head="exact" if tuner.head is not None else "zo",
        head_tensors={"weight": tuner.head.weight, "bias": tuner.head.bias} if tuner.head is not None else None,
    )


def tokenizer_kind(path: Path) -> str:
    """``wordpiece``, ``bpe-bytelevel`` (the two the C tokenizer implements), or the model type in lower case."""
    import json

    with contextlib.suppress(OSError, ValueError):
        body = json.loads(path.read_text(encoding="utf-8"))
        kind = str(body.get("model", {}).get("type", "unknown")).lower()
        if kind == "bpe" and "ByteLevel" in json.dumps(body.get("pre_tokenizer")):
            return "bpe-bytelevel"
        return kind
    return "unknown"
