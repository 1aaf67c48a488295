"""Append-only JSONL logs of a run (steps, evaluations) that stay consistent with checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class JsonlLog:
    """Records keyed by ``step``; opening for a resumed run drops records at or after ``start``."""

    def __init__(self, path: str | Path | None, start: int = 0):
        self.path = Path(path) if path else None
        self._handle = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if start > 0 and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) < start:
                        kept.append(line)
                except json.JSONDecodeError:
                    break  # a torn last line from a kill: drop it and what follows
        self._handle = open(self.path, "w", encoding="utf-8")
        self._handle.writelines(line + "\n" for line in kept)

    def append(self, record: dict[str, Any]) -> None:
        if self._handle:
            self._handle.write(json.dumps(record) + "\n")

    def sync(self) -> None:
        if self._handle:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle:
            self._handle.close()
            self._handle = None
