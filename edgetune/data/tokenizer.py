"""Loading a Hugging Face ``tokenizer.json`` and checking it against the model."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from edgetune.errors import ModelError

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
