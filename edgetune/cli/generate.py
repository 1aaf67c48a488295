"""``edgetune generate``: text from a causal LM, exported or tuned."""

from __future__ import annotations

import argparse
import sys

from edgetune.cli.args import finite_float, int_in
from edgetune.config import SEED, THREADS, Bound


def add_parser(commands) -> None:
    generate = commands.add_parser("generate", help="generate text with a causal LM (exported or tuned)")
    generate.add_argument("--onnx", required=True, help="model.onnx of an export or a tuning run")
    generate.add_argument("--tokenizer", help="tokenizer.json (default: beside the model)")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")
    generate.add_argument("--max-new-tokens", type=int_in(Bound(1)), default=64)
    generate.add_argument("--temperature", type=finite_float, default=0.0, help="0 = greedy (default)")
    generate.add_argument("--top-p", type=finite_float, default=1.0, help="nucleus sampling mass (default 1.0)")
    generate.add_argument("--seed", type=int_in(SEED), default=0)
    generate.add_argument("--no-past", dest="use_past", action="store_const", const=False,
                          help="rerun the whole sequence per token even if a KV-cache graph is there")
    generate.add_argument("--threads", type=int_in(THREADS))


def run(args: argparse.Namespace) -> int:
    from edgetune.generate import GenerationConfig, Generator, run_generation

    config = GenerationConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    config.validate()  # before the model loads
    generator = Generator(args.onnx, args.tokenizer, args.threads, use_past=args.use_past)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    stats = run_generation(generator, args.prompt, args.chat, config, write)
    print()
    print(f"{stats['new_tokens']} new tokens after {stats['prompt_tokens']} prompt tokens in {stats['seconds']:.2f} s "
          f"({stats['tokens_per_second']:.1f} tokens/s, {'KV cache' if generator.uses_past else 'recompute'}: "
          f"{generator.path.name})", file=sys.stderr)
    return 0
