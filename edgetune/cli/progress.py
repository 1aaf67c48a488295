"""Console progress: a live bar on a terminal, periodic lines in logs and CI.

Forward passes are the unit of cost (a step's price depends on its queries and optimizer): the bar
counts the forwards run since this process started tuning, eval lines the run's total.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from edgetune.zo import StepRecord

console = Console(stderr=True, highlight=False, soft_wrap=True)


class ConsoleProgress:
    """Implements the ``Progress`` protocol of :meth:`Tuner.fit`."""

    def __init__(self, log_every: int = 50, announce: Callable[[], None] | None = None):
        """``announce`` prints what the run is, when it starts: after its data and checkpoint were read."""
        self.announce = announce
        self.live = console.is_terminal
        self.log_every = log_every
        self.loss_ema: float | None = None
        self.forwards = 0
        self._bar = Progress(
            TextColumn("[bold]tune"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(), console=console, disable=not self.live,
        )
        self._task = None
        self._started = 0.0
        self._first = 0

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)

    def on_start(self, start: int, total: int) -> None:
        if self.announce is not None:
            self.announce()
        self._task = self._bar.add_task("tune", total=total, completed=start, info="")
        self._started, self._first = time.perf_counter(), start

    def on_step(self, record: StepRecord) -> None:
        self.loss_ema = record.loss if self.loss_ema is None else 0.95 * self.loss_ema + 0.05 * record.loss
        self.forwards += record.forwards
        done = record.step + 1
        rate = (done - self._first) / max(time.perf_counter() - self._started, 1e-9)
        info = f"loss {self.loss_ema:.4f}  q {len(record.seeds)}  {self.forwards:,} fwd  {rate:.2f} steps/s"
        self._bar.update(self._task, completed=done, info=info)
        if not self.live and done % self.log_every == 0:
            print(f"step {done}: {info}", file=sys.stderr, flush=True)

    def on_note(self, line: str) -> None:
        """One line the run has to say: the calibrated lr, a guard's rollback, a best state kept."""
        console.print(line)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """``metrics`` as :meth:`Tuner.evaluate` gives them, with the run's ``forwards`` so far when tuning."""
        parts = [f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("examples", "forwards")]
        spent = f" ({metrics['forwards']:,} forwards)" if "forwards" in metrics else ""
        console.print(f"eval @ step {step}{spent}: " + ", ".join(parts))
