"""The ``edgetune`` command: one module per subcommand, each with ``add_parser(commands)`` and ``run(args)``.

:func:`main` turns every error into one line and an exit code: 2 for a user's error (:class:`EdgetuneError`),
130/143 for an interrupted run, 3 out of memory, 70 for a bug (``EDGETUNE_DEBUG=1`` shows its traceback).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from types import ModuleType

from edgetune import __version__
from edgetune.cli.args import Parser
from edgetune.errors import EdgetuneError
from edgetune.process.interrupt import Interrupted

# In the order `edgetune --help` lists them.
COMMANDS = ("tune", "eval", "report", "apply", "replay", "export", "generate", "plan", "cache", "demo", "bundle")


def command(name: str) -> ModuleType:
    return importlib.import_module(f"edgetune.cli.{name}")


def build_parser() -> Parser:
    parser = Parser(prog="edgetune", description="Forward-only fine-tuning in ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"edgetune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        command(name).add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from edgetune.process.malloc import pin_mmap_threshold

    pin_mmap_threshold()  # the job's peak must not depend on the order glibc saw blocks freed in
    args = build_parser().parse_args(argv)
    # the library's warnings (e.g. an adapter format it could not write) as one plain line each
    logging.basicConfig(format="edgetune: warning: %(message)s", level=logging.WARNING, stream=sys.stderr)
    try:
        return command(args.command).run(args)
    except EdgetuneError as exc:
        print(f"edgetune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:  # a run stopped between steps: the message says what it saved
        print(f"edgetune: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # outside a run's steps: claim nothing about what was saved
        print("edgetune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`edgetune plan --json | head`), as with `cat`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush stays quiet
        return 128 + signal.SIGPIPE
    except MemoryError:
        print("edgetune: error: out of memory; lower --batch-size or --max-length", file=sys.stderr)
        return 3
    except Exception as exc:  # a bug: still one line unless asked for the traceback
        if os.environ.get("EDGETUNE_DEBUG"):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else ""
        print(f"edgetune: internal error: {type(exc).__name__}: {reason} (EDGETUNE_DEBUG=1 shows a traceback)",
              file=sys.stderr)
        return 70
