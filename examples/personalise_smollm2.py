"""Personalise SmolLM2-135M-Instruct to a house style with forward passes only.

    python examples/personalise_smollm2.py [--steps 300 --trainable lora:r=8,targets=q,v]

The "house style": every answer opens with "Ahoy!" and states the result as "The answer is N."
The training data is a chat file (loss on the assistant turns only) of small arithmetic questions,
generated here; held-out questions show the base model's and the tuned model's greedy replies side by
side, and the completion loss on them before and after. Writes
benchmarks/results/personalise_smollm2.{json,md}. Needs the export extra once (the model is exported
in a child process and cached).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_smollm2_rt import smollm2_model  # noqa: E402
from common import machine, write_results  # noqa: E402

from edgetune import Tuner  # noqa: E402
from edgetune.demo import default_workdir  # noqa: E402
from edgetune.generate import GenerationConfig, Generator  # noqa: E402

OPS = [("+", lambda a, b: a + b, "plus"), ("-", lambda a, b: a - b, "minus"), ("*", lambda a, b: a * b, "times")]


def conversation(rng: random.Random) -> dict:
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    symbol, fn, word = rng.choice(OPS)
    question = rng.choice([f"What is {a} {symbol} {b}?", f"What is {a} {word} {b}?", f"Compute {a} {symbol} {b}."])
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": f"Ahoy! The answer is {fn(a, b)}."}]}


def write_data(folder: Path, n_train: int, n_dev: int) -> tuple[Path, Path]:
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    seen, rows = set(), []
    while len(rows) < n_train + n_dev:
        row = conversation(rng)
        key = row["messages"][0]["content"]
        if key not in seen:
            seen.add(key)
            rows.append(row)
    paths = folder / "train.jsonl", folder / "dev.jsonl"
    for path, part in zip(paths, (rows[:n_train], rows[n_train:])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


def replies(model: Path, questions: list[str], threads: int) -> list[str]:
    generator = Generator(model, threads=threads)
    config = GenerationConfig(max_new_tokens=16)
    return [generator.decode(list(generator.generate(generator.encode(q, chat=True), config))).strip()
            for q in questions]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainable", default="lora:r=8,targets=q,v")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--eps", type=float, default=1e-2)
    # ZO on an LM diverges late at a constant lr (loss 2.76 -> 1.33 at step 180, then 12.3 by step 300
    # at 1.5e-3); a decaying schedule keeps the early progress.
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default="out/personalise")
    args = parser.parse_args(argv)

    model = smollm2_model()
    train, dev = write_data(default_workdir() / "house_style", n_train=200, n_dev=40)
    questions = [json.loads(line)["messages"][0]["content"] for line in dev.read_text().splitlines()[:5]]
    before = replies(model, questions, args.threads)

    tuner = Tuner.from_onnx(model, trainable=args.trainable, max_length=64, threads=args.threads)
    began = time.perf_counter()
    result = tuner.fit(train, eval_data=dev, steps=args.steps, batch_size=args.batch_size, lr=args.lr, eps=args.eps,
                       queries=args.queries, schedule=args.schedule, eval_every=max(args.steps // 5, 1), output_dir=args.output_dir)
    seconds = time.perf_counter() - began
    tuned = tuner.save(args.output_dir)
    after = replies(tuned, questions, args.threads)

    curve = [{"step": 0, **result.before}] + result.history
    rows = [[p["step"], f"{p['loss']:.3f}", "", ""] for p in curve]
    rows += [["reply", f"`{q}`", f"`{b}`", f"`{a}`"] for q, b, a in zip(questions, before, after)]
    payload = {"machine": machine(), "config": vars(args), "trainable_params": tuner.trainable_params,
               "seconds": seconds, "curve": curve, "replies": [{"question": q, "base": b, "tuned": a}
                                                               for q, b, a in zip(questions, before, after)]}
    write_results("personalise_smollm2", payload, ["step", "dev completion loss / question", "base reply",
                                                   "tuned reply"], rows)
    print(f"completion loss {result.before['loss']:.3f} -> {result.after['loss']:.3f} in {args.steps} steps, "
          f"{seconds:.0f} s, {tuner.trainable_params:,} trainable")


if __name__ == "__main__":
    main()
