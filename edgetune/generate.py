"""Text generation from an exported or tuned causal LM, with ONNX Runtime, numpy and tokenizers only.

Two ways to run the model, chosen per folder:

* **KV cache**: ``model_with_past.onnx`` beside ``model.onnx`` and linked to its weights (the export
  writes it; ``Tuner.save`` carries it over to the tuned model). The prompt runs once, then each new
  token costs one single-token forward.
* **Recompute**: otherwise the no-past ``model.onnx`` (the graph edgetune tunes) runs on the whole
  sequence for every new token. Same tokens, slower as the text grows.

Greedy decoding when ``temperature == 0``; otherwise temperature + nucleus (top-p) sampling from a
``numpy`` Generator seeded with ``seed``, so the same seed gives the same text.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgetune.data.tokenizer import check_vocabulary, load_tokenizer, read_tokenizer_config, special_tokens
from edgetune.errors import EdgetuneError, ModelError
from edgetune.graph.relink import WITH_PAST, linked_to
from edgetune.graph.model import check_model_file

__all__ = ["GenerationConfig", "GenerationError", "Generator", "empty_past"]

EOS_KEY = "edgetune.eos_token"
_PAST_PREFIX, _PRESENT_PREFIX = "past_key_values.", "present."
_ORT_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class GenerationError(EdgetuneError):
    """Bad generation settings, or a prompt the model cannot take."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise GenerationError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise GenerationError(f"--temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise GenerationError(f"--top-p must be in (0, 1], got {self.top_p}")


