"""From validated records to token ids and per-token labels (``IGNORE_INDEX`` where there is no loss).

Which tokens carry the loss is decided on character offsets into the one string that is encoded,
so the ids that train are exactly the ids of the whole text (no re-tokenisation at a prompt
boundary). A token that holds any character of a completion or assistant turn is a target.

Truncation to ``max_length`` keeps the start, as for ``{"text"}`` records. An example whose targets
are all cut off would contribute nothing but a constant to the loss; it is left out with a warning
that names its line. (HF TRL truncates the same way and keeps such examples silently: with its
token-averaged loss they add no tokens, so leaving them out trains on what TRL trains on.)
Verbaliser prompts are the exception: they keep their end, where the template's cue and the label
word are, as MeZO does.

Memory is bounded whatever the records hold: before tokenising, a record (a text, a prompt with its
completion, each chat turn and the rendered chat, a verbaliser prompt) is cut to
``max_length × CHARS_PER_TOKEN`` characters, from the end a truncation keeps, and records are
tokenised a chunk at a time (a truncating tokenizer keeps the overflow, so one 50 MB record at
``--max-length 32`` once reached 5 GB). The cut leaves the first ``max_length`` tokens as they were
unless those tokens average more than 64 characters each; real text averages about 4 (English) and
a vocabulary's longest entries are tens of characters. Only text made of what a pre-tokenizer drops
(long runs of whitespace) or WordPiece's one [UNK] per word longer than 100 characters can differ.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Encoding, Tokenizer

from edgetune.data.chat import ChatTemplate
from edgetune.data.jsonl import FORMAT_MESSAGES, FORMAT_PROMPT, Example, LabelSet
from edgetune.data.verbalizer import Verbalizer
from edgetune.errors import DataError

IGNORE_INDEX = -100  # label value that the causal-LM loss skips, as in PyTorch and HF
CHARS_PER_TOKEN = 64  # characters kept per token of max_length before tokenising (see above)
_CHUNK = 256  # records per encode_batch call: the truncated encodings of one chunk live at a time
_LOG = logging.getLogger(__name__)


@dataclass
class Encoded:
    """Token ids, token type ids and per-token labels of the examples kept, with their "file:line"."""

    ids: list[np.ndarray] = field(default_factory=list)
    type_ids: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)  # verbaliser mode: the class of each example

    def add(self, encoding_ids, type_ids, labels, where: str) -> None:
        self.ids.append(np.asarray(encoding_ids, dtype=np.int64))
        self.type_ids.append(np.asarray(type_ids, dtype=np.int64))
        self.labels.append(np.asarray(labels, dtype=np.int64))
        self.where.append(where)


def encode_classification(examples: Sequence[Example], tokenizer: Tokenizer, max_length: int,
                          labels: LabelSet) -> Encoded:
    """Text with the tokenizer's special tokens, truncated at the end; the class index per example."""
    budget = char_budget(max_length)
    out = Encoded()
    for ex, enc in zip(examples, _encode(tokenizer, [ex.text[:budget] for ex in examples], max_length)):
        out.add(enc.ids, enc.type_ids, (), ex.where)
        out.classes.append(labels.index(ex))
    return out


