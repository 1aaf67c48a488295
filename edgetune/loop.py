"""The training loop: :class:`TrainingRun` holds one run's moving parts; :func:`fit` and :func:`steps` drive it.

A run owns the optimizer over the tuner's arena, the batch stream, the trajectory (``run.etlog``), the step
log (``steps.jsonl``), the forwards spent, and the checkpoint that lets it continue. Two drivers:

- :func:`fit` (``Tuner.fit``) decides when to evaluate and checkpoint, stops at the forward budget or on a
  signal, and *chains* steps (fuses the next step's first perturbation into this step's last pass) wherever
  nothing reads θ in between.
- :func:`steps` (``Tuner.steps``) yields each step's :class:`StepRecord` to an app that owns its loop. It never
  chains, so θ is exact at every yield: the app may read, evaluate or save it between steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgetune import _core
from edgetune.artifacts.checkpoint import file_digest, load_checkpoint, save_checkpoint
from edgetune.artifacts.outdir import claim_output
from edgetune.artifacts.steplog import JsonlLog
from edgetune.artifacts.trajectory import FILE_NAME as TRAJECTORY, Trajectory, check_room
from edgetune.config import TrainConfig
from edgetune.zo.options import OPTIMIZER_OPTIONS
from edgetune.data import BatchStream, TokenizedSet, Verbalizer
from edgetune.data.batching import Batch
from edgetune.data.tokenizer import SIDECARS as TOKENIZER_SIDECARS
from edgetune.engine import LossEngine, check_engine
from edgetune.engine.activation_cache import ActivationCache, budget_bytes
from edgetune.engine.prge import CopyBatchedEngine
from edgetune.errors import EdgetuneError, NonFiniteLoss, TrainingError
from edgetune.graph.auto_slice import AutoSlice
from edgetune.graph.blocks import Param
from edgetune.graph.cache import default_cache_root
from edgetune.graph.head_grad import LinearHead
from edgetune.graph.model import ModelInfo
from edgetune.graph.trainable import TrainableSpec
from edgetune.process.interrupt import Interrupted, StopRequest
from edgetune.process.rss import peak_rss_mb
from edgetune.artifacts.trajectory import MAX_QUERIES
from edgetune.zo import Anchors, StepRecord, build_optimizer
from edgetune.zo.calibrate import BATCHES, Calibration, calibrate, probe_cap
from edgetune.zo.exact_head import ExactHead, HeadGrads, WithoutHead
from edgetune.zo.guard import MAX_ROLLBACKS, SHRINK, AppliedTerms, Guard, undo_record
from edgetune.zo.head_strategy import ZOSlice, head_strategy
from edgetune.zo.prge import ParallelZO, parallel_strategy
from edgetune.zo.schedules import StepSize
from edgetune.zo.subset import block_subsets

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
# --lr auto under the exact head: the head takes this many steps alone (one forward each) before the layers below
# are calibrated. A fresh head's small weights leave those layers nearly flat, so a calibration before it learns
# chose an lr that overshoots once it has (MiniLM-RT last:2: 3.9e-3, where 5e-5 works).
WARM_STEPS = 50
BATCH_ORDER = "core-permutation-1"
_TRAJECTORY_KEYS = TrainConfig.trajectory_keys()  # the fields marked for the trajectory: a resumed run keeps them


class TunedModel(Protocol):
    """What a run reads and tunes of its model; :class:`edgetune.Tuner` is the implementation."""

    params: list[Param]
    arena: _core.Arena
    weights: dict[str, np.ndarray]
    engine: LossEngine
    info: ModelInfo
    model_path: Path
    tokenizer_path: Path
    max_length: int
    verbalizer: Verbalizer | None
    trainable_spec: TrainableSpec | None  # None: evaluation only
    auto_slice: AutoSlice | None  # what --trainable auto chose, and why
    head: LinearHead | None  # the linear head whose exact gradient the graph outputs (--head exact)

    @property
    def anchors(self) -> Anchors | None: ...
    def load_data(self, path: str | Path) -> TokenizedSet: ...
    def evaluate(self, data: TokenizedSet, batch_size: int = 64) -> dict[str, float]: ...
    def copy_batched_engine(self) -> CopyBatchedEngine: ...
    def output_metadata(self) -> dict[str, str]: ...


class Progress(Protocol):
    def on_start(self, start: int, total: int) -> None: ...
    def on_step(self, record: StepRecord) -> None: ...
    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...
    # optional: on_note(line), one line the run has to say (calibrated lr, a guard's rollback, a best state kept)


@dataclass
class FitResult:
    before: dict[str, float] | None
    after: dict[str, float] | None
    steps: int
    seconds: float
    forward_passes: int  # the forwards this call ran: its StepRecords' ``forwards`` and the calibration's
    peak_rss_mb: float
    history: list[dict[str, Any]] = field(default_factory=list)
    parallel: dict[str, Any] | None = None  # what --parallel auto measured and chose
    activation_cache: dict[str, Any] | None = None  # where the frozen prefix's outputs were kept, and their size
    calibration: dict[str, Any] | None = None  # what --lr/--eps auto measured and chose
    guard: list[str] = field(default_factory=list)  # the guard's lines: rollbacks, lr halved
    kept: str = "final"  # "best": the run ended worse than it began and kept its best state
    best_step: int | None = None  # with kept "best": θ before this step is what was kept

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def train_config(config: TrainConfig | None, options: Mapping[str, Any]) -> TrainConfig:
    """A validated config from ``config=TrainConfig(...)`` (copied: the caller's object is left as it is) or
    from keyword options, never both."""
    if config is None:
        return TrainConfig.from_options(options)
    if options:
        raise EdgetuneError(f"give config=TrainConfig(...) or options such as {sorted(options)[0]}=, not both")
    if not isinstance(config, TrainConfig):
        raise EdgetuneError(f"config: expected a TrainConfig, got {type(config).__name__}")
    checked = replace(config)
    checked.validate()
    return checked


class TrainingRun:
    """One tuning run of ``tuner`` on ``data``: each :meth:`step` takes θ from step ``done`` to ``done + 1``.

    With ``output_dir`` every step goes to ``steps.jsonl`` and the trajectory, and :meth:`save_checkpoint`
    writes them with the checkpoint; ``resume`` continues the run checkpointed there (:meth:`restore`).
    Constructing reads the data (and the checkpoint) and writes nothing; the engine is bound and checked
    at the first step (:meth:`bind`). :meth:`close` when done: it leaves θ settled, never mid-perturbation.
    """

    strategy: ZOSlice  # what the loop asks of the head (the exact head's, or nothing): set with every optimizer

    def __init__(self, tuner: TunedModel, config: TrainConfig, data: str | Path, output_dir: str | Path | None = None,
                 resume: bool = False):
        config = replace(config, head=config.resolved_head(tuner.head is not None))  # the log records exact or zo
        subsets = block_subsets(config, tuner.params, tuner.arena)  # a --rotate K the slice cannot take fails here
        check_room(config, [p.name for p in tuner.params])  # DiZO's per-tensor scales must fit a step record
        self.tuner, self.config = tuner, config
        self.out = Path(output_dir) if output_dir else None
        self.train = tuner.load_data(data)
        self.fingerprint = run_fingerprint(tuner, config, data)
        self.trajectory = Trajectory(trajectory_header(tuner, config, self.fingerprint["model"]))
        self.stream = BatchStream(len(self.train), config.batch_size, config.seed)
        self.subsets = subsets
        self.calibration: Calibration | None = None  # --lr/--eps auto: measured at bind, or restored
        self.optimizer = self._build_optimizer()
        self.guard = Guard(rule=self.strategy.guard_rule) if config.guard == "on" else None
        self.guard_lines: list[str] = []
        self.kept_best: int | None = None  # the step whose θ the end of the run kept (its best)
        self.note: Any = lambda line: None  # where the run's one-liners go (fit: the progress's on_note)
        # the (step, (seed, c) terms) of each ZO-SGD step θ holds, oldest first: what a rollback undoes
        self._applied = AppliedTerms()
        self.start = self.done = self.spent = self.start_forwards = 0
        self.history: list[dict[str, Any]] = []  # evaluations during the run, kept in the checkpoint
        self.before: dict[str, float] | None = None  # the evaluation before step 0
        self.batching = None  # what --parallel auto measured and chose
        self._saved_optimizer: dict[str, Any] | None = None
        self._engine: LossEngine | None = None
        self._steplog: JsonlLog | None = None
        self.cache: ActivationCache | None = None
        self.cache_summary: dict[str, Any] | None = None  # the cache as it was at close()
        if resume:
            self.restore()

    @property
    def checkpoint(self) -> Path | None:
        return self.out / CHECKPOINT if self.out else None

    @property
    def resolved(self) -> TrainConfig:
        """The config with --lr/--eps auto replaced by the calibrated values (1.0 until measured: no step
        runs before :meth:`bind` measures them)."""
        cal, config = self.calibration, self.config
        lr = config.lr if config.lr != "auto" else (cal.lr if cal else 1.0)
        eps = config.eps if config.eps != "auto" else (cal.eps if cal else 1.0)
        return replace(config, lr=lr, eps=eps)

    @property
    def can_roll_back(self) -> bool:
        """A guarded ZO-SGD step is undone from its record: θ ← θ + c·z has the inverse −c. Weight decay
        (θ scaled), rotated blocks and the other optimizers' state have none: the guard halves lr only."""
        config, zo = self.config, self.strategy.zo  # under --head exact the head rolls back from its kept copy
        return (self.guard is not None and (zo is None or zo.name == "zo-sgd") and not config.weight_decay
                and not config.rotate)

    def _build_optimizer(self):
        tuner, config = self.tuner, self.resolved
        if config.head == "exact":
            return self._exact_head(config)
        optimizer = build_optimizer(config, tuner.arena.buffer(), anchors=tuner.anchors, subsets=self.subsets,
                                    weights=tuner.weights)
        return self._with_step_size(optimizer)

    def _exact_head(self, config: TrainConfig) -> ExactHead:
        """--head exact: ZO-SGD over the slice less the head (its lr is the run's step size), the head first-order.
        The head alone has no ZO part: the step size is the head's lr then, which MEAZO cannot adapt (no
        projected gradient), so only the guard's scale acts on it."""
        tuner = self.tuner
        below = WithoutHead(tuner.arena, tuner.head)
        lower = None if below.empty else self._with_step_size(build_optimizer(config, tuner.arena.buffer(),
                                                                              subsets=below))
        optimizer = ExactHead(HeadGrads.bind(tuner.engine, tuner.weights, tuner.head), lower, config.head_lr,
                              config.head_method, noise=config.noise, l2=config.head_l2)
        if lower is None:
            optimizer.lr = self.step_size = StepSize(optimizer.lr)
        return optimizer

    @property
    def optimizer(self):
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer) -> None:
        """Every optimizer the run takes (built, calibrated, batched) comes with what the loop asks of its head."""
        self._optimizer, self.strategy = optimizer, head_strategy(optimizer)

    @property
    def zeroth_order(self) -> bool:
        """Whether any of the slice is tuned by ZO (not so under --head exact with the head alone)."""
        return self.strategy.zo is not None

    def _with_step_size(self, optimizer):
        """``optimizer`` reading its lr through a :class:`StepSize` (the guard's scale, MEAZO's factor)."""
        reference = self.calibration.grad_rms if self.calibration else None
        optimizer.lr = self.step_size = StepSize(optimizer.lr, self.config.lr_adapt, reference)
        return optimizer

    @property
    def budget_spent(self) -> bool:
        return bool(self.config.forward_budget) and self.spent >= self.config.forward_budget

    @property
    def finished(self) -> bool:
        """No step left: all ``steps`` taken, or the forward budget spent (the step that reached it counts)."""
        return self.done >= self.config.steps or self.budget_spent

    def restore(self) -> None:
        """Continue the run checkpointed in the output folder: θ, step, evaluations, forwards, optimizer state.
        The checkpoint must come from the same data, model, tokenizer and trajectory-defining options."""
        if self.checkpoint is None:
            raise EdgetuneError("--resume needs --output-dir (where the checkpoint is)")
        tensors, state = load_checkpoint(self.checkpoint)
        _check_fingerprint(self.checkpoint, state.get("fingerprint", {}), self.fingerprint)
        weights = self.tuner.weights
        if set(tensors) != set(weights):
            raise EdgetuneError(f"{self.checkpoint}: checkpoint holds different trainable tensors than --trainable selects")
        for name, value in tensors.items():
            weights[name][...] = value
        step = int(state["step"])
        kept = state.get("kept_best")  # the end's keep-best rollback takes a record past --steps
        if step > self.config.steps + (kept is not None):
            raise EdgetuneError(f"{self.checkpoint}: checkpoint is at step {step}, beyond --steps {self.config.steps}")
        self.start = self.done = step
        self.history = [h for h in state.get("history", []) if h["step"] <= step]
        self.before = state.get("before")
        self.spent = self.start_forwards = int(state.get("forwards", 0))
        self.kept_best = kept
        if state.get("calibration"):
            self.calibration = Calibration(**state["calibration"])
            self.optimizer = self._build_optimizer()
            self._announce_calibration(quiet=True)
        self.step_size.load_state_dict(state.get("step_size", {}))
        if self.guard is not None and state.get("guard"):
            self.guard = Guard(state=state["guard"], rule=self.strategy.guard_rule)
        self._saved_optimizer = state.get("optimizer", {})
        self.optimizer.load_state_dict(self._saved_optimizer)
        self.trajectory = self.trajectory.continued(self.out / TRAJECTORY, step)
        for record in self.trajectory.records:
            self._track(record)
        rebuild = getattr(self.optimizer, "rebuild", None)  # state kept in the steps, not the checkpoint (HiZOO's Σ)
        if rebuild is not None:
            rebuild(self.trajectory.records)

    def bind(self) -> LossEngine | CopyBatchedEngine:
        """The engine the steps run on, set up once: the first batch bound and self-checked, and under
        ``--parallel`` the copy-batched engine and P-RGE optimizer (``auto`` measures which pays)."""
        if self._engine is not None:
            return self._engine
        tuner, config = self.tuner, self.config
        first = self._batch(self.start)
        self._attach_cache(first)
        tuner.engine.set_batch(first)
        check_engine(tuner.engine, tuner.arena.buffer())
        self._engine = tuner.engine
        if self.calibration is None and "auto" in (config.lr, config.eps) and self.zeroth_order:
            if not self.strategy.warm_up(WARM_STEPS):  # else the head learns alone first; step() calibrates after
                self._calibrate()
        if config.parallel != "off":
            self._engine, optimizer, self.batching = parallel_strategy(
                self.resolved, tuner.engine, self.optimizer, tuner.copy_batched_engine, first, tuner.arena.buffer(),
                self._saved_optimizer)
            if optimizer is not self.optimizer:
                scale = self.step_size.state_dict()
                self.optimizer = self._with_step_size(optimizer)
                self.step_size.load_state_dict(scale)
            # replay needs the estimator auto resolved to, not "auto"
            self.trajectory.header["config"]["parallel"] = "on" if isinstance(self.optimizer, ParallelZO) else "off"
        return self._engine

    def step(self, chain: bool = False) -> StepRecord:
        """Step ``done`` on its batch, logged. ``chain`` promises that another step follows with nothing reading
        θ in between (evaluation, checkpoint): the next perturbation is then fused into this step's last pass."""
        engine, t = self.bind(), self.done
        if self.calibration is None and self.strategy.warmed_up(t):
            self._calibrate()  # the head has warmed up: the layers below have the curvature they will train at
        batch = self._batch(t)
        engine.set_batch(batch)
        try:
            record = self.optimizer.step(t, engine.mean_loss, chain=chain)
        except TrainingError as exc:
            lines = ", ".join(sorted({self.train.where[int(i)] for i in batch.examples}))
            kept = f"; last checkpoint kept in {self.checkpoint}" if self.checkpoint and self.checkpoint.exists() else ""
            if isinstance(exc, NonFiniteLoss):
                self.spent += exc.forwards
                raise NonFiniteLoss(f"{exc} on examples {lines}{kept}", exc.forwards) from None
            raise type(exc)(f"{exc} on examples {lines}{kept}") from None
        self._append(record)
        self.spent += record.forwards
        self.step_size.observe(record.grads)
        return record

    def _append(self, record: StepRecord) -> None:
        """Log ``record`` (step ``done``) and move past it."""
        self.done = record.step + 1
        self._log().append(record.to_json())
        self.trajectory.append(record)
        self._track(record)

    def _track(self, record: StepRecord) -> None:
        """Keep the undo terms of the steps θ holds (a rollback record drops those it undid)."""
        if not self.can_roll_back:
            return
        if record.rollback is None:
            self._applied.add(record)
        else:
            self._applied.take_since(record.rollback)

    def _calibrate(self) -> None:
        """--lr/--eps auto: probe the curvature on a few batches of a stream of the run's seed (not the steps'),
        then rebuild the optimizer with the measured values; the forwards count in the budget."""
        config = self.config
        self.calibration = self._probe(config.seed, eps=None if config.eps == "auto" else config.eps)
        state = self.strategy.carried_state()
        self.optimizer = self._build_optimizer()
        if state is not None:
            self.optimizer.load_state_dict(state)
        if self.guard is not None:
            self.guard = Guard(self.calibration.loss_noise, loss=self.calibration.loss, rule=self.strategy.guard_rule)
        self._announce_calibration()

    def _probe(self, seed: int, eps: float | None) -> Calibration:
        """The calibration's probes at the arena's θ (left as it was) on its batches, a stream of the run's seed
        (not the steps'); the forwards count in the budget."""
        config, tuner = self.config, self.tuner
        stream = BatchStream(len(self.train), config.batch_size, _core.derive_seed(config.seed, 2**32, 2**16))
        batches = [self._batch(i, stream) for i in range(BATCHES)]
        binders = [lambda b=b: tuner.engine.set_batch(b) for b in batches]
        # a fifth of what is left of the budget: a rollback's re-measure takes less than the first calibration
        measured = calibrate(tuner.arena.buffer(), seed, config.noise, binders, tuner.engine.mean_loss, eps=eps,
                             max_probes=probe_cap(config.forward_budget and max(config.forward_budget - self.spent, 1)),
                             spans=self.strategy.zo_spans(self.done))  # under the exact head: all but the head
        self.spent += measured.forwards
        return measured

    def _shrink(self) -> str:
        """lr after a rollback to the best state: halved, and under --lr auto no larger than the calibration's
        rule gives at that state, measured again there (the curvature grows as a slice trains: LoRA's A has
        none while B is zero, where the run began). Returns what the line adds about it."""
        self.step_size.scale *= SHRINK
        if self.calibration is None or self.config.lr != "auto" or not self.zeroth_order:
            return ""
        # probes of their own: seeds no other calibration or step draws
        again = self._probe(_core.derive_seed(self.config.seed, 2**32 + 1, self.guard.state.rollbacks),
                            eps=self.resolved.eps)
        self.step_size.scale = min(self.step_size.scale, again.lr / self.calibration.lr)
        return f" (zᵀHz here {again.curvature:.3g}, was {self.calibration.curvature:.3g})"

    def _announce_calibration(self, quiet: bool = False) -> None:
        """The measured lr and ε into the trajectory header (replay reads the records' own; the header says
        what the run used) and, unless ``quiet`` (a resumed run), one line."""
        self.trajectory.header["config"].update(lr=self.resolved.lr, eps=self.resolved.eps)
        if not quiet:
            self.note(self.calibration.line())

    def watch(self, record: StepRecord) -> bool:
        """The guard reads step ``record``'s loss; True: roll back now. Where θ before the step is the new best,
        the exact head keeps its copy of the head then (the layers below roll back by their undo records)."""
        act = self.guard.observe(record)
        if self.guard.state.best_step == record.step:
            self.strategy.mark_best(record.step)
        return act

    def guard_acts(self) -> None:
        """The guard saw the loss rise: roll back to its best state (ZO-SGD) and halve lr, with one line."""
        lr_before, done = self.step_size(self.done), self.done
        rolled = self.can_roll_back
        if rolled:
            self.roll_back(self.guard.state.best_step)
            added = self._shrink()
        else:  # θ is not at a state worth measuring: halved only
            self.step_size.scale *= SHRINK
            added = ""
        line = self.guard.line(done, lr_before, self.step_size(self.done), rolled) + added
        self.guard.rolled_back()
        self.guard_lines.append(line)
        self.note(line)

    def recover(self) -> bool:
        """A step's loss was not finite (θ is back where it began): as for a rising loss, roll back to the
        guard's best state and halve lr, with one line. False where the guard cannot: off, an optimizer with
        no undo, its rollbacks spent, no step since the best to undo, or θ itself not finite after the undo
        (an update overflowed: undoing inf leaves NaN)."""
        guard = self.guard
        if (guard is None or not self.can_roll_back or guard.state.rollbacks >= MAX_ROLLBACKS
                or guard.state.best_step >= self.done):
            return False
        failed, lr_before = self.done, self.step_size(self.done)
        self.roll_back(guard.state.best_step)
        if not np.isfinite(self.tuner.arena.buffer()).all():
            return False
        added = self._shrink()
        line = guard.nonfinite_line(failed, lr_before, self.step_size(self.done)) + added
        guard.rolled_back()
        self.guard_lines.append(line)
        self.note(line)
        return True

    def roll_back(self, to_step: int) -> None:
        """θ back to before step ``to_step``: the undo of every step since, as step records (at most
        MAX_QUERIES terms each) applied by the optimizer's own replay, so a replay lands on the same bits."""
        terms = self._applied.take_since(to_step)
        loss = self.trajectory.last_loss
        zo, head = self.strategy.zo, self.strategy.roll_back(to_step)
        eps = float(zo.eps(self.done)) if zo is not None else 0.0
        chunks = [terms[max(end - MAX_QUERIES, 0):end] for end in range(len(terms), 0, -MAX_QUERIES)]  # latest first
        if head is not None and not chunks:
            chunks = [[]]  # the head alone: one record that restores it
        for i, chunk in enumerate(chunks):
            record = undo_record(self.done, [chunk], to_step, eps, self.optimizer.noise, loss)
            if i == len(chunks) - 1:  # the head's kept values (if any), set by the last record
                record.head_values = head
            self.optimizer.replay(record)
            self._append(record)

    def save_checkpoint(self) -> None:
        """The step log, the trajectory and the checkpoint at step ``done``, in the order a resume reads them."""
        state = {"step": self.done, "history": self.history, "before": self.before, "fingerprint": self.fingerprint,
                 "optimizer": self.optimizer.state_dict(), "forwards": self.spent,
                 "calibration": self.calibration.to_json() if self.calibration else None,
                 "step_size": self.step_size.state_dict(), "guard": self.guard.state_dict() if self.guard else None,
                 "kept_best": self.kept_best}
        self._log().sync()
        values = self.strategy.head_values()
        if values is not None:  # replay sets the head from the last record's values
            self.trajectory.set_head(values)
        self.trajectory.write(self.out / TRAJECTORY)  # before the checkpoint: a resume finds the steps it needs
        save_checkpoint(self.checkpoint, self.tuner.weights, state)

    def close(self) -> None:
        """θ settled (an interrupted chained step must not leave it perturbed) and the step log closed."""
        self.optimizer.settle()
        if self._steplog is not None:
            self._steplog.close()
        if self.cache is not None:
            self.cache_summary = self.cache.describe()
            self.tuner.engine.attach_cache(None)
            self.cache.close()
            self.cache = None

    def _batch(self, t: int, stream: BatchStream | None = None) -> Batch:
        """Step ``t``'s batch (of ``stream``, else the steps'), its rows keyed by their index in the training set
        for the activation cache."""
        indices = (stream or self.stream).indices(t)
        batch = self.train.batch(indices, self.tuner.info.data_inputs)
        batch.examples = indices
        return batch

    def _attach_cache(self, first: Batch) -> None:
        """Keep the frozen prefix's outputs per example (``--activation-cache``) where it is exact."""
        budget = budget_bytes(self.config.activation_cache)
        engine = self.tuner.engine
        if budget is None or not engine.cached:
            return
        spill = self.out if self.out and self.out.is_dir() else default_cache_root().parent
        cache = ActivationCache(engine.cached, [len(ids) for ids in self.train.ids], budget,
                                self.config.activation_cache_dtype, spill)
        reason = engine.attach_cache(cache, first)
        if reason is not None:  # a warning where the user asked for a budget; auto only passes where it can
            log = logger.info if self.config.activation_cache == "auto" else logger.warning
            log("activation cache off: %s", reason)
        else:
            self.cache = cache

    def _log(self) -> JsonlLog:
        # opened at the first write: a run that fails before its first step leaves the folder's log as it was
        if self._steplog is None:
            self._steplog = JsonlLog(self.out / "steps.jsonl" if self.out else None, self.start)
        return self._steplog


