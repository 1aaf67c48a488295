"""Loading a Hugging Face ``tokenizer.json`` and checking it against the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from edgetune.errors import ModelError

CONFIG_FILE = "tokenizer_config.json"  # special tokens, chat template (Hugging Face's layout)
TEMPLATE_FILE = "chat_template.jinja"  # the chat template on its own, preferred over the config's
# The files beside tokenizer.json that, with it, decide how a record becomes token ids.
SIDECARS = (CONFIG_FILE, TEMPLATE_FILE)

_PAD_CANDIDATES = ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>", "</s>")


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: tokenizer not found (put tokenizer.json beside the model or pass --tokenizer)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exceptions with multi-line text
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: not a valid tokenizer.json ({reason})") from None
    # edgetune pads and truncates itself, per batch.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def pad_id(tokenizer: Tokenizer) -> int:
    """A token id for padding positions; attention_mask hides them, so any in-vocabulary id works."""
    for token in _PAD_CANDIDATES:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0


def check_vocabulary(tokenizer: Tokenizer, tokenizer_path: Path, embedding_rows: int | None, model_path: Path) -> None:
    """Reject a tokenizer that can emit ids the model's embedding table does not have."""
    if embedding_rows is None:
        return
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > embedding_rows:
        raise ModelError(
            f"{tokenizer_path}: tokenizer has {vocab} tokens but {model_path} embeds only {embedding_rows}; "
            "this tokenizer does not belong to the model"
        )


def read_tokenizer_config(tokenizer_path: str | Path) -> dict[str, Any]:
    """``tokenizer_config.json`` beside ``tokenizer.json`` (special tokens, chat template); {} if absent."""
    path = Path(tokenizer_path).parent / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise ModelError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return config


def special_tokens(config: dict[str, Any]) -> dict[str, str]:
    """``bos_token``, ``eos_token``, ... as strings; transformers saves each as a string or an AddedToken dict."""
    tokens = {}
    for key, value in config.items():
        if not key.endswith("_token"):
            continue
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    return tokens
