"""JSONL data: reading with validation, tokenisation and deterministic batching."""

from edgetune.data.batching import Batch, BatchStream, TokenizedSet
from edgetune.data.chat import ChatTemplate
from edgetune.data.jsonl import Example, LabelSet, read_examples
from edgetune.data.tokenizer import load_tokenizer
from edgetune.data.verbalizer import Verbalizer

__all__ = ["Batch", "BatchStream", "ChatTemplate", "Example", "LabelSet", "TokenizedSet", "Verbalizer",
           "load_tokenizer", "read_examples"]
