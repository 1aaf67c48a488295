"""Personalise SmolLM2-135M-Instruct to a house style with forward passes only.

    python examples/personalise_smollm2.py [--steps 250 --lr 0.3 --trainable lora:r=4,targets=o,down,layers=22-29,fa]

The "house style": every answer opens with "Ahoy!" and states the result as "The answer is N."
The training data is a chat file (loss on the assistant turns only) of small arithmetic questions,
generated here; held-out questions (none of them in the training file) show the base model's and the
tuned model's greedy replies side by side, how many of them follow the house style, and the completion
loss before and after. Writes benchmarks/results/personalise_smollm2.{json,md}. Needs the export extra
once (the model is exported in a child process and cached).

Why this recipe: the noise of a ZO step grows with the curvature of the loss along the random
direction z, so the usable lr is about 2 / zᵀHz. Measured on a training batch here, zᵀHz is -150
for LoRA r=8 on q,v of all 30 layers (A and B both tuned from B = 0 sit on a saddle; a constant lr
1.5e-3 there diverged late), 25-60 for LoRA r=2 on o,down of layers 22-29, and 1.8 for LoRA-FA
there (A frozen: the loss is linear in the tuned B). So LoRA-FA on the output projections of the last
blocks takes lr 0.3, 200x the q,v recipe's, and the 22 frozen blocks before it run once per step.
"""

from __future__ import annotations

import argparse
import json
import random
import re
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
HOUSE_GREETING = "Ahoy!"
HOUSE_ANSWER = re.compile(r"^Ahoy! The answer is -?\d+\.$")
HELD_OUT_SHOWN = 20


def conversation(rng: random.Random) -> dict:
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    symbol, fn, word = rng.choice(OPS)
    question = rng.choice([f"What is {a} {symbol} {b}?", f"What is {a} {word} {b}?", f"Compute {a} {symbol} {b}."])
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": f"{HOUSE_GREETING} The answer is {fn(a, b)}."}]}


def write_data(folder: Path, n_train: int, n_dev: int) -> tuple[Path, Path]:
    """Train and held-out chats with distinct questions, the same for every run (seeded)."""
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


def house_style_shares(texts: list[str]) -> dict[str, float]:
    """Share of replies that open with the greeting, and that are exactly the house answer form."""
    return {"greeting": sum(text.startswith(HOUSE_GREETING) for text in texts) / len(texts),
            "answer_form": sum(bool(HOUSE_ANSWER.match(text)) for text in texts) / len(texts)}


def table_rows(payload: dict) -> list[list]:
    """The Markdown table of a run: the loss curve, the house-style shares, the replies side by side."""
    def cell(text: str) -> str:
        return "`" + text.replace("\n", "↵") + "`"  # a raw newline would end the table row

    rows = [[p["step"], f"{p['loss']:.3f}", "", ""] for p in payload["curve"]]
    share, shown = payload["house_style_share"], f"{len(payload['replies'])} held-out questions"
    rows.append([f"opens with \"{HOUSE_GREETING}\"", shown, f"{share['base']['greeting']:.0%}",
                 f"{share['tuned']['greeting']:.0%}"])
    rows.append(["exactly \"Ahoy! The answer is N.\"", shown, f"{share['base']['answer_form']:.0%}",
                 f"{share['tuned']['answer_form']:.0%}"])
    rows += [["reply", cell(r["question"]), cell(r["base"]), cell(r["tuned"])] for r in payload["replies"]]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainable", default="lora:r=4,targets=o,down,layers=22-29,fa")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--eps", type=float, default=1e-2)
    parser.add_argument("--schedule", default="constant")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default="out/personalise")
    args = parser.parse_args(argv)

    model = smollm2_model()
    train, dev = write_data(default_workdir() / "house_style", n_train=200, n_dev=40)
    questions = [json.loads(line)["messages"][0]["content"] for line in dev.read_text().splitlines()[:HELD_OUT_SHOWN]]
    before = replies(model, questions, args.threads)

    tuner = Tuner.from_onnx(model, trainable=args.trainable, max_length=64, threads=args.threads)
    began = time.perf_counter()
    result = tuner.fit(train, eval_data=dev, steps=args.steps, batch_size=args.batch_size, lr=args.lr, eps=args.eps,
                       queries=args.queries, schedule=args.schedule, eval_every=max(args.steps // 5, 1),
                       output_dir=args.output_dir)
    seconds = time.perf_counter() - began
    tuned = tuner.save(args.output_dir)
    after = replies(tuned, questions, args.threads)
    share = {"base": house_style_shares(before), "tuned": house_style_shares(after)}

    payload = {"machine": machine(), "config": vars(args), "trainable_params": tuner.trainable_params,
               "seconds": seconds, "curve": [{"step": 0, **result.before}] + result.history,
               "house_style_share": share,
               "replies": [{"question": q, "base": b, "tuned": a} for q, b, a in zip(questions, before, after)]}
    write_results("personalise_smollm2", payload, ["step", "dev completion loss / question", "base reply",
                                                   "tuned reply"], table_rows(payload))
    for question, base, mine in zip(questions, before, after):
        print(f"{question:24} base: {base!r}\n{'':24} tuned: {mine!r}")
    print(f"completion loss {result.before['loss']:.3f} -> {result.after['loss']:.3f} in {args.steps} steps, "
          f"{seconds:.0f} s, {tuner.trainable_params:,} trainable; held-out replies opening with "
          f"{HOUSE_GREETING!r} {share['base']['greeting']:.0%} -> {share['tuned']['greeting']:.0%}, in the exact "
          f"answer form {share['base']['answer_form']:.0%} -> {share['tuned']['answer_form']:.0%}")


if __name__ == "__main__":
    main()
