"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM.

The first signal asks the tuning loop to stop after the step in progress; the loop writes a checkpoint
and raises :class:`Interrupted`, a ``KeyboardInterrupt`` (what an embedder of the Python API expects)
that says what was saved. A second signal stops at once.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (or a progress hook's KeyboardInterrupt); the message says what was kept."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum  # as a shell reports a process the signal killed: 130, 143

    @classmethod
    def at_step(cls, step: int, checkpoint: Path | None, signum: int) -> Interrupted:
        if checkpoint is None:
            return cls(f"interrupted at step {step}; nothing was saved (no output folder)", signum)
        return cls(f"interrupted at step {step}; checkpoint saved in {checkpoint}, continue with --resume", signum)


class StopRequest:
    """While entered, SIGINT and SIGTERM set :attr:`signum` instead of stopping the process; a second
    one raises :class:`Interrupted` at once.

    Only signals whose handler is still the default are taken over, and only in the main thread (the
    one Python delivers signals to): an embedding application's own handlers are left alone.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def request(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = signum

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise Interrupted("interrupted again: stopped at once; the step in progress was not saved", signum)
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
            for signum, default in defaults.items():
                if signal.getsignal(signum) is default:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
