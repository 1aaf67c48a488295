"""Run configuration: one dataclass whose fields are the CLI flags and the YAML keys."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from edgetune.errors import EdgetuneError

DEFAULT_TRAINABLE = "last:1"


@dataclass
class TrainConfig:
    """How to tune. Every field is also a ``tune`` flag (``--batch-size``) and a YAML key (``batch_size``)."""

    steps: int = 1000
    optimizer: str = "zo-sgd"  # see edgetune.zo.OPTIMIZERS
    batch_size: int = 16
    lr: float = 1e-3
    eps: float = 1e-3
    queries: int = 1
    schedule: str = "constant"  # lr schedule: constant | linear | cosine
    warmup: int = 0
    weight_decay: float = 0.0
    noise: str = "rademacher"  # rademacher (±1, 5× faster kernel) | gaussian
    seed: int = 0
    eval_every: int = 0  # 0: evaluate only before and after
    save_every: int = 0  # 0: checkpoint only at the end
    eval_batch_size: int = 64

    def validate(self) -> None:
        positive = ("steps", "batch_size", "queries", "eval_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise EdgetuneError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("lr", "eps"):
            if not getattr(self, name) > 0:
                raise EdgetuneError(f"--{name} must be positive")
        from edgetune.zo import OPTIMIZERS  # config stays importable without the core

        if self.optimizer not in OPTIMIZERS:
            raise EdgetuneError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not '{self.optimizer}'")
        if self.noise not in ("gaussian", "rademacher"):
            raise EdgetuneError(f"--noise must be gaussian or rademacher, not '{self.noise}'")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise EdgetuneError(f"--schedule must be constant, linear or cosine, not '{self.schedule}'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def field_names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """Keys of a ``--config`` file, with dashes or underscores, as flag destinations."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise EdgetuneError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise EdgetuneError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise EdgetuneError(f"{path}: expected a mapping of option names to values")
    return {str(key).replace("-", "_"): value for key, value in data.items()}
