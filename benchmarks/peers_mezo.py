"""bench_peers.py's PyTorch MeZO reference child, written as the MeZO paper's code does it.

Per step (Malladi et al. 2023, Algorithm 1 and its trainer): draw a step seed; for each parameter
``torch.manual_seed(seed)`` then regenerate z with ``torch.normal`` and add it in place, for +ε, −2ε
and +ε (restore); the update regenerates z once more and adds −lr·g·z. Four passes of noise
generation over the weights per query, forwards under ``torch.inference_mode()``.

The model is the exported one rebuilt in PyTorch: all-MiniLM-L6-v2's encoder (without the pooler,
which the mean-pooled export drops) and the export's own fresh head (``head.npz``), mean pooling.
Config keys: hf_dir, queries, lr, eps, seed, threads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from peers_common import INPUTS, measure  # noqa: E402

HEAD_FILE = "head.npz"


def perturb(params, seed: int, scale: float) -> None:
    """θ += scale·z in place, z regenerated parameter by parameter from ``seed`` (MeZO's zo_perturb_parameters)."""
    import torch

    torch.manual_seed(seed)
    for p in params:
        p.data.add_(torch.normal(mean=0.0, std=1.0, size=p.shape, dtype=p.dtype), alpha=scale)


def mezo_step(params, loss_fn, seeds: list[int], eps: float, lr: float) -> list[float]:
    """One MeZO step, one query per seed: +ε → L+, −2ε → L−, +ε back, then θ −= (lr/q)·g·z.

    Returns the losses seen (L+ and L− per query). Call it under ``torch.inference_mode()``.
    """
    losses = []
    for seed in seeds:
        perturb(params, seed, eps)
        loss_plus = loss_fn()
        perturb(params, seed, -2 * eps)
        loss_minus = loss_fn()
        perturb(params, seed, eps)
        grad = (loss_plus - loss_minus) / (2 * eps)
        perturb(params, seed, -lr * grad / len(seeds))
        losses += [loss_plus, loss_minus]
    return losses


class MeZOPeer:
    def __init__(self, config: dict, workdir: Path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        import transformers

        torch.set_num_threads(config["threads"])
        torch.set_num_interop_threads(1)
        transformers.logging.set_verbosity_error()
        self.torch = torch
        self.encoder = transformers.BertModel.from_pretrained(config["hf_dir"], add_pooling_layer=False,
                                                              local_files_only=True).eval()
        with np.load(workdir / HEAD_FILE) as head:
            self.classifier = torch.nn.Linear(*head["weight"].shape[::-1])
            self.classifier.weight.data.copy_(torch.from_numpy(head["weight"]))
            self.classifier.bias.data.copy_(torch.from_numpy(head["bias"]))
        self.params = [p for m in (self.encoder, self.classifier) for p in m.parameters()]
        self.rng = np.random.default_rng(config["seed"])
        self.lr, self.eps, self.queries = config["lr"], config["eps"], config["queries"]

    def _forward(self, batch: dict[str, np.ndarray]):
        torch = self.torch
        feeds = {name: torch.from_numpy(batch[name]) for name in INPUTS}
        hidden = self.encoder(**feeds).last_hidden_state
        mask = feeds["attention_mask"].unsqueeze(-1).float()
        return self.classifier((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))

    def _loss(self, batch: dict[str, np.ndarray]) -> float:
        logits = self._forward(batch)
        return float(self.torch.nn.functional.cross_entropy(logits, self.torch.from_numpy(batch["labels"])))

    def step(self, t: int, batch: dict[str, np.ndarray]) -> float:
        seeds = [int(s) for s in self.rng.integers(1_000_000_000, size=self.queries)]  # MeZO: fresh random seeds
        with self.torch.inference_mode():
            losses = mezo_step(self.params, lambda: self._loss(batch), seeds, self.eps, self.lr)
        return float(np.mean(losses))

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        with self.torch.inference_mode():
            return self._forward(batch).numpy()

    def describe(self) -> dict:
        return {"trainable_params": sum(p.numel() for p in self.params), "framework": f"torch {self.torch.__version__}"}


if __name__ == "__main__":
    measure(MeZOPeer)
