"""Sizes a user writes (``--budget``, ``EDGETUNE_CACHE_MAX``), in the MB that ``free -m`` shows."""

from __future__ import annotations

import re

from edgetune.errors import EdgetuneError

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(k|m|g|t)?(i?b)?\s*$", re.IGNORECASE)


def parse_size_mb(text: str, what: str) -> float:
    """``1.5GB``, ``800MB``, ``800M``, ``2GiB`` or a plain number of MB -> MB (binary: 1 GB = 1024 MB).
    ``what`` names the flag or variable the text came from in errors."""
    match = _SIZE_RE.match(text)
    if not match:
        raise EdgetuneError(f"{what} '{text}': give a size such as 800MB or 1.5GB")
    value = float(match.group(1))
    unit = (match.group(2) or "m").lower()
    mb = value * {"k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0**2}[unit]
    if mb <= 0:
        raise EdgetuneError(f"{what} '{text}' must be positive")
    return mb