def encode_lm(examples: Sequence[Example], tokenizer: Tokenizer, max_length: int,
              chat: ChatTemplate | None = None, eos_token: str | None = None) -> Encoded:
    """Language-model examples of one format; ``eos_token`` ends each completion (as TRL does)."""
    kind = examples[0].format
    budget = char_budget(max_length)
    if kind == FORMAT_MESSAGES:
        if chat is None:
            raise DataError(
                f"{examples[0].where}: \"messages\" need the model's chat template; none beside the tokenizer "
                "(chat_template.jinja, or \"chat_template\" in tokenizer_config.json)"
            )
        # a turn longer than the budget is cut at it: its start already fills max_length tokens
        rendered = [chat.render_with_spans(tuple((role, text[:budget]) for role, text in ex.messages), ex.where)
                    for ex in examples]
        texts = [text for text, _ in rendered]
        spans = [s for _, s in rendered]
        add_special = False  # the template writes the special tokens itself
    elif kind == FORMAT_PROMPT:
        ends = [c if not eos_token or c.endswith(eos_token) else c + eos_token for c in (ex.completion for ex in examples)]
        texts = [ex.prompt + c for ex, c in zip(examples, ends)]
        spans = [[(len(ex.prompt), len(text))] for ex, text in zip(examples, texts)]
        add_special = True  # as {"text"} records: the tokenizer's BOS/CLS and end markers
    else:
        texts = [ex.text for ex in examples]
        spans = None
        add_special = True

    # spans past the cut select no token: a target cut off here was beyond max_length tokens anyway
    encodings = _encode(tokenizer, [text[:budget] for text in texts], max_length, add_special_tokens=add_special)

    out, empty = Encoded(), []
    for k, (ex, enc) in enumerate(zip(examples, encodings)):
        if spans is None:
            labels = enc.ids
        else:
            labels = _span_labels(enc, spans[k], tail_is_target=kind == FORMAT_PROMPT)
            if all(label == IGNORE_INDEX for label in labels):
                empty.append(ex.where)
                continue
        out.add(enc.ids, enc.type_ids, labels, ex.where)
    if empty:
        noun = "completion" if kind == FORMAT_PROMPT else "assistant turns"
        if not out.ids:
            raise DataError(f"{empty[0]}: {noun} entirely beyond --max-length {max_length}, as in every example; "
                            "nothing to train on")
        shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        _LOG.warning("warning: %s: %s entirely beyond --max-length %d; %d example(s) skipped",
                     shown, noun, max_length, len(empty))
    return out


def char_budget(max_length: int) -> int:
    """Characters of a record that can hold its first ``max_length`` tokens (see the module docstring)."""
    return max(1, max_length) * CHARS_PER_TOKEN


def _encode(tokenizer: Tokenizer, texts: Sequence[str], max_length: int | None, **options) -> Iterator[Encoding]:
    """``tokenizer.encode_batch`` a chunk at a time, truncated to ``max_length`` tokens (None: not)."""
    for start in range(0, len(texts), _CHUNK):
        if max_length is not None:
            tokenizer.enable_truncation(max_length)
        try:
            encodings = tokenizer.encode_batch(list(texts[start:start + _CHUNK]), **options)
        finally:
            tokenizer.no_truncation()
        yield from encodings


def _span_labels(enc: Encoding, spans: list[tuple[int, int]], tail_is_target: bool) -> list[int]:
    """Ids of tokens overlapping ``spans`` (character ranges), IGNORE_INDEX elsewhere.

    With ``tail_is_target`` every token after the first target is one too: the end-of-sequence
    marker that a tokenizer's post-processor appends (zero-width offsets) belongs to the completion.
    """
    labels = [IGNORE_INDEX] * len(enc.ids)
    started = False
    for i, (token_id, (start, end)) in enumerate(zip(enc.ids, enc.offsets)):
        inside = any(start < b and end > a for a, b in spans)
        started = started or inside
        if inside or (tail_is_target and started):
            labels[i] = token_id
    return labels


def encode_verbalized(examples: Sequence[Example], tokenizer: Tokenizer, max_length: int,
                      verbalizer: Verbalizer, labels: LabelSet) -> Encoded:
    """``template(text)`` then the label word's token; the word is the only target."""
    if max_length < 2:
        raise DataError("--max-length must be at least 2 with a verbaliser (a prompt token and the word)")
    classes = [labels.index(ex) for ex in examples]
    budget = char_budget(max_length)
    # the prompt's end is kept: the text's, then (a long template) the filled-in prompt's
    prompts = [verbalizer.prompt(ex.text[-budget:])[-budget:] for ex in examples]
    encodings = _encode(tokenizer, [p + " " + verbalizer.words[c] for p, c in zip(prompts, classes)], None)
    out = Encoded()
    for ex, prompt, cls, enc in zip(examples, prompts, classes, encodings):
        word_id = verbalizer.token_ids[cls]
        at = next((i for i, (_, end) in enumerate(enc.offsets) if end > len(prompt)), None)
        if at is None or enc.ids[at] != word_id or at == 0:
            raise DataError(
                f'{ex.where}: " {verbalizer.words[cls]}" is not one token after this prompt; '
                "end --template without a trailing space"
            )
        # Tokens after the word cannot change the logits before it (causal attention): cut them.
        start = max(0, at + 1 - max_length)
        target = [IGNORE_INDEX] * at + [word_id]
        out.add(enc.ids[start: at + 1], enc.type_ids[start: at + 1], target[start:], ex.where)
        out.classes.append(cls)
    return out
