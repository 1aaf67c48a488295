"""The bad-input corpus's one assertion: a user's mistake gets one line, a non-zero exit, and changes nothing.

Every ``tests/test_bad_*.py`` case runs the real ``edgetune`` in a fresh interpreter (``conftest.run_cli``),
then checks with :func:`assert_rejected` that
- the exit code is the one the error's class promises (2 for a bad input, never 70, the internal-error code),
- stderr holds exactly one non-empty line, ``edgetune: error: ...``, naming what is at fault, and no traceback,
- no file outside the output folder was created, changed or removed (:class:`Snapshot`).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

INTERNAL_ERROR = 70


def assert_rejected(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    """``proc`` refused its input as a user error with exit ``code``; return the error line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}: {proc.stderr}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    line = lines[0]
    assert line.startswith("edgetune: error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


class Snapshot:
    """Every file under some folders, by content: ``changed()`` lists what was added, altered or removed."""

    def __init__(self, *roots: str | Path, ignore: tuple[str | Path, ...] = ()):
        self.roots = [Path(r) for r in roots]
        self.ignore = [Path(i).resolve() for i in ignore]
        self.before = self._take()

    def _take(self) -> dict[Path, str]:
        files = {}
        for root in self.roots:
            for path in sorted(root.rglob("*")):
                resolved = path.resolve()
                if path.is_file() and not any(resolved.is_relative_to(i) for i in self.ignore):
                    files[resolved] = hashlib.sha256(path.read_bytes()).hexdigest()
        return files

    def changed(self) -> list[str]:
        after = self._take()
        return sorted(str(p) for p in set(self.before) | set(after) if self.before.get(p) != after.get(p))

    def assert_unchanged(self) -> None:
        changed = self.changed()
        assert not changed, f"files changed outside the output folder: {changed}"