def empty_past(session: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    """Zero-length ``past_key_values.*`` feeds: a with-past graph's input for a fresh sequence."""
    feeds = {}
    for node in session.get_inputs():
        if node.name.startswith(_PAST_PREFIX):
            dims = [batch if i == 0 else (d if isinstance(d, int) else 0) for i, d in enumerate(node.shape)]
            feeds[node.name] = np.zeros(dims, _ORT_FLOAT.get(node.type, np.float32))
    return feeds


class Generator:
    """A causal LM ready to generate: the session (with or without KV cache), tokenizer and stop tokens."""

    def __init__(self, onnx_path: str | Path, tokenizer: str | Path | None = None, threads: int | None = None,
                 use_past: bool | None = None):
        """``use_past``: None picks the KV-cache graph when one is linked to ``onnx_path``'s weights;
        True requires it; False always recomputes with ``onnx_path``."""
        onnx_path = Path(onnx_path)
        check_model_file(onnx_path)
        self.tokenizer_path = Path(tokenizer) if tokenizer else onnx_path.parent / "tokenizer.json"
        self.tokenizer = load_tokenizer(self.tokenizer_path)
        past_path = onnx_path.with_name(WITH_PAST)
        linked = use_past is not False and linked_to(past_path, onnx_path)
        if use_past and not linked:
            raise ModelError(f"{past_path}: no KV-cache graph linked to the weights of {onnx_path} "
                             "(re-export, or generate without the KV cache)")
        self.path = past_path if linked else onnx_path
        self.uses_past = linked
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises plain exceptions with multi-line text
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            what = "not a valid ONNX model" if "INVALID_PROTOBUF" in reason else "ONNX Runtime cannot load it"
            raise ModelError(f"{self.path}: {what} ({reason})") from None
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        if "logits" not in self.outputs or "input_ids" not in self.inputs:
            raise ModelError(f"{self.path}: not a language model (needs input 'input_ids' and output 'logits')")
        self._check_causal_lm()
        self.stop_ids = self._stop_ids()

    def _check_causal_lm(self) -> None:
        """Refuse a classifier, and a tokenizer with ids past the vocabulary, before the first token."""
        shape = next(o.shape for o in self.session.get_outputs() if o.name == "logits")
        if len(shape) != 3:  # [batch, classes]: a classifier's head says no next token
            raise ModelError(f"{self.path}: 'logits' have rank {len(shape)}, not [batch, sequence, vocabulary]; "
                             "generate needs a causal language model, not a classifier")
        vocab = shape[-1] if isinstance(shape[-1], int) else None  # the rows its head scores
        check_vocabulary(self.tokenizer, self.tokenizer_path, vocab, self.path)

    def _stop_ids(self) -> set[int]:
        """Ids that end a reply: the model's ``edgetune.eos_token`` and tokenizer_config's ``eos_token``."""
        meta = self.session.get_modelmeta().custom_metadata_map
        names = {meta.get(EOS_KEY), special_tokens(read_tokenizer_config(self.tokenizer_path)).get("eos_token")}
        ids = {self.tokenizer.token_to_id(n) for n in names if n}
        return {i for i in ids if i is not None}

    # -- text <-> ids ---------------------------------------------------------------------------

    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        """Token ids of ``prompt``; ``chat`` wraps it as one user message in the model's chat template.

        A plain prompt gets the tokenizer's special tokens (as edgetune's ``{"text"}`` training records
        do); a rendered chat already holds them.
        """
        if chat:
            from edgetune.data.chat import ChatTemplate

            template = ChatTemplate.beside(self.tokenizer_path)
            if template is None:
                raise GenerationError(f"{self.tokenizer_path.parent}: --chat needs the model's chat template "
                                      "(chat_template.jinja or tokenizer_config.json beside tokenizer.json)")
            text = template.render([("user", prompt)], add_generation_prompt=True, where="--prompt")
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        else:
            ids = self.tokenizer.encode(prompt).ids
        if not ids:
            raise GenerationError("--prompt is empty after tokenisation")
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- decoding -------------------------------------------------------------------------------

    def generate(self, ids: list[int], config: GenerationConfig) -> Iterator[int]:
        """Yield up to ``config.max_new_tokens`` new token ids after ``ids``; stops before a stop token."""
        config.validate()
        rng = np.random.default_rng(config.seed)
        step = self._with_past(ids) if self.uses_past else self._recompute(ids)
        logits = next(step)
        for _ in range(config.max_new_tokens):
            token = choose(logits, config.temperature, config.top_p, rng)
            if token in self.stop_ids:
                return
            yield token
            logits = step.send(token)

    def _feeds(self, ids: np.ndarray, start: int, total: int) -> dict[str, np.ndarray]:
        feeds = {"input_ids": ids[None, :]}
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = np.ones((1, total), np.int64)
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.arange(start, start + len(ids), dtype=np.int64)[None, :]
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros((1, len(ids)), np.int64)
        return feeds

    def _recompute(self, ids: list[int]):
        """Coroutine: send a token, get the next-token logits of the whole sequence run again."""
        sequence = list(ids)
        while True:
            array = np.asarray(sequence, np.int64)
            logits = self.session.run(["logits"], self._feeds(array, 0, len(array)))[0]
            sequence.append((yield logits[0, -1]))

    def _with_past(self, ids: list[int]):
        """Coroutine: the prompt once, then one token per run, carrying ``present.*`` as ``past_key_values.*``."""
        past = empty_past(self.session, 1)
        new, done = np.asarray(ids, np.int64), 0
        while True:
            outputs = self.session.run(self.outputs, {**self._feeds(new, done, done + len(new)), **past})
            named = dict(zip(self.outputs, outputs))
            past = {_PAST_PREFIX + k[len(_PRESENT_PREFIX):]: v for k, v in named.items() if k.startswith(_PRESENT_PREFIX)}
            done += len(new)
            new = np.asarray([(yield named["logits"][0, -1])], np.int64)


def choose(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy (``temperature == 0``) or temperature + nucleus sampling: the smallest set of most
    likely tokens whose probability reaches ``top_p``, renormalised."""
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    order = np.argsort(-probs, kind="stable")  # stable: ties broken by id, so sampling is reproducible
    sorted_probs = probs[order] / probs.sum()
    keep = int(np.searchsorted(np.cumsum(sorted_probs), top_p)) + 1  # first index reaching top_p, inclusive
    kept = sorted_probs[:keep]
    cumulative = np.cumsum(kept / kept.sum())
    return int(order[min(int(np.searchsorted(cumulative, rng.random(), side="right")), keep - 1)])


def run_generation(generator: Generator, prompt: str, chat: bool, config: GenerationConfig,
                   write=print) -> dict[str, float]:
    """Generate from ``prompt``, writing the text as it grows; returns token count and speed."""
    config.validate()
    ids = generator.encode(prompt, chat)
    began = time.perf_counter()
    produced: list[int] = []
    shown = ""
    for token in generator.generate(ids, config):
        produced.append(token)
        text = generator.decode(produced)
        # A byte-level token may hold half a character (decoded as U+FFFD): print it once it is whole.
        if text.startswith(shown) and not text.endswith("\ufffd"):
            write(text[len(shown):])
            shown = text
    seconds = time.perf_counter() - began
    text = generator.decode(produced)
    if text != shown and text.startswith(shown):
        write(text[len(shown):])
    return {"prompt_tokens": len(ids), "new_tokens": len(produced), "seconds": seconds,
            "tokens_per_second": len(produced) / seconds if seconds > 0 else 0.0}