def fit(tuner: TunedModel, config: TrainConfig, data: str | Path, eval_data: str | Path | None,
        output_dir: str | Path | None, resume: bool, progress: Progress | None, stop: StopRequest) -> FitResult:
    """``Tuner.fit``'s run: evaluated before and after (and every ``eval_every``), checkpointed every
    ``save_every`` and at the end, stopped by the forward budget or ``stop``."""
    run = TrainingRun(tuner, config, data, output_dir, resume)
    run.note = _noter(progress)
    dev = tuner.load_data(eval_data) if eval_data else None
    if dev is not None and not resume:
        run.before = tuner.evaluate(dev, config.eval_rows)
    if progress:
        progress.on_start(run.start, config.steps)
    if tuner.auto_slice is not None and not resume:  # the slice nobody named (the CLI's banner says it)
        logger.info(tuner.auto_slice.line())
    if config.head == "auto" and not resume:  # and how its head is tuned
        logger.info("head: %s (--head auto)", run.config.head)
    if progress:
        if run.before is not None and not resume:
            progress.on_eval(0, run.before)
    try:
        if run.start < config.steps:
            run.bind()
        began = time.perf_counter()
        _train(run, dev, progress, stop)
        after = _end(run, dev, progress)
        if run.out:
            run.save_checkpoint()
    finally:
        run.close()
    return FitResult(before=run.before, after=after, steps=run.done - run.start, seconds=time.perf_counter() - began,
                     forward_passes=run.spent - run.start_forwards, peak_rss_mb=peak_rss_mb(), history=run.history,
                     parallel=run.batching.to_json() if run.batching else None,
                     activation_cache=run.cache_summary,
                     calibration=run.calibration.to_json() if run.calibration else None, guard=run.guard_lines,
                     kept="best" if run.kept_best is not None else "final", best_step=run.kept_best)


