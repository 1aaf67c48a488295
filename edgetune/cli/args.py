"""What every command's parser shares: one-line argparse errors, range-checked numbers, model flags."""

from __future__ import annotations

import argparse
import math

from edgetune.config import THREADS, Bound


class Parser(argparse.ArgumentParser):
    """argparse with its errors as the one ``edgetune: error:`` line every other error gets (not the usage block)."""

    def error(self, message: str) -> None:
        command = self.prog.partition(" ")[2]
        self.exit(2, f"edgetune: error: {command + ': ' if command else ''}{message}\n")


def int_in(bound: Bound):
    """An int flag's parser that refuses values outside ``bound`` as it parses (one argparse error line)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: '{text}'") from None
        if not bound.holds(value):
            raise argparse.ArgumentTypeError(f"must be {bound.describe()}, got {value}")
        return value
    return parse


def finite_float(text: str) -> float:
    """A float flag's value; NaN and infinity are refused here, before numpy could warn about them."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", help="ONNX model with input_ids/attention_mask inputs and a logits output")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: beside the model)")
    parser.add_argument("--task", choices=["classification", "lm"], help="default: from the model")
    parser.add_argument("--max-length", type=int, help="truncate examples to this many tokens (default 128, "
                        "or the model's positions where it has fewer)")
    parser.add_argument("--threads", type=int_in(THREADS), help="ONNX Runtime and kernel threads (default: all cores)")
    parser.add_argument("--verbalizer", help='classify {"text","label"} data with a causal LM by the word it says '
                        'after the prompt: "negative=terrible,positive=great" (default: from the model\'s metadata)')
    parser.add_argument("--template", help='prompt for --verbalizer, with {text} where the text goes (default "{text}")')
