"""The output folder's rules: a run never writes over its inputs, never silently replaces another run,
and holds the folder alone while it writes.

A folder *holds a run* when it has any of :data:`RUN_FILES` (what ``tune`` writes and ``--resume``
reads). Tuning into such a folder needs ``--resume`` (continue it) or ``--overwrite`` (replace it);
an empty or missing folder is always fine. While a run writes, it holds an exclusive ``flock`` on
``OUT/.edgetune.lock`` (holding the writer's PID), which it removes when it is done.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from edgetune.errors import EdgetuneError
from edgetune.artifacts.io import remove_stale_temporaries

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected from each other
    fcntl = None

RUN_FILES = ("model.onnx", "checkpoint.safetensors", "steps.jsonl", "run.etlog", "summary.json")
DRAWN_FILES = ("curves.png",)  # drawn from RUN_FILES (edgetune.report): removed with them, never a run alone
LOCK_FILE = ".edgetune.lock"

_held: dict[Path, list] = {}  # folder -> [fd, created, depth]: re-entrant within this process


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def refuse_input_folder(output_dir: str | Path, inputs: Iterable[str | Path], flag: str = "--output-dir") -> None:
    """Refuse an output folder that holds one of ``inputs`` (a model, its tokenizer and sidecars, a run's
    log; an input folder counts as itself): a run writes ``model.onnx``, ``tokenizer.json``, ... there and
    would replace the files it reads."""
    output_dir = Path(output_dir)
    for source in map(Path, inputs):
        if _same(source if source.is_dir() else source.parent, output_dir):
            raise EdgetuneError(f"{flag} {output_dir} holds the input {source}; writing there would replace it: "
                                "choose another folder")


def refuse_input_file(output: str | Path, inputs: Iterable[str | Path], flag: str = "--output") -> None:
    """Refuse an output file that is one of ``inputs``."""
    for source in map(Path, inputs):
        if _same(source, Path(output)):
            raise EdgetuneError(f"{flag} {output} is the input {source}; writing there would replace it: "
                                "choose another file")


def run_files(folder: str | Path) -> list[str]:
    """The :data:`RUN_FILES` present in ``folder``: none means the folder holds no run."""
    folder = Path(folder)
    return [name for name in RUN_FILES if (folder / name).exists()]


def refuse_existing_run(folder: str | Path, resume: bool, overwrite: bool, flag: str = "--output-dir") -> None:
    """A folder that holds a run is written into only with ``--resume`` (``tune``) or ``--overwrite``;
    ``resume=None`` marks a command that cannot continue a run (``replay``), whose message offers no --resume."""
    found = run_files(folder)
    if found and not resume and not overwrite:
        choices = "continue it with --resume, choose another folder," if resume is not None else "choose another folder"
        raise EdgetuneError(f"{flag} {folder} already holds a run ({', '.join(found)}): {choices} "
                            "or replace it with --overwrite")


def remove_run(folder: str | Path) -> None:
    """``--overwrite``: drop the old run's files first, so that the folder never mixes two runs (an old
    checkpoint beside a new step log would make a later ``--resume`` continue the wrong one)."""
    for name in run_files(folder):
        (Path(folder) / name).unlink()
    for name in DRAWN_FILES:  # the old run's figure beside a new run that never drew one would show the old run
        (Path(folder) / name).unlink(missing_ok=True)


@contextlib.contextmanager
def claim_output(folder: str | Path | None, inputs: Iterable[str | Path] = (), resume: bool = False,
                 overwrite: bool = False) -> Iterator[None]:
    """Everything a run into ``folder`` needs before it starts, in order: it does not write over its
    inputs, it holds the folder alone, the folder holds no other run (unless resumed or overwritten),
    and what an earlier killed write left behind is cleaned. ``None`` (no output folder) claims nothing."""
    if folder is None:
        yield
        return
    if resume and overwrite:
        raise EdgetuneError("--resume continues the run in --output-dir and --overwrite replaces it: give one")
    folder = Path(folder)
    refuse_input_folder(folder, inputs)
    with output_lock(folder):
        refuse_existing_run(folder, resume, overwrite)
        if overwrite:
            remove_run(folder)
        remove_stale_temporaries(folder)
        yield


@contextlib.contextmanager
def output_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder`` exclusively (creating it); a second holder in another process fails at once."""
    key = Path(folder).resolve()
    if key in _held:  # the CLI claims the folder, then Tuner.fit claims it again
        _held[key][2] += 1
    else:
        _held[key] = [*_acquire(key), 1]
    try:
        yield
    finally:
        _held[key][2] -= 1
        if _held[key][2] == 0:
            fd, created, _ = _held.pop(key)
            _release(key, fd, created)


def _acquire(folder: Path) -> tuple[int | None, bool]:
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgetuneError(f"--output-dir {folder}: cannot create the folder ({exc.strerror})") from None
    if fcntl is None:
        return None, created
    lock = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EdgetuneError(f"--output-dir {folder}: cannot write there ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EdgetuneError(f"--output-dir {folder} is in use by another edgetune run (PID {holder}): wait for "
                                "it to end or choose another folder") from None
        # The holder before us may have removed the file between our open and our lock: then we hold
        # a lock on a deleted file that a third run would not see. Retry on the file now at the path.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, created


def _release(folder: Path, fd: int | None, created: bool) -> None:
    if fd is not None:
        (folder / LOCK_FILE).unlink(missing_ok=True)  # removed while still held: see the retry in _acquire
        os.close(fd)
    if created:
        with contextlib.suppress(OSError):  # a run that failed before writing leaves no empty folder
            folder.rmdir()