def _noter(progress: Progress | None):
    """The run's one-liners to ``progress.on_note`` where it has one (the protocol's optional method)."""
    on_note = getattr(progress, "on_note", None)
    return on_note if on_note is not None else (lambda line: None)


END_TOLERANCE = 5e-3  # an eval loss within 0.5 % of the start is not "worse": evaluation is exact, the steps are noisy


def _end(run: TrainingRun, dev: TokenizedSet | None, progress: Progress | None) -> dict[str, float] | None:
    """The final evaluation; and, when the run ends worse than it began (the eval loss with --eval-data, else
    the guard's smoothed training loss against the first), θ back to the best state it reached, said in one
    line. A run never hands back a model worse than its base on the data it saw without saying so."""
    after = _evaluate(run, dev, progress) if dev is not None else None
    guard = run.guard
    if guard is None or not run.can_roll_back or run.done == run.start or run.kept_best is not None:
        return after
    if after is not None and run.before is not None:
        start, end = run.before["loss"], after["loss"]
        worse = end > start + END_TOLERANCE * abs(start)
    else:
        start, end, worse = guard.state.start, guard.state.ema, guard.worse_than_start()
    best = guard.state.best_step
    if not worse or start is None or best >= run.done:
        return after
    run.roll_back(best)
    if after is not None:
        run.history.pop()  # the final evaluation is of the kept state
        after = _evaluate(run, dev, progress)
        if after["loss"] > start + END_TOLERANCE * abs(start) and best > 0:
            # the best smoothed training loss lags the weights: when its state is worse too, the start it is
            best = 0
            run.roll_back(best)
            run.history.pop()
            after = _evaluate(run, dev, progress)
    run.kept_best = best
    run.note(f"kept best: the run ended worse than it began (loss {start:.4g} → {end:.4g}); kept θ before step "
             f"{best}" + (f", loss {after['loss']:.4g}" if after else f" (smoothed training loss {guard.state.best:.4g})"))
    return after


