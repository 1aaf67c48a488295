"""The embedding API: ``Tuner.from_onnx(...).fit(...)`` then ``save``. The CLI is a thin layer on it."""

from __future__ import annotations

import functools
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetune import _core
from edgetune.artifacts.adapters import save_lora_outputs
from edgetune import loop
from edgetune.artifacts.checkpoint import file_digest, save_checkpoint
from edgetune.config import Bound, ModelOptions, TrainConfig, check_option, validate_fields
from edgetune.data import BatchStream, LabelSet, TokenizedSet, load_tokenizer, read_examples
from edgetune.data.batching import IGNORE_INDEX
from edgetune.data.chat import ChatTemplate
from edgetune.data.jsonl import FORMAT_MESSAGES, FORMAT_PROMPT, TASK_CLASSIFICATION, TASK_LM
from edgetune.data.tokenizer import SIDECARS as TOKENIZER_SIDECARS
from edgetune.data.tokenizer import check_vocabulary, read_tokenizer_config, special_tokens
from edgetune.data.verbalizer import TEMPLATE_KEY, VERBALIZER_KEY, Verbalizer
from edgetune.engine import LossEngine
from edgetune.engine.prge import CopyBatchedEngine, Segment
from edgetune.errors import DataError, EdgetuneError, ModelError, TrainingError
from edgetune.graph.relink import Relink
from edgetune.graph import prepare
from edgetune.graph.cache import prepare_cached
from edgetune.graph.stream import ModelFile
from edgetune.graph.loss import labelled_positions
from edgetune.graph.head_grad import without_head_grad
from edgetune.graph.prge import copy_batched
from edgetune.graph.model import LABELS_KEY, TASK_KEY, check_model_file, load_model, max_length_for
from edgetune.graph.prepare import arena_group
from edgetune.graph.auto_slice import AutoSlice, choose_slice, exact_head_fits
from edgetune.graph.trainable import AUTO, DEFAULT_TRAINABLE, TrainableSpec
from edgetune.loop import FitResult, Progress
from edgetune.process.interrupt import StopRequest
from edgetune.process.rss import peak_rss_mb
from edgetune.artifacts.finite import dumps_finite, require_finite_tensors
from edgetune.artifacts.io import atomic_write_text
from edgetune.artifacts.outdir import claim_output, refuse_input_folder
from edgetune.artifacts.sparse_diff import save_sparse_outputs
from edgetune.zo import Anchors, StepRecord
from edgetune.zo.importance import BlockScore, rank_blocks, score_groups
from edgetune.zo.options import HeadOptions
from edgetune.zo.subset import ArenaBlocks

__all__ = ["FitResult", "Progress", "Tuner", "peak_rss_mb"]  # FitResult, Progress: the loop's, the façade's API

_EVAL_LOGITS_BUDGET = 1 << 24  # logits cells per evaluation run: 64 MB per fp32 copy


