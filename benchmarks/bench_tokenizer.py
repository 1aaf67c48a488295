"""The C++ tokenizer (csrc/runtime/tokenizer) against Hugging Face ``tokenizers`` on the Rotten Tomatoes snippets:
texts per CPU-second, all-MiniLM-L6-v2 (WordPiece) and SmolLM2 (byte-level BPE), special tokens added.

CPU time, not wall-clock, so that a loaded machine compares fairly: the C++ side is ``tokenize_dump --repeat``
(one thread, ``std::clock``), the Python side ``Tokenizer.encode`` in a loop (one call per text, as a caller
without batching pays) and ``encode_batch`` (Rust's thread pool; its CPU time summed over threads). The ids
themselves are compared by tests/test_tokenizer_native.py, which builds and exports with the helpers here.

    python benchmarks/bench_tokenizer.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "runtime" / "tokenizer"


def build_tokenize_dump(build: Path) -> Path:
    """Configure and build csrc/runtime/tokenizer on its own (Release, 2 jobs); the driver's path."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError("cmake not found on PATH")
    for cmd in ([cmake, "-S", SOURCE, "-B", build, "-DCMAKE_BUILD_TYPE=Release"], [cmake, "--build", build, "-j", "2"]):
        proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}")
    return build / "tokenize_dump"


def export_smollm2_tokenizer(path: Path) -> Path:
    """SmolLM2's tokenizer.json as `edgetune export smollm2` writes it: transformers reads the GGUF (~10 s)."""
    import transformers

    from edgetune.data.resources import smollm2_gguf

    gguf = smollm2_gguf()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    tokenizer.backend_tokenizer.save(str(path))
    return path


def cpp_rate(exe: Path, tokenizer: Path, texts: list[str], repeats: int) -> float:
    stdin = "".join(json.dumps(t) + "\n" for t in texts)
    proc = subprocess.run([str(exe), str(tokenizer), "--repeat", str(repeats)], input=stdin, capture_output=True,
                          text=True, check=True)
    return float(proc.stderr.split("texts_per_second=")[1].split()[0])


def hf_rates(tokenizer_path: Path, texts: list[str], repeats: int) -> tuple[float, float]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    start = time.process_time()
    for _ in range(repeats):
        for text in texts:
            tokenizer.encode(text)
    loop = len(texts) * repeats / (time.process_time() - start)
    start = time.process_time()
    for _ in range(repeats):
        tokenizer.encode_batch(texts)
    return loop, len(texts) * repeats / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from edgetune.data.datasets import load_rotten_tomatoes
    from edgetune.data.resources import minilm_dir

    texts = [r["text"] for r in load_rotten_tomatoes()]
    rows, payload = [], {"machine": machine(), "texts": len(texts), "repeats": args.repeats, "texts_per_cpu_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_tokenize_dump(Path(tmp) / "build")
        tokenizers = {"all-MiniLM-L6-v2 (WordPiece)": minilm_dir() / "tokenizer.json",
                      "SmolLM2 (byte-level BPE)": export_smollm2_tokenizer(Path(tmp) / "smollm2.json")}
        for name, path in tokenizers.items():
            cpp = cpp_rate(exe, path, texts, args.repeats)
            loop, batch = hf_rates(path, texts, args.repeats)
            payload["texts_per_cpu_s"][name] = {"cpp": cpp, "hf_encode": loop, "hf_encode_batch": batch}
            rows.append([name, f"{cpp:,.0f}", f"{loop:,.0f}", f"{batch:,.0f}", f"{cpp / loop:.2f}x"])
    write_results("tokenizer", payload, ["tokenizer", "C++ (texts/CPU-s)", "HF encode", "HF encode_batch",
                                         "C++ / HF encode"], rows)


if __name__ == "__main__":
    main()