def _train(run: TrainingRun, dev: TokenizedSet | None, progress: Progress | None, stop: StopRequest) -> None:
    """Step to the end or the budget; evaluate and checkpoint on the way; on a stop request, checkpoint and
    raise :class:`Interrupted`."""
    config = run.config
    while not run.finished:
        done = run.done + 1
        eval_now = dev is not None and config.eval_every and done % config.eval_every == 0 and done < config.steps
        save_now = run.out and config.save_every and done % config.save_every == 0
        # θ is read between steps; with a forward budget, a step may be the last one, and a step after a
        # stop request: only an unchained step leaves θ exact for the checkpoint
        # nor under the guard, which may roll back after any step (it undoes steps from an exact θ)
        chain = (done < config.steps and not eval_now and not save_now and not config.forward_budget
                 and stop.signum is None and run.guard is None)
        try:
            record = run.step(chain)
        except NonFiniteLoss:
            if run.recover():
                continue  # from the best state at half the lr: the failed step left no record
            raise
        if run.guard is not None and run.watch(record):
            run.guard_acts()
        if progress:
            try:
                progress.on_step(record)
            except KeyboardInterrupt:  # an embedder's hook stops the run as Ctrl-C does
                stop.request()
        if stop.signum is not None and not chain:
            if run.out:
                run.save_checkpoint()
            raise Interrupted.at_step(done, run.checkpoint, stop.signum)
        if run.budget_spent:
            return  # the budget's end is the run's end: evaluated and saved after
        if eval_now:
            _evaluate(run, dev, progress)
        if save_now:
            run.save_checkpoint()


