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
    queries: int = 1  # queries per step; the most a step may take under the grow and variance schedules
    query_schedule: str = "fixed"  # fixed | grow | variance (edgetune.zo.queries)
    queries_min: int = 1  # grow: queries at step 0; variance: queries before the spread is tested
    query_threshold: float = 0.5  # variance: query until the relative standard error of mean(g²) is below
    forward_budget: int = 0  # forward passes after which the run ends (after the step that reaches it); 0: none
    parallel: str = "off"  # P-RGE, queries as perturbed copies in one forward: off | on | auto (edgetune.zo.prge)
    schedule: str = "constant"  # lr schedule: constant | linear | cosine
    warmup: int = 0
    weight_decay: float = 0.0
    noise: str = "rademacher"  # rademacher (±1, 5× faster kernel) | gaussian
    seed: int = 0
    eval_every: int = 0  # 0: evaluate only before and after
    save_every: int = 0  # 0: checkpoint only at the end
    eval_batch_size: int = 64
    # DiZO (--optimizer dizo), published defaults: project every κ steps by a ZO search of the per-tensor
    # scale r of θ − θ0 (iterations, probe ±ε, step, clip to 1 ± τ)
    dizo_interval: int = 50
    dizo_iters: int = 10
    dizo_eps: float = 0.1
    dizo_step: float = 2.0
    dizo_tau: float = 0.2
    # zo-momentum / zo-adam / zo-microadam: moments rebuilt from the last `window` steps (edgetune.zo.window)
    window: int = 10
    beta1: float = 0.9
    beta2: float = 0.99
    topk_density: float = 0.01  # zo-microadam: fraction of each step's estimate kept in the window
    # --rotate K: each step perturbs and updates K of the trainable blocks (and everything outside the blocks),
    # the same K for `rotate_every` steps, walked in order (cyclic) or drawn from the seed (random); 0: off
    rotate: int = 0
    rotate_every: int = 1
    rotate_mode: str = "random"  # cyclic | random (edgetune.zo.subset)

    def validate(self) -> None:
        positive = ("steps", "batch_size", "queries", "eval_batch_size", "dizo_interval", "dizo_iters")
        for name in positive:
            if getattr(self, name) < 1:
                raise EdgetuneError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("lr", "eps", "dizo_eps", "dizo_step"):
            if not getattr(self, name) > 0:
                raise EdgetuneError(f"--{name.replace('_', '-')} must be positive")
        if not 0 < self.dizo_tau < 1:
            raise EdgetuneError(f"--dizo-tau must be between 0 and 1, not {self.dizo_tau}")
        if self.window < 1:
            raise EdgetuneError("--window must be at least 1")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise EdgetuneError(f"--{name} must be in [0, 1), not {getattr(self, name)}")
        if not 0 < self.topk_density <= 1:
            raise EdgetuneError(f"--topk-density must be in (0, 1], not {self.topk_density}")
        from edgetune.zo import OPTIMIZERS  # config stays importable without the core
        from edgetune.zo.queries import QUERY_SCHEDULES

        if self.optimizer not in OPTIMIZERS:
            raise EdgetuneError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not '{self.optimizer}'")
        if self.noise not in ("gaussian", "rademacher"):
            raise EdgetuneError(f"--noise must be gaussian or rademacher, not '{self.noise}'")
        if self.query_schedule not in QUERY_SCHEDULES:
            raise EdgetuneError(f"--query-schedule must be one of {', '.join(QUERY_SCHEDULES)}, not '{self.query_schedule}'")
        if not 1 <= self.queries_min <= self.queries:
            raise EdgetuneError(f"--queries-min must be between 1 and --queries ({self.queries})")
        if not self.query_threshold > 0:
            raise EdgetuneError("--query-threshold must be positive")
        if self.forward_budget < 0:
            raise EdgetuneError("--forward-budget must be 0 (none) or positive")
        if self.parallel not in ("off", "on", "auto"):
            raise EdgetuneError(f"--parallel must be off, on or auto, not '{self.parallel}'")
        if self.parallel != "off" and (self.optimizer != "zo-sgd" or self.query_schedule != "fixed"):
            raise EdgetuneError("--parallel on/auto needs --optimizer zo-sgd with --query-schedule fixed")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise EdgetuneError(f"--schedule must be constant, linear or cosine, not '{self.schedule}'")
        self._validate_rotation()

    def _validate_rotation(self) -> None:
        from edgetune.zo.subset import ROTATE_MODES

        if self.rotate < 0:
            raise EdgetuneError(f"--rotate must be 0 (off) or a number of blocks, not {self.rotate}")
        if self.rotate_every < 1:
            raise EdgetuneError(f"--rotate-every must be at least 1, not {self.rotate_every}")
        if self.rotate_mode not in ROTATE_MODES:
            raise EdgetuneError(f"--rotate-mode must be {' or '.join(ROTATE_MODES)}, not '{self.rotate_mode}'")
        if self.rotate and self.optimizer != "zo-sgd":
            raise EdgetuneError(f"--rotate works with --optimizer zo-sgd only, not '{self.optimizer}'")
        if self.rotate and self.parallel != "off":
            raise EdgetuneError("--rotate needs --parallel off (P-RGE perturbs copies of the whole slice)")

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
