"""Rendering chat conversations with the model's own template, and finding the assistant's text.

The template is the Jinja source that ships with a Hugging Face tokenizer (``chat_template.jinja`` or
``tokenizer_config.json``'s ``chat_template``), rendered with jinja2 set up as transformers sets it up,
so the text edgetune tunes on is the text the model will see when it is used for chat.

Which characters are the assistant's is found by incremental rendering: the conversation up to an
assistant message with the generation prompt, and up to that message's end; the text in between is
what the model must produce (the content and the template's end-of-turn marker).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgetune.data.tokenizer import CONFIG_FILE, TEMPLATE_FILE, read_tokenizer_config, special_tokens
from edgetune.errors import DataError, ModelError


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask tag) renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # transformers replaces jinja's tojson, which escapes HTML characters, with plain json.dumps
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template and the special tokens (``bos_token``, ``eos_token``) it may refer to."""

    def __init__(self, source: str, origin: str, tokens: dict[str, str] | None = None):
        self.origin = origin
        self.tokens = dict(tokens or {})
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[_Generation, jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ModelError(f"{origin}:{exc.lineno}: chat template is not valid Jinja ({exc.message})") from None

    @classmethod
    def beside(cls, tokenizer_path: str | Path) -> ChatTemplate | None:
        """The template next to ``tokenizer.json``: ``chat_template.jinja``, else tokenizer_config's."""
        directory = Path(tokenizer_path).parent
        config = read_tokenizer_config(tokenizer_path)
        tokens = special_tokens(config)
        jinja_file = directory / TEMPLATE_FILE
        if jinja_file.is_file():
            return cls(jinja_file.read_text(encoding="utf-8"), str(jinja_file), tokens)
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
            source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"), None)
        if isinstance(source, str) and source.strip():
            return cls(source, str(directory / CONFIG_FILE), tokens)
        return None

    def render(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool, where: str) -> str:
        turns = [{"role": role, "content": content} for role, content in messages]
        try:
            return self._template.render(messages=turns, add_generation_prompt=add_generation_prompt, **self.tokens)
        except jinja2.TemplateError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{where}: the chat template ({self.origin}) rejects this conversation ({reason})") from None

    def render_with_spans(self, messages: Sequence[tuple[str, str]], where: str) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the [start, end) character spans of its assistant turns."""
        full = self.render(messages, False, where)
        spans = []
        for k, (role, _) in enumerate(messages):
            if role != "assistant":
                continue
            before = self.render(messages[:k], True, where)
            upto = self.render(messages[: k + 1], False, where)
            if not (upto.startswith(before) and full.startswith(upto)):
                raise DataError(
                    f"{where}: the chat template ({self.origin}) does not render messages[{k}] as a continuation of "
                    "the turns before it, so the assistant's tokens cannot be told apart"
                )
            if len(upto) > len(before):
                spans.append((len(before), len(upto)))
        return full, spans
