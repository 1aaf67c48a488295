"""Rendering chat conversations with the model's own template, and finding the assistant's text.

The template is the Jinja source that ships with a Hugging Face tokenizer (``chat_template.jinja`` or
``tokenizer_config.json``'s ``chat_template``), rendered with jinja2 set up as transformers sets it up,
so the text edgetune tunes on is the text the model will see when it is used for chat.

Which characters are the assistant's is found by incremental rendering: the conversation up to an
assistant message with the generation prompt, and up to that message's end; the text in between is
what the model must produce (the content and the template's end-of-turn marker).

A template is code from the model's author, so rendering is bounded (:class:`_BoundedEnvironment`):
jinja2's immutable sandbox, no ``{% include %}``/``{% import %}``/``{% extends %}`` (a template must be
self-contained), at most :data:`RENDER_SECONDS` per render (a timer in the main thread), at most
``_BASE_CHARS`` plus 4 characters per character of the conversation in the output, and no operator,
method or filter asked for a value larger than :data:`MAX_SIZE` (``"x" * 10**10``, ``"x".center(10**10)``,
``"%999999999s" % x``, ``10 ** 10**9``). Passing any bound is a one-line :class:`ModelError` naming the file.
"""

from __future__ import annotations

import functools
import json
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgetune.data.tokenizer import CONFIG_FILE, TEMPLATE_FILE, read_tokenizer_config, special_tokens
from edgetune.errors import DataError, ModelError


RENDER_SECONDS = 10.0  # one render of one conversation; real templates take milliseconds
MAX_SIZE = 1 << 24  # the largest string, sequence or repeat count an expression may ask for
MAX_TEMPLATE_CHARS = 1 << 20  # a chat template's source; real ones are a few kB
_BASE_CHARS = 1 << 20  # output allowed beyond 4 characters per character of the conversation
_BIG_WIDTH = re.compile(r"\d{8,}")  # a format width or precision of 10^7 or more
_REFUSED_TAGS = ((jinja2.nodes.Include, "include"), (jinja2.nodes.Import, "import"),
                 (jinja2.nodes.FromImport, "from ... import"), (jinja2.nodes.Extends, "extends"))


