"""The embedding API: ``Tuner.from_onnx(...).fit(...)`` then ``save``. The CLI is a thin layer on it."""

from __future__ import annotations

import functools
import json
import math
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgetune import _core
from edgetune.artifacts.adapters import save_lora_outputs
from edgetune.artifacts.checkpoint import file_digest, load_checkpoint, save_checkpoint
from edgetune.config import DEFAULT_TRAINABLE, Bound, ModelOptions, TrainConfig, check_option
from edgetune.data import BatchStream, LabelSet, TokenizedSet, load_tokenizer, read_examples
from edgetune.data.batching import IGNORE_INDEX
from edgetune.data.chat import ChatTemplate
from edgetune.data.jsonl import FORMAT_MESSAGES, FORMAT_PROMPT, TASK_CLASSIFICATION, TASK_LM
from edgetune.data.tokenizer import SIDECARS as TOKENIZER_SIDECARS
from edgetune.data.tokenizer import check_vocabulary, read_tokenizer_config, special_tokens
from edgetune.data.verbalizer import TEMPLATE_KEY, VERBALIZER_KEY, Verbalizer
from edgetune.engine import LossEngine, check_engine
from edgetune.engine.prge import CopyBatchedEngine, Segment
from edgetune.errors import EdgetuneError, ModelError, TrainingError
from edgetune.export.shared import Relink
from edgetune.graph import prepare
from edgetune.graph.cache import prepare_cached
from edgetune.graph.stream import ModelFile
from edgetune.graph.loss import labelled_positions
from edgetune.graph.prge import copy_batched
from edgetune.graph.model import LABELS_KEY, TASK_KEY, check_model_file, load_model, max_length_for
from edgetune.graph.prepare import arena_group
from edgetune.graph.select import split_lora
from edgetune.graph.sparse import split_sparse
from edgetune.process.interrupt import Interrupted, StopRequest
from edgetune.artifacts.finite import dumps_finite, require_finite_tensors
from edgetune.artifacts.io import atomic_write_text
from edgetune.artifacts.outdir import claim_output, refuse_input_folder
from edgetune.artifacts.steplog import JsonlLog
from edgetune.artifacts.sparse_diff import save_sparse_outputs
from edgetune.artifacts.trajectory import FILE_NAME as TRAJECTORY, Trajectory, check_room
from edgetune.zo import Anchors, StepRecord, build_optimizer
from edgetune.zo.importance import importance_count
from edgetune.zo.prge import ParallelZO, parallel_strategy
from edgetune.zo.subset import block_subsets

CHECKPOINT = "checkpoint.safetensors"
_EVAL_LOGITS_BUDGET = 1 << 24  # logits cells per evaluation run: 64 MB per fp32 copy
# Fields that change the trajectory: a resumed run must use the same values.
_TRAJECTORY_KEYS = ("optimizer", "batch_size", "lr", "eps", "queries", "schedule", "warmup", "weight_decay", "noise", "seed",
                    "query_schedule", "queries_min", "query_threshold",
                    "dizo_interval", "dizo_iters", "dizo_eps", "dizo_step", "dizo_tau",
                    "window", "beta1", "beta2", "topk_density", "parallel", "rotate", "rotate_every", "rotate_mode")


class Progress(Protocol):
    def on_start(self, start: int, total: int) -> None: ...
    def on_step(self, record: StepRecord) -> None: ...
    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...


@dataclass
class FitResult:
    before: dict[str, float] | None
    after: dict[str, float] | None
    steps: int
    seconds: float
    forward_passes: int  # the forwards this call ran: its StepRecords' ``forwards`` summed
    peak_rss_mb: float
    history: list[dict[str, Any]] = field(default_factory=list)
    parallel: dict[str, Any] | None = None  # what --parallel auto measured and chose

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


