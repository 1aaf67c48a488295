"""The ``.etlog`` trajectory format: a whole tuning run as its log of steps.

A ZO step is fully described by its seeds, projected gradients, lr, ε and weight decay, so the run's
log rebuilds the tuned weights from the base model (``edgetune replay``) and is kilobytes where the
model is megabytes. Layout (little-endian)::

    b"ETLOG"  u32 version  u32 header_bytes  header (UTF-8 JSON)  record × header["records"]  sha256

    record:   u32 step  u16 q  u16 extra_bytes  f32 lr  f32 ε  f32 weight_decay  f32 loss  u32 head_bytes
              q × (u64 seed, f32 g)  extra (JSON of the StepRecord fields beyond these; empty if none)
              head (head_bytes of float32: the exact head's values after this step, or none)

Version 2 added ``head_bytes`` and the head segment (``--head exact``: the head's first-order update is a
function of the features, not of seeds, so replay sets the head from the floats themselves; they are written
on the last record each time the log is written and on rollback records, see edgetune.zo.exact_head).
Version 1 logs (no ``head_bytes``) still read; an edgetune that knows only version 1 refuses a version 2
log in one line.

In memory a run's log is its encoded bytes (~30 bytes a step without queries), not StepRecord objects: a
head step from the activation cache takes ~0.5 ms, and a run's peak RSS must not grow with its length.

The header names the base model (its sha256), the ``--trainable`` spec, the arena layout, the
config fields that define the trajectory (optimizer, noise, seed, ...) and the model metadata
``save`` writes. The trailing sha256 covers every byte before it, so a truncated or altered log is
refused rather than replayed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.artifacts import framed
from edgetune.errors import EdgetuneError
from edgetune.artifacts.finite import loads_finite, require_finite_numbers
from edgetune.zo import StepRecord

MAGIC = b"ETLOG"
VERSION = 2
READABLE = (1, 2)  # the versions this edgetune reads: 1 has no head segment
FILE_NAME = "run.etlog"
_RECORD = struct.Struct("<IHHffffI")  # step, q, extra length, lr, ε, weight decay, loss, head length
_RECORD_V1 = struct.Struct("<IHHffff")  # version 1: no head segment
_QUERY = struct.Struct("<Qf")  # seed, g
_WHAT = "trajectory log"
_CORE_FIELDS = ("step", "seeds", "grads", "lr", "eps", "weight_decay", "noise", "loss", "head_values")
# The widths of a record's u32 step, u16 q and u16 extra length: a run beyond them cannot be logged.
MAX_STEPS = 2**32
MAX_QUERIES = 2**16 - 1
MAX_EXTRA_BYTES = 2**16 - 1
_LONGEST_FLOAT = -2.2250738585072014e-308  # a float64 with the longest JSON spelling (24 characters)


def record_size(queries: int, extra: int = 0) -> int:
    """Bytes of one step record with ``queries`` queries and ``extra`` extension bytes (no head segment)."""
    return _RECORD.size + queries * _QUERY.size + extra


class Trajectory:
    """A header and the step records of a run, in step order from step 0."""

    def __init__(self, header: dict[str, Any], records: Iterable[StepRecord] = ()):
        self.header = header
        self.count = 0
        self._body = bytearray()  # the records, encoded
        self._last: StepRecord | None = None
        self._last_start = 0  # where the last record's bytes begin in _body
        self._decoded: list[StepRecord] | None = None  # records' cache until the next append
        for record in records:
            self.append(record)

    def append(self, record: StepRecord) -> None:
        if record.step != self.count:
            raise ValueError(f"step {record.step} follows {self.count} recorded steps")
        if record.noise != self.noise:
            raise ValueError(f"step {record.step} uses {record.noise} noise, the run {self.noise}")
        self._last, self._last_start = record, len(self._body)
        self._body += _encode(record)
        self.count += 1
        self._decoded = None

    @property
    def records(self) -> list[StepRecord]:
        """The steps, decoded (a resume and replay read them; kept until the next append)."""
        if self._decoded is None:
            self._decoded = _decode_all(bytes(self._body), self.count, self.noise, Path("(in memory)"), VERSION)
        return self._decoded

    @property
    def last_loss(self) -> float:
        return self._last.loss if self._last is not None else 0.0

    def set_head(self, values: bytes) -> None:
        """The exact head's values after the last step, written on its record (replay sets them there)."""
        if self._last is None:
            return
        self._last.head_values = values
        del self._body[self._last_start:]
        self._body += _encode(self._last)
        self._decoded = None

    @property
    def noise(self) -> str:
        return self.header["config"]["noise"]

    def continued(self, path: str | Path, start: int) -> Trajectory:
        """This run resumed at ``start``: its header with the first ``start`` steps of the log at ``path``."""
        earlier = Trajectory.read(path).records
        if len(earlier) < start:
            raise EdgetuneError(f"{path}: cannot resume, the trajectory log holds {len(earlier)} steps "
                                f"and the checkpoint is at step {start}")
        return Trajectory(self.header, earlier[:start])

    def to_bytes(self) -> bytes:
        return framed.pack(MAGIC, VERSION, {**self.header, "records": self.count}, [self._body])

    def write(self, path: str | Path) -> None:
        framed.write(path, _WHAT, MAGIC, VERSION, {**self.header, "records": self.count}, [memoryview(self._body)])

    @classmethod
    def read(cls, path: str | Path) -> Trajectory:
        """Parse ``path``; every way it can be unusable is a one-line :class:`EdgetuneError`."""
        header, body, version = framed.read_versioned(path, MAGIC, READABLE, _WHAT)
        try:
            count = int(header.pop("records"))
            noise = header["config"]["noise"]
        except (ValueError, KeyError, TypeError):
            raise EdgetuneError(f"{path}: corrupt {_WHAT} header") from None
        return cls(header, _decode_all(body, count, noise, Path(path), version))