def _evaluate(run: TrainingRun, dev: TokenizedSet, progress: Progress | None) -> dict[str, float]:
    """Evaluate θ at step ``done`` on ``dev``, into the run's history (with the forwards so far)."""
    metrics = run.tuner.evaluate(dev, run.config.eval_rows)
    row = {"forwards": run.spent, **metrics}
    run.history.append({"step": run.done, **row})
    if progress:
        progress.on_eval(run.done, row)
    return metrics


def steps(tuner: TunedModel, config: TrainConfig, data: str | Path, output_dir: str | Path | None = None,
          resume: bool = False, overwrite: bool = False) -> Iterator[StepRecord]:
    """``Tuner.steps``' generator: one unchained step per ``next``, so θ is exact at every yield.

    With ``output_dir`` it logs as :func:`fit` does and checkpoints every ``save_every`` steps, at the end, and
    when the app stops early (``break`` closes the generator): θ at the last yielded step, to ``resume``.
    Signals are the app's: no handler is installed, and an exception inside a step leaves θ as the
    optimizer's own error handling does (ZO-SGD restores it before raising a non-finite loss).
    """
    with claim_output(output_dir, [tuner.model_path, tuner.tokenizer_path], resume, overwrite):
        run = TrainingRun(tuner, config, data, output_dir, resume)
        try:
            while not run.finished:
                yield run.step()
                if run.out and config.save_every and run.done % config.save_every == 0:
                    run.save_checkpoint()
        except GeneratorExit:
            if run.out:
                run.save_checkpoint()
            raise
        else:
            if run.out:
                run.save_checkpoint()
        finally:
            run.close()