class Tuner:
    """A model prepared for forward-only tuning, with its trainable slice in the core's arena."""

    def __init__(self, prepared, tokenizer, tokenizer_path: Path, max_length: int, threads: int | None, providers):
        self.info = prepared.info
        self.model_path = prepared.info.path
        self.tokenizer = tokenizer
        self.tokenizer_path = tokenizer_path
        self.max_length = max_length
        self.params = prepared.params
        self.head = prepared.head  # the linear head whose exact gradient every forward outputs (head="exact")
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
        self._prefix_graph = prepared.prefix  # with the suffix, what `edgetune bundle` copies
        self.static_shapes: tuple[int, int] | None = None  # (batch, length) of a static-shape bundle's graphs
        self.labels = LabelSet(self.info.labels) if self.info.labels else None
        self.verbalizer: Verbalizer | None = None  # set by from_onnx: classification through the LM's words
        self.trainable_spec: TrainableSpec | None = None  # save() writes adapter files when it has a lora: term
        self.auto_slice: AutoSlice | None = None  # what --trainable auto chose, and why (from_onnx sets it)
        self.explicit_task: str | None = None  # --task as the user gave it (from_onnx sets it)
        self.bundle: Path | None = None  # the bundle's folder (from_bundle sets it): its graphs decide the head

    @classmethod
    def from_onnx(
        cls,
        onnx_path: str | Path,
        trainable: str | TrainableSpec | None = DEFAULT_TRAINABLE,
        tokenizer: str | Path | None = None,
        task: str | None = None,
        max_length: int | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        split: bool = True,
        verbalizer: str | dict[str, str] | None = None,
        template: str | None = None,
        head: str = "auto",
    ) -> Tuner:
        """Prepare ``onnx_path`` for tuning the weights selected by ``trainable`` (a ``--trainable`` text,
        see ``graph.trainable``, or a parsed :class:`TrainableSpec`). ``"auto"`` (the default) chooses the slice
        by what the model is (``graph.auto_slice``): :attr:`auto_slice` then says which and why.

        ``trainable=None`` prepares the model for evaluation only. ``max_length`` (tokens per example) may not
        exceed the model's position table; None is 128, or the table's rows where it has fewer. ``verbalizer`` (``"neg=bad,pos=good"``)
        with a causal LM classifies ``{"text", "label"}`` data by the word the LM says after
        ``template`` (default ``"{text}"``); a model tuned that way carries both in its metadata.
        ``head="exact"`` prepares a classifier to be tuned with ``fit(head="exact")``: every forward also
        outputs the exact gradient of its last linear layer, which ``trainable`` must select. ``"auto"`` (the
        default) does so where that layer is in the slice (``graph.auto_slice.exact_head_fits``), and ``fit``'s
        ``head="auto"`` then tunes it exactly; ``"zo"`` prepares the plain graph.
        """
        ModelOptions(tokenizer=tokenizer, task=task, max_length=max_length, threads=threads, split=split,
                     verbalizer=verbalizer, template=template, providers=providers).validate()
        validate_fields(HeadOptions(head=head))
        auto = None
        if not isinstance(trainable, TrainableSpec):
            check_option("trainable", trainable, str | None)
            if trainable is not None and trainable.strip() == AUTO:
                check_model_file(onnx_path)  # the choice reads the file: a missing one is the usual line
                auto = choose_slice(onnx_path, task, verbalized=verbalizer is not None or None)
                trainable = auto.spec
            else:
                trainable = TrainableSpec.parse(trainable) if trainable is not None else None
        if trainable is not None and trainable.importance is not None:
            raise EdgetuneError(f"--trainable '{trainable.text}': importance:K is measured on data; resolve it with "
                                "Tuner.rank_blocks and TrainableSpec.resolve first (the CLI does)")
        onnx_path = Path(onnx_path)
        check_model_file(onnx_path)  # before it is hashed: an unreadable or empty file is one line
        tokenizer_path = Path(tokenizer) if tokenizer else onnx_path.parent / "tokenizer.json"
        tok = load_tokenizer(tokenizer_path)
        if threads:
            _core.set_num_threads(threads)
        if trainable is None:
            prepared = prepare(onnx_path, None, task=task)
        else:
            head_grad = head == "exact" or (head == "auto" and exact_head_fits(onnx_path, trainable, task))
            prepared = prepare_cached(onnx_path, trainable, file_digest(onnx_path), task=task, split=split,
                                      head_grad=head_grad)
        check_vocabulary(tok, tokenizer_path, prepared.info.embedding_rows, onnx_path)
        tuner = cls(prepared, tok, tokenizer_path, max_length_for(prepared.info, max_length), threads, providers)
        tuner._set_verbalizer(verbalizer, template)
        tuner.trainable_spec = trainable
        tuner.auto_slice = auto
        tuner.explicit_task = task
        return tuner

    @classmethod
    def from_bundle(cls, directory: str | Path, threads: int | None = None,
                    providers: Sequence[str] | None = None) -> Tuner:
        """The model of a bundle written by ``edgetune bundle`` (``docs/bundle.md``): its graphs, arena image
        and tokenizer as they are, after every file is checked against the manifest's sha256. The slice,
        the task, the verbaliser and the tokens per example are the bundle's."""
        from edgetune.bundle.load import check_arena, open_bundle

        ModelOptions(threads=threads, providers=providers).validate()
        bundle = open_bundle(directory)
        tok = load_tokenizer(bundle.tokenizer_path)
        if threads:
            _core.set_num_threads(threads)
        tuner = cls(bundle.prepared, tok, bundle.tokenizer_path, bundle.manifest.tokenizer.max_length, threads,
                    providers)
        check_arena(bundle, tuner.arena)
        tuner._set_verbalizer(None, None)  # the bundle's model.onnx carries it in its metadata
        tuner.trainable_spec = TrainableSpec.parse(bundle.manifest.trainable)
        static = bundle.manifest.static_shapes
        tuner.static_shapes = (static["batch_size"], static["max_length"]) if static else None
        tuner.bundle = Path(directory)
        return tuner

    @classmethod
    def rank_blocks(
        cls,
        onnx_path: str | Path,
        data: str | Path,
        *,
        probes: int = 8,
        batch_size: int = 8,
        eps: float = 1e-3,
        seed: int = 0,
        noise: str = "rademacher",
        **tuner_options: Any,
    ) -> list[BlockScore]:
        """Blocks of ``onnx_path`` from most to least important on ``data`` (``zo.importance``), for
        ``TrainableSpec.resolve([s.block for s in ranking])``.

        ``tuner_options`` go to :meth:`from_onnx` (tokenizer, max_length, threads, verbalizer, ...).
        The whole model is lifted for the measurement (an inference-sized arena) and released afterwards.
        """
        tuner = cls.from_onnx(onnx_path, trainable="all", **tuner_options)
        groups = ArenaBlocks.of(tuner.params, tuner.arena).blocks
        if not groups:
            raise EdgetuneError(f"{onnx_path}: importance scoring needs transformer blocks; none were found")
        dataset = tuner.load_data(data)
        stream = BatchStream(len(dataset), batch_size, seed)

        def next_batch(probe: int) -> None:
            tuner.engine.set_batch(dataset.batch(stream.indices(probe), tuner.info.data_inputs))

        loss = lambda: np.mean(tuner.engine.loss())  # noqa: E731
        scores = score_groups(tuner.arena.buffer(), groups, loss, probes, eps, seed, noise, next_batch)
        return rank_blocks(groups, scores)

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
        dataset = self._tokenize(path, name_labels)
        if self.static_shapes is not None:  # graphs of one shape: every batch is padded to its length
            dataset.pad_to = self.static_shapes[1]
            if len(dataset) < self.static_shapes[0] and name_labels:
                raise DataError(f"{path}: {len(dataset)} examples, fewer than the bundle's static batch size "
                                f"{self.static_shapes[0]} (a step's batch repeats no example)")
        return dataset

    def _tokenize(self, path: str | Path, name_labels: bool) -> TokenizedSet:
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
        if self.static_shapes is not None:  # the graphs take exactly this many rows: the last batch is filled
            batch_size, max_tokens = self.static_shapes[0], None
        for batch in dataset.batches(batch_size, self.info.data_inputs, max_tokens):
            loss, logits = self._loss_and_logits(batch)
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

    def _loss_and_logits(self, batch) -> tuple[np.ndarray, np.ndarray]:
        """The engine's per-example loss and logits; a batch short of a static graph's rows is run filled with
        copies of its first row (labelled nothing), whose outputs are dropped."""
        rows = self.static_shapes[0] if self.static_shapes is not None else batch.size
        if rows == batch.size:
            return self.engine.loss_and_logits(batch)
        filled = batch.select([*range(batch.size), *[0] * (rows - batch.size)])
        filled.labels[batch.size:] = IGNORE_INDEX if filled.labels.ndim == 2 else filled.labels[0]
        loss, logits = self.engine.loss_and_logits(filled)
        kept = int(labelled_positions(batch.labels).sum()) if self.engine.token_logits else batch.size
        return loss[:batch.size], logits[:kept]

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
        config: TrainConfig | None = None,
        **options: Any,
    ) -> FitResult:
        """Tune on ``data``; ``options`` are :class:`TrainConfig` fields (steps, lr, eps, ...), or pass
        ``config=TrainConfig(...)``.

        ``output_dir`` (checkpoint and logs; :meth:`save` writes the model there) must not be the folder
        of the model or its tokenizer, and one that already holds a run (:data:`edgetune.artifacts.outdir.RUN_FILES`)
        needs ``resume`` (continue it) or ``overwrite`` (replace it). The run holds the folder alone.
        Ctrl-C or SIGTERM, or a KeyboardInterrupt from ``progress.on_step``, stops the run after the
        current step (and the next one when the current one was chained): it writes a checkpoint to
        ``output_dir`` and raises :class:`edgetune.process.interrupt.Interrupted`, a KeyboardInterrupt.
        """
        config = loop.train_config(config, options)  # before the output folder is claimed or data read
        config.check_eval_data(eval_data)
        self._check_run(config, output_dir, resume, overwrite)
        with claim_output(output_dir, [self.model_path, self.tokenizer_path], resume, overwrite), \
                StopRequest() as stop:
            return loop.fit(self, config, data, eval_data, output_dir, resume, progress, stop)

    def steps(
        self,
        data: str | Path,
        output_dir: str | Path | None = None,
        resume: bool = False,
        overwrite: bool = False,
        config: TrainConfig | None = None,
        **options: Any,
    ) -> Iterator[StepRecord]:
        """Tune on ``data`` one step per iteration, in a loop the app owns; yields each step's :class:`StepRecord`.

        ``options`` are :class:`TrainConfig` fields, or pass ``config=TrainConfig(...)``; both are checked here,
        before any data is read (the data, the output folder and the checkpoint at the first ``next``)::

            tuner = Tuner.from_onnx("model.onnx", trainable="last:2")
            for record in tuner.steps("train.jsonl", steps=500, lr=1e-3):
                print(record.step, record.loss)
                if record.step % 100 == 0:
                    print(tuner.evaluate("dev.jsonl"))  # θ is exact between steps
            tuner.save("out/")

        Steps are never chained, so θ is exact at every yield (a step costs one more pass over the slice
        than in :meth:`fit`). ``forward_budget`` ends the run as in :meth:`fit`; ``eval_every`` is the app's
        to do. ``output_dir`` gets :meth:`fit`'s ``steps.jsonl`` and ``run.etlog``, and a checkpoint every
        ``save_every`` steps, at the end, and when the app leaves the loop early (``resume`` continues it);
        without it nothing is written. Leaving the loop early (``break``) or an exception leaves θ at the last
        yielded step. No signal handler is installed: Ctrl-C is the app's.
        """
        config = loop.train_config(config, options)
        if config.eval_every:
            raise EdgetuneError(f"eval_every {config.eval_every}: steps() does not evaluate; "
                                "call evaluate() between steps")
        self._check_run(config, output_dir, resume, overwrite)
        return loop.steps(self, config, data, output_dir, resume, overwrite)

    def _check_run(self, config: TrainConfig, output_dir: str | Path | None, resume: bool, overwrite: bool) -> None:
        """The run options besides the config, a slice to tune, and a graph for ``config``: checked before the
        folder or data."""
        for name, value in (("resume", resume), ("overwrite", overwrite)):
            check_option(name, value, bool)
        if not self.weights:
            raise EdgetuneError("nothing to tune: the tuner was created with trainable=None")
        if resume and output_dir is None:
            raise EdgetuneError("--resume needs --output-dir (where the checkpoint is)")
        if self.static_shapes is not None and config.batch_size != self.static_shapes[0]:
            raise EdgetuneError(f"--batch-size {config.batch_size}: the bundle's graphs take batches of exactly "
                                f"{self.static_shapes[0]} (its static shapes)")
        if self.static_shapes is not None and config.parallel != "off":  # P-RGE stacks copies along the batch
            raise EdgetuneError(f"--parallel {config.parallel}: P-RGE runs the queries as copies along the batch, "
                                "which a static-shape bundle's graphs cannot take; use --parallel off")
        if config.head == "exact" and self.head is None:  # the graph decides it: preparing again would start over
            if self.bundle is not None:
                raise EdgetuneError(f"--head exact: the bundle {self.bundle} was prepared to tune its head by ZO "
                                    "(manifest.json \"head\": \"zo\"); bundle the model with --head exact")
            raise EdgetuneError("head='exact' needs the head's gradient in the graph: create the tuner with "
                                "Tuner.from_onnx(..., head='exact')")

    def copy_batched_engine(self) -> CopyBatchedEngine:
        """The tunable graph evaluating perturbed copies of the slice in one forward (P-RGE)."""
        suffix = load_model(self._suffix_graph) if isinstance(self._suffix_graph, str) else self._suffix_graph
        if self.head is not None:  # P-RGE tunes the head by ZO: its exact gradient is not wanted there
            suffix = without_head_grad(suffix)
        segments = [Segment(p.name, self.arena.offset(p.name), tuple(p.shape)) for p in self.params]
        graph = copy_batched(suffix, [s.name for s in segments])
        return CopyBatchedEngine(graph, segments, len(self.arena), self.engine, *self._session_args)

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
        spec = self.trainable_spec
        with_past = Relink.read(self.model_path)  # the base's KV-cache graph, read before model.onnx may be replaced
        try:
            if spec is not None and spec.lora:  # model.onnx gets the adapters merged; adapter files beside it
                save_lora_outputs(out, self.model_path, spec.lora, self.weights, metadata, self.info.task)
            elif spec is not None and spec.sparse:  # model.onnx gets δ added into its weights; sparse.etdiff beside it
                save_sparse_outputs(out, self.model_path, spec.sparse, self.weights, metadata)
            else:
                ModelFile(self.model_path).write(out / "model.onnx", self.weights, metadata)
            if with_past is not None:  # generation then keeps its KV cache, now over the tuned weights
                with_past.write(out / "model.onnx")
            # the canonical text: edgetune apply parses it back to rebuild a LoRA-FA run's frozen A
            state = {"step": -1, "summary": summary or {}, "trainable": spec and str(spec), "metadata": metadata}
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

