"""JSONL data: reading with validation, tokenisation and deterministic batching."""

from edgetune.data.batching import Batch, BatchStream, TokenizedSet
from edgetune.data.jsonl import Example, LabelSet, read_examples
from edgetune.data.tokenizer import load_tokenizer

__all__ = ["Batch", "BatchStream", "Example", "LabelSet", "TokenizedSet", "load_tokenizer", "read_examples"]
