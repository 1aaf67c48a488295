"""Classification through a causal LM: each label is a word the LM should say after a prompt.

As in MeZO and DiZO, ``{"text", "label"}`` becomes the prompt ``template`` with ``{text}`` filled in,
followed by the label's word. Tuning minimises the LM's cross-entropy of that word's token (the
ordinary causal-LM loss with every other position masked); evaluation takes, at the last prompt
position, the argmax of the logits over the verbaliser's tokens only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from tokenizers import Tokenizer

from edgetune.errors import DataError, ModelError

VERBALIZER_KEY = "edgetune.verbalizer"
TEMPLATE_KEY = "edgetune.template"
DEFAULT_TEMPLATE = "{text}"
TEXT_SLOT = "{text}"


@dataclass(frozen=True)
class Verbalizer:
    """Labels in order (class i is ``words[i]``), their words, the prompt template and the word token ids."""

    labels: tuple[str, ...]
    words: tuple[str, ...]
    template: str
    token_ids: tuple[int, ...]

    @classmethod
    def create(cls, spec: str | Mapping[str, str], template: str | None, tokenizer: Tokenizer) -> Verbalizer:
        """``spec`` is ``"negative=terrible,positive=great"`` or a mapping; each word must be one token."""
        pairs = _parse(spec)
        template = DEFAULT_TEMPLATE if template is None else template
        if TEXT_SLOT not in template:
            raise DataError(f"--template must contain {TEXT_SLOT}, got {json.dumps(template)}")
        ids = []
        for _, word in pairs:
            encoding = tokenizer.encode(" " + word, add_special_tokens=False)
            if len(encoding.ids) != 1:
                pieces = ", ".join(json.dumps(t, ensure_ascii=False) for t in encoding.tokens) or "none"
                raise DataError(
                    f'verbaliser word "{word}" is {len(encoding.ids)} tokens with a leading space ({pieces}); '
                    "pick a word that is one token"
                )
            if encoding.tokens[0] == getattr(tokenizer.model, "unk_token", None):
                raise DataError(f'verbaliser word "{word}" is not in the tokenizer\'s vocabulary (it encodes as '
                                f'{json.dumps(encoding.tokens[0])})')
            ids.append(encoding.ids[0])
        if len(set(ids)) != len(ids):
            raise DataError(f"verbaliser words {[w for _, w in pairs]} do not map to distinct tokens")
        return cls(tuple(label for label, _ in pairs), tuple(word for _, word in pairs), template, tuple(ids))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], tokenizer: Tokenizer, where: str) -> Verbalizer | None:
        """The verbaliser a tuned model was tuned with (``edgetune.verbalizer``/``edgetune.template``)."""
        if VERBALIZER_KEY not in metadata:
            return None
        try:
            spec = json.loads(metadata[VERBALIZER_KEY])
        except ValueError:
            raise ModelError(f"{where}: metadata '{VERBALIZER_KEY}' is not JSON") from None
        return cls.create(spec, metadata.get(TEMPLATE_KEY), tokenizer)

    def metadata(self) -> dict[str, str]:
        return {VERBALIZER_KEY: json.dumps(dict(zip(self.labels, self.words))), TEMPLATE_KEY: self.template}

    def prompt(self, text: str) -> str:
        # str.replace, not str.format: templates may contain other braces
        return self.template.replace(TEXT_SLOT, text)

    def describe(self) -> str:
        return ",".join(f"{label}={word}" for label, word in zip(self.labels, self.words))


def _parse(spec: str | Mapping[str, str]) -> list[tuple[str, str]]:
    if isinstance(spec, Mapping):
        pairs = [(str(k).strip(), str(v).strip()) for k, v in spec.items()]
    elif isinstance(spec, str):
        pairs = []
        for item in spec.split(","):
            label, sep, word = item.partition("=")
            if not sep:
                raise DataError(f'--verbalizer expects label=word pairs separated by commas, got "{spec}"')
            pairs.append((label.strip(), word.strip()))
    else:
        raise DataError(f"--verbalizer expects label=word pairs, got {json.dumps(spec)}")
    for label, word in pairs:
        if not label or not word:
            raise DataError(f'--verbalizer has an empty label or word in "{label}={word}"')
        if any(c.isspace() for c in word):
            raise DataError(f'verbaliser word "{word}" contains a space; a word must be one token')
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise DataError(f"--verbalizer names a label twice ({', '.join(labels)})")
    if len(pairs) < 2:
        raise DataError("--verbalizer needs at least two labels")
    return pairs