def run_fingerprint(tuner: TunedModel, config: TrainConfig, data: str | Path) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it: the options that define the trajectory,
    the slice, the files and the settings that decide every token."""
    # A decaying lr or a growing q depends on the total, so only constant ones may be extended on resume.
    keyed_to_total = config.schedule != "constant" or config.query_schedule == "grow"
    # another optimizer's options cannot change this run: leaving them out keeps checkpoints from before an
    # optimizer was added resumable
    keys = tuple(k for k in _TRAJECTORY_KEYS if k not in _other_optimizers_options(config.optimizer))
    keys += ("steps",) if keyed_to_total else ()
    verbalizer = tuner.verbalizer
    return {
        **{k: getattr(config, k) for k in keys},
        "trainable": [p.name for p in tuner.params],
        "max_length": tuner.max_length,
        # the verbaliser's words and template decide the tokens and the target of every example
        "verbalizer": verbalizer.describe() if verbalizer else None,
        "template": verbalizer.template if verbalizer else None,
        "data": file_digest(data),
        "model": file_digest(tuner.model_path),
        "tokenizer": tokenizer_digest(tuner.tokenizer_path),
        # the rows of every step (edgetune.h et_epoch_permutation) and the batch mean's order: a checkpoint
        # without it drew numpy's permutation and cannot be continued on the same trajectory
        "batch_order": BATCH_ORDER,
    }


def _other_optimizers_options(optimizer: str) -> set[str]:
    return {f.name for group in OPTIMIZER_OPTIONS if optimizer not in group.for_optimizers for f in fields(group)}


def tokenizer_digest(tokenizer_path: Path) -> str:
    """The files that decide every token id: the vocabulary, and the chat template and eos that
    turn a messages or prompt record into tokens."""
    files = [tokenizer_path] + [tokenizer_path.parent / name for name in TOKENIZER_SIDECARS]
    return ",".join(file_digest(f) for f in files if f.is_file())


def trajectory_header(tuner: TunedModel, config: TrainConfig, model_digest: str) -> dict[str, Any]:
    """What ``edgetune replay`` needs besides the steps: the base, the slice, the optimizer, the metadata."""
    return {
        "base_sha256": model_digest,
        "trainable": tuner.trainable_spec and str(tuner.trainable_spec),  # the canonical text: replay parses it
        "arena": [[p.name, list(p.shape)] for p in tuner.params],
        "config": {k: getattr(config, k) for k in (*_TRAJECTORY_KEYS, "steps")},
        "metadata": tuner.output_metadata(),
    }


def _check_fingerprint(path: Path, saved: Mapping[str, Any], fingerprint: Mapping[str, Any]) -> None:
    for key, value in fingerprint.items():
        if key not in saved:  # an option added since: its behaviour then is not one the run can continue
            raise EdgetuneError(f"{path}: cannot resume, the checkpoint predates the '{key}' option (an older "
                                "edgetune wrote it): resume with that version or start the run again")
        if saved.get(key) != value:
            what = "file contents" if key in ("data", "model", "tokenizer") else f"value {saved.get(key)!r}"
            raise EdgetuneError(f"{path}: cannot resume, '{key}' differs from the checkpoint ({what})")