class _TooLarge(Exception):
    """A template passed one of the bounds; the message says which."""


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, refusing expressions that would build values beyond MAX_SIZE."""

    intercepted_binops = frozenset(["*", "**", "%"])

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if hasattr(seq, "__len__") and isinstance(count, int) and len(seq) * max(count, 0) > MAX_SIZE:
                    raise _TooLarge(f"repeats a value {count} times")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right * math.log2(abs(left)) > 4096:
                raise _TooLarge(f"computes {left} ** {right}")
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja's signature)
        _check_arguments(args, kwargs)
        target = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if isinstance(target, str) and getattr(__obj, "__name__", "") in ("format", "format_map"):
            _check_format(target)
        return super().call(__context, __obj, *args, **kwargs)


class _BoundedNamespace(jinja2.utils.Namespace):
    """``namespace()``, whose attributes are the one thing a template can grow across loop iterations."""

    def __setitem__(self, name: str, value: Any) -> None:
        if hasattr(value, "__len__") and len(value) > MAX_SIZE:
            raise _TooLarge(f"grows namespace attribute '{name}' past {MAX_SIZE:,} items")
        super().__setitem__(name, value)


def _check_arguments(args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
            raise _TooLarge(f"passes {value} to a method or filter")


def _check_format(text: str) -> None:
    if _BIG_WIDTH.search(text) and ("%" in text or "{" in text):
        raise _TooLarge("formats with a width of 10^7 or more")


def _bounded_filter(function: Callable) -> Callable:
    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        value_at = 1 if getattr(function, "jinja_pass_arg", None) else 0  # after a context/environment
        _check_arguments(args[value_at + 1:], kwargs)  # the filtered value itself may be any number
        if function.__name__ == "do_format" and isinstance(args[value_at], str):
            _check_format(args[value_at])
        return function(*args, **kwargs)

    return bounded


class _Timeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the rendering (pure Python loops included) after ``seconds``, where signals allow it."""
    if (not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread()
            or signal.getitimer(signal.ITIMER_REAL)[0] > 0):  # an embedder's own alarm is left alone
        yield  # the output loop's clock is then the only limit
        return

    def expire(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _read_template(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(4 * MAX_TEMPLATE_CHARS + 1)  # UTF-8 takes at most 4 bytes a character
        return data.decode("utf-8")
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the chat template ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path}: chat template is not valid UTF-8 (byte {exc.start})") from None


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
        env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                  extensions=[_Generation, jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.filters.update({name: _bounded_filter(f) for name, f in env.filters.items()})
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.globals["namespace"] = _BoundedNamespace
        if len(source) > MAX_TEMPLATE_CHARS:
            raise ModelError(f"{origin}: chat template is longer than {MAX_TEMPLATE_CHARS:,} characters, the most "
                             "edgetune compiles (real ones are a few kB)")
        try:
            tree = env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ModelError(f"{origin}:{exc.lineno}: chat template is not valid Jinja ({exc.message})") from None
        except RecursionError:  # thousands of nested blocks
            raise ModelError(f"{origin}: chat template nests too deeply to compile") from None
        for node_type, tag in _REFUSED_TAGS:  # no loader: it would fail at render time, deep in jinja2
            node = next(tree.find_all(node_type), None)
            if node is not None:
                raise ModelError(f"{origin}:{node.lineno}: chat template uses {{% {tag} %}}; edgetune renders "
                                 "self-contained templates only (paste the other template in)")
        self._template = env.from_string(tree)

    @classmethod
    def beside(cls, tokenizer_path: str | Path) -> ChatTemplate | None:
        """The template next to ``tokenizer.json``: ``chat_template.jinja``, else tokenizer_config's."""
        directory = Path(tokenizer_path).parent
        config = read_tokenizer_config(tokenizer_path)
        tokens = special_tokens(config)
        jinja_file = directory / TEMPLATE_FILE
        if jinja_file.is_file():
            return cls(_read_template(jinja_file), str(jinja_file), tokens)
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
            source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"), None)
        if isinstance(source, str) and source.strip():
            return cls(source, str(directory / CONFIG_FILE), tokens)
        return None

    def render(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool, where: str) -> str:
        turns = [{"role": role, "content": content} for role, content in messages]
        limit = _BASE_CHARS + 4 * sum(len(content) for _, content in messages)
        began = time.monotonic()
        try:
            with _time_limit(RENDER_SECONDS):
                return self._render(turns, add_generation_prompt, limit, began)
        except jinja2.TemplateError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{where}: the chat template ({self.origin}) rejects this conversation ({reason})") from None
        except _Timeout:
            raise self._bound(where, f"runs longer than {RENDER_SECONDS:g} s") from None
        except _TooLarge as exc:
            raise self._bound(where, str(exc)) from None
        except (RecursionError, MemoryError):
            raise self._bound(where, "recurses or allocates without end") from None

    def _render(self, turns: list[dict[str, str]], add_generation_prompt: bool, limit: int, began: float) -> str:
        """The template's output, piece by piece, stopped past ``limit`` characters or the time limit."""
        pieces, size = [], 0
        for piece in self._template.generate(messages=turns, add_generation_prompt=add_generation_prompt,
                                             **self.tokens):
            size += len(piece)
            if size > limit:
                raise _TooLarge(f"writes more than {limit:,} characters for this conversation")
            if time.monotonic() - began > RENDER_SECONDS:
                raise _Timeout
            pieces.append(piece)
        return "".join(pieces)

    def _bound(self, where: str, what: str) -> ModelError:
        return ModelError(f"{self.origin}: chat template {what} at {where}; it loops or is not a chat template "
                          "(edgetune bounds rendering)")

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