class Tuner:
    """A model prepared for forward-only tuning, with its trainable slice in the core's arena."""

    def __init__(self, prepared, tokenizer, tokenizer_path: Path, max_length: int, threads: int | None, providers):
        self.info = prepared.info
        self.model_path = prepared.info.path
        self.tokenizer = tokenizer
        self.tokenizer_path = tokenizer_path
        self.max_length = max_length
        self.params = prepared.params
        self.total_params = prepared.total_params
        self.split = prepared.prefix is not None
        self.arena = _core.Arena()
        for param in prepared.params:
            self.arena.add(param.name, param.shape, arena_group(param))
        self.arena.finalize()
        self.weights: dict[str, np.ndarray] = {p.name: self.arena.tensor(p.name) for p in prepared.params}
        copy_into = getattr(prepared.initial, "copy_into", None)  # cached: read straight into the arena
        for name, view in self.weights.items():
            if copy_into:
                copy_into(name, view)
            else:
                view[...] = prepared.initial[name]
        # The cached initial slice stays on disk as DiZO's anchor θ0 (memory-mapped on demand); an
        # in-memory one (an evaluation-only tuner, which never tunes) is dropped.
        self._initial_file = prepared.initial if hasattr(prepared.initial, "map_readonly") else None
        prepared.initial = {}
        self.engine = LossEngine(prepared, self.weights, threads, providers)
        self._suffix_graph, self._session_args = prepared.suffix, (threads, providers)  # for --parallel
        self.labels = LabelSet(self.info.labels) if self.info.labels else None
        self.verbalizer: Verbalizer | None = None  # set by from_onnx: classification through the LM's words
        self.trainable_spec: str | None = None  # save() writes adapter files when it has a lora: term
        self.explicit_task: str | None = None  # --task as the user gave it (from_onnx sets it)

    @classmethod
    def from_onnx(
        cls,
        onnx_path: str | Path,
        trainable: str | None = DEFAULT_TRAINABLE,
        tokenizer: str | Path | None = None,
        task: str | None = None,
        max_length: int | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        split: bool = True,
        verbalizer: str | dict[str, str] | None = None,
        template: str | None = None,
    ) -> Tuner:
        """Prepare ``onnx_path`` for tuning the weights selected by ``trainable`` (see ``graph.select``).

        ``trainable=None`` prepares the model for evaluation only. ``max_length`` (tokens per example) may not
        exceed the model's position table; None is 128, or the table's rows where it has fewer. ``verbalizer`` (``"neg=bad,pos=good"``)
        with a causal LM classifies ``{"text", "label"}`` data by the word the LM says after
        ``template`` (default ``"{text}"``); a model tuned that way carries both in its metadata.
        """
        ModelOptions(tokenizer, task, max_length, threads, split, verbalizer, template).validate()
        check_option("trainable", trainable, str | None)
        onnx_path = Path(onnx_path)
        check_model_file(onnx_path)  # before it is hashed: an unreadable or empty file is one line
        if importance_count(trainable) is not None:
            raise EdgetuneError(f"--trainable '{trainable}': importance:K is measured on data; resolve it with "
                                "edgetune.zo.importance.rank_blocks and resolve_importance first (the CLI does)")
        tokenizer_path = Path(tokenizer) if tokenizer else onnx_path.parent / "tokenizer.json"
        tok = load_tokenizer(tokenizer_path)
        if threads:
            _core.set_num_threads(threads)
        if trainable is None:
            prepared = prepare(onnx_path, None, task=task)
        else:
            prepared = prepare_cached(onnx_path, trainable, file_digest(onnx_path), task=task, split=split)
        check_vocabulary(tok, tokenizer_path, prepared.info.embedding_rows, onnx_path)
        tuner = cls(prepared, tok, tokenizer_path, max_length_for(prepared.info, max_length), threads, providers)
        tuner._set_verbalizer(verbalizer, template)
        tuner.trainable_spec = trainable
        tuner.explicit_task = task
        return tuner

    def _set_verbalizer(self, spec: str | dict[str, str] | None, template: str | None) -> None:
        """An explicit verbaliser, else the one in the model's metadata (a template alone overrides its template)."""
        if spec is None:
            metadata = dict(self.info.metadata)
            if template is not None:
                if VERBALIZER_KEY not in metadata:
                    raise EdgetuneError("--template needs --verbalizer")
                metadata[TEMPLATE_KEY] = template
            verbalizer = Verbalizer.from_metadata(metadata, self.tokenizer, str(self.model_path))
        else:
            verbalizer = Verbalizer.create(spec, template, self.tokenizer)
        if verbalizer is None:
            return
        if self.info.task != TASK_LM:
            raise EdgetuneError(f"--verbalizer needs a causal language model; {self.model_path} is a {self.info.task} model")
        self.verbalizer = verbalizer
        self.labels = LabelSet(list(verbalizer.labels))

    @functools.cached_property
    def anchors(self) -> Anchors | None:
        """The trainable tensors' initial values θ0 as a read-only memory map of the prepared-graph cache."""
        if self._initial_file is None:
            return None
        return Anchors(self.weights, self._initial_file.map_readonly())

    @property
    def trainable_params(self) -> int:
        return sum(p.size for p in self.params)

    # -- data ---------------------------------------------------------------------------------

    def load_data(self, path: str | Path) -> TokenizedSet:
        """Training data. A classifier that stores no label names takes them from this file (sorted
        names, or class ids); :meth:`save` stores them with the tuned model."""
        return self._load(path, name_labels=True)

    def _load(self, path: str | Path, name_labels: bool) -> TokenizedSet:
        if self.verbalizer is not None:
            examples = read_examples(path, TASK_CLASSIFICATION)
            return TokenizedSet(examples, self.tokenizer, self.max_length, TASK_LM, self.labels,
                                verbalizer=self.verbalizer)
        # {"text", "label"} on a causal LM would train on the text and drop the labels: only when asked to
        examples = read_examples(path, self.info.task, lm_labels=self.explicit_task == TASK_LM)
        labels = self.labels
        if self.info.task == TASK_CLASSIFICATION and labels is None:
            if name_labels:
                labels = self.labels = LabelSet.from_examples(examples, self.info.num_classes)
            else:  # which logit a name is cannot be told from an evaluation file (one class would be class 0)
                labels = LabelSet.from_ids(examples, self.info.num_classes, str(self.model_path))
        kind = examples[0].format
        chat = ChatTemplate.beside(self.tokenizer_path) if kind == FORMAT_MESSAGES else None
        eos = special_tokens(read_tokenizer_config(self.tokenizer_path)).get("eos_token") if kind == FORMAT_PROMPT else None
        if eos is not None and self.tokenizer.token_to_id(eos) is None:
            eos = None  # a config naming a token the tokenizer lacks: appending it would add unknown text
        return TokenizedSet(examples, self.tokenizer, self.max_length, self.info.task, labels,
                            chat=chat, eos_token=eos)

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(self, data: str | Path | TokenizedSet, batch_size: int = 64) -> dict[str, float]:
        """Mean loss, and accuracy (classification, verbaliser) or perplexity (language modelling)."""
        check_option("batch_size", batch_size, int, Bound(1))
        dataset = data if isinstance(data, TokenizedSet) else self._load(data, name_labels=False)
        verbalized = dataset.classes is not None
        # A causal LM's run allocates batch x sequence x vocabulary logits several times over (the
        # output, the loss's shifted copy and log-softmax): cap the tokens per run instead of the rows.
        vocab = self.info.embedding_rows
        max_tokens = max(1, _EVAL_LOGITS_BUDGET // vocab) if self.info.task == TASK_LM and vocab else None
        losses, correct = [], 0
        for batch in dataset.batches(batch_size, self.info.data_inputs, max_tokens):
            loss, logits = self.engine.loss_and_logits(batch)
            losses.append(loss)
            if verbalized:
                correct += int(np.sum(self._verbalizer_predictions(batch, logits) == batch.classes))
            elif self.info.task == TASK_CLASSIFICATION:
                correct += int(np.sum(np.argmax(logits, axis=-1) == batch.labels))
        per_example = np.concatenate(losses)
        if not np.isfinite(per_example).all():  # NaN metrics would pass for results (and are not JSON)
            first = int(np.argmin(np.isfinite(per_example)))
            raise ModelError(f"{self.model_path}: the loss on {dataset.where[first]} is {per_example[first]}; "
                             "the model computes non-finite logits (broken weights, or a tuning run that diverged)")
        mean_loss = float(np.mean(per_example))
        metrics = {"loss": mean_loss, "examples": len(dataset)}
        if verbalized or self.info.task == TASK_CLASSIFICATION:
            metrics["accuracy"] = correct / len(dataset)
        else:
            metrics["perplexity"] = math.exp(min(mean_loss, 700.0))
        return metrics

    def _verbalizer_predictions(self, batch, logits: np.ndarray) -> np.ndarray:
        """Argmax over the verbaliser's tokens of the logits at each row's last prompt position."""
        word_at = np.argmax(batch.labels != IGNORE_INDEX, axis=1)  # the one target per row
        rows = np.arange(batch.size)
        if self.engine.token_logits:  # one row per labelled position: here, one per example, in order
            scored = labelled_positions(batch.labels)
            row_of = (np.cumsum(scored) - 1).reshape(scored.shape)
            picked = logits[row_of[rows, word_at - 1]]
        else:
            picked = logits[rows, word_at - 1]
        return np.argmax(picked[:, list(self.verbalizer.token_ids)], axis=1)

    # -- tuning -------------------------------------------------------------------------------

    def fit(
        self,
        data: str | Path,
        eval_data: str | Path | None = None,
        output_dir: str | Path | None = None,
        resume: bool = False,
        progress: Progress | None = None,
        overwrite: bool = False,
        **options: Any,
    ) -> FitResult:
        """Tune on ``data``; ``options`` are :class:`TrainConfig` fields (steps, lr, eps, ...).

        ``output_dir`` (checkpoint and logs; :meth:`save` writes the model there) must not be the folder
        of the model or its tokenizer, and one that already holds a run (:data:`edgetune.artifacts.outdir.RUN_FILES`)
        needs ``resume`` (continue it) or ``overwrite`` (replace it). The run holds the folder alone.
        Ctrl-C or SIGTERM, or a KeyboardInterrupt from ``progress.on_step``, stops the run after the
        current step (and the next one when the current one was chained): it writes a checkpoint to
        ``output_dir`` and raises :class:`edgetune.process.interrupt.Interrupted`, a KeyboardInterrupt.
        """
        config = TrainConfig.from_options(options)  # before the output folder is claimed or data read
        config.check_eval_data(eval_data)
        for name, value in (("resume", resume), ("overwrite", overwrite)):
            check_option(name, value, bool)
        with claim_output(output_dir, [self.model_path, self.tokenizer_path], resume, overwrite), \
                StopRequest() as stop:
            return self._fit(data, eval_data, output_dir, resume, progress, stop, config)

    def _fit(self, data: str | Path, eval_data: str | Path | None, output_dir: str | Path | None, resume: bool,
             progress: Progress | None, stop: StopRequest, config: TrainConfig) -> FitResult:
        if not self.weights:
            raise EdgetuneError("nothing to tune: the tuner was created with trainable=None")
        subsets = block_subsets(config, self.params, self.arena)  # a --rotate K the slice cannot take fails here
        check_room(config, [p.name for p in self.params])  # DiZO's per-tensor scales must fit a step record
        out = Path(output_dir) if output_dir else None
        train = self.load_data(data)
        dev = self.load_data(eval_data) if eval_data else None
        fingerprint = self._fingerprint(config, data)

        start, history, before, spent = 0, [], None, 0
        trajectory = Trajectory(self._trajectory_header(config, fingerprint["model"]))
        if resume:
            if out is None:
                raise EdgetuneError("--resume needs --output-dir (where the checkpoint is)")
            start, history, before, optimizer_state, spent = self._restore(out / CHECKPOINT, fingerprint, config)
            trajectory = trajectory.continued(out / TRAJECTORY, start)
        elif dev is not None:
            before = self.evaluate(dev, config.eval_rows)
        if progress:
            progress.on_start(start, config.steps)
            if before is not None and not resume:
                progress.on_eval(0, before)

        optimizer = build_optimizer(config, self.arena.buffer(), anchors=self.anchors, subsets=subsets)
        if resume:
            optimizer.load_state_dict(optimizer_state)
        stream = BatchStream(len(train), config.batch_size, config.seed)
        if start < config.steps:
            self.engine.set_batch(train.batch(stream.indices(start), self.info.data_inputs))
            check_engine(self.engine, self.arena.buffer())
        engine, batching = self.engine, None
        if config.parallel != "off" and start < config.steps:
            engine, optimizer, batching = parallel_strategy(
                config, self.engine, optimizer, self.copy_batched_engine,
                train.batch(stream.indices(start), self.info.data_inputs), self.arena.buffer(),
                optimizer_state if resume else None)
            # replay needs the estimator auto resolved to, not "auto"
            trajectory.header["config"]["parallel"] = "on" if isinstance(optimizer, ParallelZO) else "off"
        steplog = JsonlLog(out / "steps.jsonl" if out else None, start)
        began, resumed_at, done = time.perf_counter(), spent, start

        def out_of_budget() -> bool:
            return bool(config.forward_budget) and spent >= config.forward_budget

        def save(step: int) -> None:
            state = {"step": step, "history": history, "before": before, "fingerprint": fingerprint,
                     "optimizer": optimizer.state_dict(), "forwards": spent}
            steplog.sync()
            trajectory.write(out / TRAJECTORY)  # before the checkpoint: a resume finds the steps it needs
            save_checkpoint(out / CHECKPOINT, self.weights, state)

        try:
            for t in range(start, config.steps):
                if out_of_budget():  # a run resumed from the checkpoint its budget's end saved
                    break
                done = t + 1
                eval_now = dev is not None and config.eval_every and done % config.eval_every == 0 and done < config.steps
                save_now = out and config.save_every and done % config.save_every == 0
                indices = stream.indices(t)
                engine.set_batch(train.batch(indices, self.info.data_inputs))
                try:
                    # θ is read between steps; with a forward budget, a step may be the last one
                    # and a step after a stop request: only an unchained step leaves θ exact for the checkpoint
                    chain = (done < config.steps and not eval_now and not save_now and not config.forward_budget
                             and stop.signum is None)
                    record = optimizer.step(t, engine.mean_loss, chain=chain)
                except TrainingError as exc:
                    lines = ", ".join(sorted({train.where[int(i)] for i in indices}))
                    kept = f"; last checkpoint kept in {out / CHECKPOINT}" if out and (out / CHECKPOINT).exists() else ""
                    raise TrainingError(f"{exc} on examples {lines}{kept}") from None
                spent += record.forwards
                steplog.append(record.to_json())
                trajectory.append(record)
                if progress:
                    try:
                        progress.on_step(record)
                    except KeyboardInterrupt:  # an embedder's hook stops the run as Ctrl-C does
                        stop.request()
                if stop.signum is not None and not chain:
                    if out:
                        save(done)
                    raise Interrupted.at_step(done, out / CHECKPOINT if out else None, stop.signum)
                if out_of_budget():
                    break  # the budget's end is the run's end: evaluated and saved below
                if eval_now:
                    row = {"forwards": spent, **self.evaluate(dev, config.eval_rows)}
                    history.append({"step": done, **row})
                    if progress:
                        progress.on_eval(done, row)
                if save_now:
                    save(done)
            after = self.evaluate(dev, config.eval_rows) if dev is not None else None
            if after is not None:
                row = {"forwards": spent, **after}
                history.append({"step": done, **row})
                if progress:
                    progress.on_eval(done, row)
            if out:
                save(done)
        finally:
            optimizer.settle()  # an interrupted chained step must not leave θ perturbed for save()
            steplog.close()
        return FitResult(
            before=before,
            after=after,
            steps=done - start,
            seconds=time.perf_counter() - began,
            forward_passes=spent - resumed_at,
            peak_rss_mb=peak_rss_mb(),
            history=history,
            parallel=batching.to_json() if batching else None,
        )

    def copy_batched_engine(self) -> CopyBatchedEngine:
        """The tunable graph evaluating perturbed copies of the slice in one forward (P-RGE)."""
        suffix = load_model(self._suffix_graph) if isinstance(self._suffix_graph, str) else self._suffix_graph
        segments = [Segment(p.name, self.arena.offset(p.name), tuple(p.shape)) for p in self.params]
        graph = copy_batched(suffix, [s.name for s in segments])
        return CopyBatchedEngine(graph, segments, len(self.arena), self.engine, *self._session_args)

    def _fingerprint(self, config: TrainConfig, data: str | Path) -> dict[str, Any]:
        # A decaying lr or a growing q depends on the total, so only constant ones may be extended on resume.
        keyed_to_total = config.schedule != "constant" or config.query_schedule == "grow"
        keys = _TRAJECTORY_KEYS + (("steps",) if keyed_to_total else ())
        return {
            **{k: getattr(config, k) for k in keys},
            "trainable": [p.name for p in self.params],
            "max_length": self.max_length,
            # the verbaliser's words and template decide the tokens and the target of every example
            "verbalizer": self.verbalizer.describe() if self.verbalizer else None,
            "template": self.verbalizer.template if self.verbalizer else None,
            "data": file_digest(data),
            "model": file_digest(self.model_path),
            "tokenizer": self._tokenizer_digest(),
        }

    def _tokenizer_digest(self) -> str:
        """The files that decide every token id: the vocabulary, and the chat template and eos that
        turn a messages or prompt record into tokens."""
        files = [self.tokenizer_path] + [self.tokenizer_path.parent / name for name in TOKENIZER_SIDECARS]
        return ",".join(file_digest(f) for f in files if f.is_file())

    def _trajectory_header(self, config: TrainConfig, model_digest: str) -> dict[str, Any]:
        """What ``edgetune replay`` needs besides the steps: the base, the slice, the optimizer, the metadata."""
        return {
            "base_sha256": model_digest,
            "trainable": self.trainable_spec,
            "arena": [[p.name, list(p.shape)] for p in self.params],
            "config": {k: getattr(config, k) for k in (*_TRAJECTORY_KEYS, "steps")},
            "metadata": self.output_metadata(),
        }

    def _restore(self, path: Path, fingerprint: dict[str, Any], config: TrainConfig):
        tensors, state = load_checkpoint(path)
        saved = state.get("fingerprint", {})
        for key, value in fingerprint.items():
            if saved.get(key) != value:
                what = "file contents" if key in ("data", "model", "tokenizer") else f"value {saved.get(key)!r}"
                raise EdgetuneError(f"{path}: cannot resume, '{key}' differs from the checkpoint ({what})")
        if set(tensors) != set(self.weights):
            raise EdgetuneError(f"{path}: checkpoint holds different trainable tensors than --trainable selects")
        for name, value in tensors.items():
            self.weights[name][...] = value
        step = int(state["step"])
        if step > config.steps:
            raise EdgetuneError(f"{path}: checkpoint is at step {step}, beyond --steps {config.steps}")
        history = [h for h in state.get("history", []) if h["step"] <= step]
        return step, history, state.get("before"), state.get("optimizer", {}), int(state.get("forwards", 0))

    # -- output -------------------------------------------------------------------------------

    def output_metadata(self) -> dict[str, str]:
        """The ONNX metadata a tuned model carries: task, label names, verbaliser."""
        metadata = {TASK_KEY: self.info.task}
        if self.labels is not None:
            metadata[LABELS_KEY] = json.dumps(self.labels.names)
        if self.verbalizer is not None:
            metadata.update(self.verbalizer.metadata())
        return metadata

    def save(self, output_dir: str | Path, summary: dict[str, Any] | None = None) -> Path:
        """Write ``model.onnx`` (tuned weights folded in; plain ORT runs it), tokenizer and tuned slice.

        A LoRA slice merges the adapters into ``model.onnx`` and adds the adapter files of
        :func:`edgetune.artifacts.adapters.save_lora_outputs`; a sparse slice adds δ into the weights and writes
        ``sparse.etdiff`` (:func:`edgetune.artifacts.sparse_diff.save_sparse_outputs`). Models are written by
        streaming the base file's tensors (:class:`edgetune.graph.stream.ModelFile`), never a second copy
        in memory. ``summary.json`` is written last, with ``summary["result"]["peak_rss_mb"]`` (when
        present) updated to the process's high-water mark so far, the save included.
        """
        out = Path(output_dir)
        refuse_input_folder(out, [self.model_path, self.tokenizer_path])  # it streams from the file it would replace
        # a model of NaNs runs and answers NaN: never write one (a diverged run stops before this)
        require_finite_tensors(self.weights, f"{self.model_path}: the tuned weights", TrainingError)
        try:  # summary.json must be JSON that any reader parses: no NaN or Infinity
            dumps_finite(summary)
        except ValueError:
            raise TrainingError(f"{out / 'summary.json'}: the run's summary holds NaN or infinity; nothing written") from None
        out.mkdir(parents=True, exist_ok=True)
        metadata = self.output_metadata()
        lora = self.trainable_spec is not None and split_lora(self.trainable_spec)[1] is not None
        sparse = self.trainable_spec is not None and split_sparse(self.trainable_spec)[1] is not None
        with_past = Relink.read(self.model_path)  # the base's KV-cache graph, read before model.onnx may be replaced
        try:
            if lora:  # model.onnx gets the adapters merged; adapter files beside it
                save_lora_outputs(out, self.model_path, self.trainable_spec, self.weights, metadata, self.info.task)
            elif sparse:  # model.onnx gets δ added into its weights; sparse.etdiff beside it
                save_sparse_outputs(out, self.model_path, self.trainable_spec, self.weights, metadata)
            else:
                ModelFile(self.model_path).write(out / "model.onnx", self.weights, metadata)
            if with_past is not None:  # generation then keeps its KV cache, now over the tuned weights
                with_past.write(out / "model.onnx")
            state = {"step": -1, "summary": summary or {}, "trainable": self.trainable_spec, "metadata": metadata}
            save_checkpoint(out / "trainable.safetensors", self.weights, state)
            if self.tokenizer_path.resolve() != (out / "tokenizer.json").resolve():
                shutil.copyfile(self.tokenizer_path, out / "tokenizer.json")
                for sidecar in TOKENIZER_SIDECARS:  # chat rendering, eos for generate
                    if (self.tokenizer_path.parent / sidecar).is_file():
                        shutil.copyfile(self.tokenizer_path.parent / sidecar, out / sidecar)
            if summary is not None:  # last, so that its peak RSS covers writing everything else
                if isinstance(summary.get("result"), dict) and "peak_rss_mb" in summary["result"]:
                    summary["result"]["peak_rss_mb"] = peak_rss_mb()
                atomic_write_text(out / "summary.json", dumps_finite(summary, indent=2) + "\n")
        except OSError as exc:
            raise EdgetuneError(f"{out}: could not write the tuned model ({exc.strerror})") from None
        return out / "model.onnx"


def peak_rss_mb() -> float:
    """The process's high-water resident set so far (VmHWM), in MiB.

    ru_maxrss only where there is no /proc: Linux carries it over exec, so a tune started from a
    large process (a notebook, a benchmark) would report its parent's peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
