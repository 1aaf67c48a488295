"""The container edgetune's own file formats share (``.etlog``, ``.etdiff``)::

    magic  u32 version  u32 header_bytes  header (UTF-8 JSON)  payload  sha256 of every byte before it

The trailing digest makes a truncated or altered file an error instead of a silently wrong model;
every way a file can be unusable is a one-line :class:`EdgetuneError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Union

Buffer = Union[bytes, bytearray, memoryview]

from edgetune.errors import EdgetuneError
from edgetune.artifacts.finite import loads_finite
from edgetune.artifacts.io import atomic_writer

_DIGEST_SIZE = 32


def _preamble(magic: bytes) -> struct.Struct:
    return struct.Struct(f"<{len(magic)}sII")  # magic, version, header length


def _pieces(magic: bytes, version: int, header: dict[str, Any], payload: list[Buffer]) -> list[Buffer]:
    text = json.dumps(header, sort_keys=True).encode("utf-8")
    return [_preamble(magic).pack(magic, version, len(text)), text, *payload]


def pack(magic: bytes, version: int, header: dict[str, Any], payload: list[Buffer]) -> bytes:
    data = b"".join(_pieces(magic, version, header, payload))
    return data + hashlib.sha256(data).digest()


def write(path: str | Path, what: str, magic: bytes, version: int, header: dict[str, Any],
          payload: list[Buffer]) -> None:
    """Atomically (temporary file, fsync, rename): an interrupted write keeps the previous file. The pieces are
    written and hashed one by one, never joined: a long run's log is written at every checkpoint, and a joined
    copy (and one with the digest) would each add its size to the run's peak RSS."""
    digest = hashlib.sha256()
    try:
        with atomic_writer(path) as handle:
            for piece in _pieces(magic, version, header, payload):
                digest.update(piece)
                handle.write(piece)
            handle.write(digest.digest())
    except OSError as exc:
        raise EdgetuneError(f"{path}: could not write the {what} ({exc.strerror})") from None


def read(path: str | Path, magic: bytes, version: int, what: str) -> tuple[dict[str, Any], bytes]:
    """The header and the payload of ``path``, checked against magic, version and digest."""
    header, payload, _ = read_versioned(path, magic, (version,), what)
    return header, payload


def read_versioned(path: str | Path, magic: bytes, versions: tuple[int, ...],
                   what: str) -> tuple[dict[str, Any], bytes, int]:
    """The header, the payload and the version (one of ``versions``) of ``path``, checked as :func:`read`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise EdgetuneError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    preamble = _preamble(magic)
    if len(data) < preamble.size + _DIGEST_SIZE or not data.startswith(magic):
        raise EdgetuneError(f"{path}: not an edgetune {what} (no {magic.decode()} magic)")
    _, found, header_len = preamble.unpack_from(data)
    if found not in versions:
        newer = "; a newer edgetune wrote it" if found > max(versions) else ""
        raise EdgetuneError(f"{path}: {what} version {found} is not supported "
                            f"(expected {' or '.join(map(str, versions))}){newer}")
    data, digest = data[:-_DIGEST_SIZE], data[-_DIGEST_SIZE:]
    if hashlib.sha256(data).digest() != digest:
        raise EdgetuneError(f"{path}: {what} is truncated or corrupt (it does not match its checksum)")
    start = preamble.size + header_len
    try:
        header = loads_finite(data[preamble.size:start].decode("utf-8"))  # a NaN lr or δ scale is corrupt too
    except (ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise EdgetuneError(f"{path}: corrupt {what} header")
    return header, data[start:], found