def check_room(config, tensor_names: list[str]) -> None:
    """Refuse, before the first forward, a run whose largest step record this format cannot hold: the
    extension a DiZO projection (a slope per iteration, a scale per tensor) or a rotated step adds."""
    q = config.queries
    worst = StepRecord(step=0, seeds=[0] * q, grads=[0.0] * q, lr=0.0, eps=0.0, weight_decay=0.0, noise=config.noise,
                       loss=0.0, divisor=q - 1 if q > 1 else None, blocks=[99999] * config.rotate or None,
                       projection={"slopes": [_LONGEST_FLOAT] * config.dizo_iters,
                                   "scales": dict.fromkeys(tensor_names, _LONGEST_FLOAT)}
                       if config.optimizer == "dizo" else None,
                       curvature=[_LONGEST_FLOAT] * q if config.optimizer == "hizoo" else None)
    size = len(_extra_bytes(worst))
    if size > MAX_EXTRA_BYTES and config.optimizer == "hizoo":
        raise EdgetuneError(f"--optimizer hizoo with --queries {q}: a step's curvatures need up to {size} bytes of the "
                            f"trajectory log's {MAX_EXTRA_BYTES}-byte record extension; lower --queries")
    if size > MAX_EXTRA_BYTES:
        raise EdgetuneError(f"--optimizer dizo with --dizo-iters {config.dizo_iters} on {len(tensor_names)} tensors: "
                            f"a projection step needs up to {size} bytes of the trajectory log's {MAX_EXTRA_BYTES}-byte "
                            "record extension; lower --dizo-iters or tune fewer tensors")


def _extra_bytes(record: StepRecord) -> bytes:
    extra = {k: v for k, v in record.to_json().items() if k not in _CORE_FIELDS}
    return json.dumps(extra, separators=(",", ":"), sort_keys=True).encode("utf-8") if extra else b""


def _encode(record: StepRecord) -> bytes:
    extra_bytes = _extra_bytes(record)
    q, head = len(record.seeds), record.head_values or b""
    fixed = _RECORD.pack(record.step, q, len(extra_bytes), record.lr, record.eps, record.weight_decay, record.loss,
                         len(head))
    queries = b"".join(_QUERY.pack(seed, g) for seed, g in zip(record.seeds, record.grads))
    return fixed + queries + extra_bytes + head


def _decode_all(body: bytes, count: int, noise: str, path: Path, version: int) -> list[StepRecord]:
    known = {f.name for f in fields(StepRecord)} - set(_CORE_FIELDS)
    fixed = _RECORD if version >= 2 else _RECORD_V1
    records, offset = [], 0
    for _ in range(count):
        if offset + fixed.size > len(body):
            raise EdgetuneError(f"{path}: trajectory log is truncated after {len(records)} of {count} steps")
        step, q, extra_len, lr, eps, wd, loss, *rest = fixed.unpack_from(body, offset)
        head_len = rest[0] if rest else 0
        offset += fixed.size
        end = offset + q * _QUERY.size + extra_len
        if end > len(body):
            raise EdgetuneError(f"{path}: trajectory log is truncated after {len(records)} of {count} steps")
        pairs = [_QUERY.unpack_from(body, offset + i * _QUERY.size) for i in range(q)]
        offset += q * _QUERY.size
        try:
            extra = loads_finite(body[offset:end]) if extra_len else {}
        except ValueError as exc:
            raise EdgetuneError(f"{path}: step {step} has unreadable fields ({exc})") from None
        offset = end
        head, offset = body[offset:offset + head_len], offset + head_len
        if len(head) != head_len or head_len % 4:
            raise EdgetuneError(f"{path}: trajectory log is truncated after {len(records)} of {count} steps")
        if not np.isfinite(np.frombuffer(head, np.float32)).all():  # NaN values would write a model of NaNs
            raise EdgetuneError(f"{path}: step {step}: the head's values are not finite")
        unknown = set(extra) - known if isinstance(extra, dict) else {"(not a JSON object)"}
        if unknown:
            raise EdgetuneError(f"{path}: step {step} has fields this edgetune does not know ({', '.join(sorted(unknown))})")
        # replaying a NaN or infinite lr, ε, decay or projected gradient would write a model of NaNs
        require_finite_numbers([("lr", lr), ("eps", eps), ("weight_decay", wd), ("loss", loss)]
                               + [(f"the projected gradient of query {i}", g) for i, (_, g) in enumerate(pairs)],
                               f"{path}: step {step}")
        records.append(StepRecord(step=step, seeds=[s for s, _ in pairs], grads=[g for _, g in pairs], lr=lr, eps=eps,
                                  weight_decay=wd, noise=noise, loss=loss, head_values=head or None, **extra))
    if offset != len(body):
        raise EdgetuneError(f"{path}: trajectory log has {len(body) - offset} bytes after its {count} steps")
    return records
