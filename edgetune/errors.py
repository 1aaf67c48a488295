"""User-facing errors.

Every problem a user can cause (a bad file, a model edgetune cannot tune, a diverging run) is raised
as an :class:`EdgetuneError` whose message is one line naming the file, line or tensor at fault. The
CLI prints that line and exits non-zero without a traceback; anything else is a bug.
"""

from __future__ import annotations


class EdgetuneError(Exception):
    """A problem with the user's inputs or run, reported as one line."""

    exit_code = 2


class DataError(EdgetuneError):
    """A training or evaluation file cannot be used (names file and line)."""


class ModelError(EdgetuneError):
    """The ONNX model or its tokenizer cannot be tuned as given."""


class TrainingError(EdgetuneError):
    """The run itself failed (non-finite loss, engine self-check)."""

    exit_code = 3


class NonFiniteLoss(TrainingError):
    """A step's loss came out NaN or infinite (θ is back where the step began): the guard may recover it.

    ``forwards``: the passes the failed step ran (no record carries them, and they count in the budget); 0 in
    an error rebuilt from a child process's report, which names only the class and the message."""

    def __init__(self, message: str, forwards: int = 0):
        super().__init__(message)
        self.forwards = forwards
