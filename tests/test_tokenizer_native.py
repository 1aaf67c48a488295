"""The C++ tokenizer (csrc/runtime/tokenizer/) gives Hugging Face ``tokenizers``' ids.

Built once with CMake into a temp dir (with benchmarks/bench_tokenizer.py's helpers; it measures speed);
``tokenize_dump`` encodes every text in every mode in one process run per tokenizer, and the ids are compared with ``tokenizers`` (edgetune's own ``_encode`` where edgetune
truncates). Texts: the Rotten Tomatoes snippets and the debate statements (real text, some longer than
max_length), a hand list of hard cases, seeded random strings, and every code point (space-separated for
the per-character tables, next to a letter, a digit and a dot for the byte-level regex classes; in one
mode only, the others add no coverage of the tables).
Tokenizers: all-MiniLM-L6-v2's (WordPiece), SmolLM2's (byte-level BPE, from its GGUF as `edgetune export`
converts it), and variants that reach what those two never do (other BertNormalizer options, lstrip/rstrip
and normalized added tokens, byte fallback, unk fusing, ignore_merges, legacy merges, a Sequence
post-processor).
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer

from edgetune.data.datasets import load_presidential_debates, load_rotten_tomatoes
from edgetune.data.encode import _encode, char_budget
from edgetune.data.resources import minilm_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_tokenizer import build_tokenize_dump, export_smollm2_tokenizer  # noqa: E402

MODES = ("special", "plain", "record:128", "max:1", "max:8", "ends")  # ends: each token's end offset

HARD = [
    "", " ", "   ", "\t\n\r", "\u3000", "\u00a0hello\u00a0", "a\u200bb", "\x00\x01\x7f", "\ufffd", "\u0085x",
    "Héllo Wörld Ça va? naïve café résumé", "ÅÄÖ åäö ØÆ", "İstanbul ß ẞ Σίσυφος ΣΑΣ", "ǅ ǈ ǋ ﬁ ﬂ Ⅻ ①",
    "x\u0301\u0323 q\u0323\u0301 \u1e0b\u0323 \u0301abc \u0345 \u0f73 \U0001d165\U0001d16d \u302e\u302f",
    "Zalgo: Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇", "日本語のテキスト", "中文分词测试", "한국어 텍스트", "𠀀𪜀 𫝀 \uf900",
    "ｆｕｌｌｗｉｄｔｈ", "Mixed中文English", "😀😃 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🤩 🫨", "I ❤ NY",
    "don't won't I'm we'll they've she'd you're 'S 'LL ''s", "¡Hola! ¿Qué? «quote» “smart” — dash … ellipsis",
    "C++ & C# | a/b \\ ~`@#$%^*()_+-=[]{};:'\",.<>?", "1,234.56 3.14159 2024-12-05 007 ½ ²³ ١٢٣ ४२",
    "a  b   c    d", "  leading", "trailing   ", "tabs\t\tand\nnewlines\n\n", "word \n word", "a \u00a0 b",
    " \u2028 \u2029 ", "مرحبا بالعالم שלום", "ภาษาไทย", "नमस्ते दुनिया", "\ue000\U000f0000",
    "\u0378 \U00050000 \U0001fae8", "\U0010ffff", "\ufeff BOM",
    "a" * 99, "a" * 100, "a" * 101, "supercalifragilistic" * 10, "x" * 9000, "🙂" * 150, "é" * 120,
    "[CLS] hello [SEP] world [MASK] [PAD] [UNK]", "[cls] lower [sep]", "[SEP][SEP]x[SEP]",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant", "<|endoftext|><|endoftext|>", "<|im_start|",
    "x<|im_end|>y", "  <lx>  x <rx>   y", "<lx><lx>  <rx><rx>", "I said HELLO WORLD.", "héllo world<sp><SP>",
    "x<unk>y <s> <unk><unk>",
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    """Short strings mixing ASCII, accents, marks, CJK, emoji and any code point at all."""
    rng = random.Random(seed)
    pools = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x4E00, 0x4E80), (0x1F300, 0x1F64F), (0, 0x10FFFF)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 40)):
            cp = rng.randint(*rng.choice(pools))
            chars.append(chr(cp) if not 0xD800 <= cp < 0xE000 else " ")
        out.append("".join(chars))
    return out


def sweep_texts() -> list[str]:
    """Code points alone between spaces (the per-character tables) and after a letter, a digit and a dot
    (the regex classes): every one of planes 0-3 and 14 (where anything is assigned), every 97th elsewhere."""
    dense = [*range(0x32400), *range(0xE0000, 0xE1000)]
    cps = sorted({*dense, *range(0, 0x110000, 97)} - set(range(0xD800, 0xE000)))
    chars = [chr(cp) for cp in cps]
    out = []
    for i in range(0, len(chars), 256):
        chunk = chars[i:i + 256]
        out.append(" ".join(chunk))
        out.append("".join(f"a{c}1{c}.{c} " for c in chunk))
    return out


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    texts = [r["text"] for r in load_rotten_tomatoes()] + [r["text"] for r in load_presidential_debates()]
    return texts + HARD + random_texts(2000)


@pytest.fixture(scope="module")
def tokenize_dump(tmp_path_factory) -> Path:
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found on PATH")
    return build_tokenize_dump(tmp_path_factory.mktemp("tokenizer-build"))


def run_dump(exe: Path, tokenizer: Path, texts: list[str], modes=MODES) -> subprocess.CompletedProcess:
    args = [str(exe), str(tokenizer)] + [a for m in modes for a in ("--mode", m)]
    stdin = "".join(json.dumps(t) + "\n" for t in texts)
    return subprocess.run(args, input=stdin, capture_output=True, text=True, encoding="utf-8")


def hf_ids(tokenizer: Tokenizer, texts: list[str], mode: str) -> list[list[int]]:
    if mode == "ends":  # where each token of encode(text) ends, in characters: encode.py's spans read them
        return [[end for _, end in e.offsets] for e in tokenizer.encode_batch(texts)]
    if mode in ("special", "plain"):
        return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=mode == "special")]
    kind, n = mode.split(":")
    if kind == "record":  # what encode_classification and {"text"} records feed the model
        texts = [t[:char_budget(int(n))] for t in texts]
    return [e.ids for e in _encode(tokenizer, texts, int(n))]


def assert_parity(exe: Path, path: Path, texts: list[str], modes=MODES) -> None:
    proc = run_dump(exe, path, texts, modes)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")[:-1]
    assert len(lines) == len(modes) * len(texts)
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    for k, mode in enumerate(modes):
        expected = hf_ids(tokenizer, texts, mode)
        got = lines[k * len(texts):(k + 1) * len(texts)]
        bad = [i for i, (e, g) in enumerate(zip(expected, got)) if " ".join(map(str, e)) != g]
        assert not bad, (f"{path.name} {mode}: {len(bad)} of {len(texts)} texts differ; first "
                         f"{texts[bad[0]][:80]!r}: HF {expected[bad[0]][:20]} C++ {got[bad[0]][:120]}")


@pytest.fixture(scope="module")
def minilm_json() -> Path:
    return minilm_dir() / "tokenizer.json"


@pytest.fixture(scope="module")
def smollm2_json(tmp_path_factory) -> Path:
    pytest.importorskip("transformers", reason="export extra not installed: pip install 'edgetune[export]'")
    pytest.importorskip("gguf", reason="reading GGUF needs: pip install gguf")
    return export_smollm2_tokenizer(tmp_path_factory.mktemp("smollm2") / "tokenizer.json")


def test_minilm_wordpiece_matches_hugging_face(tokenize_dump, minilm_json, corpus):
    assert_parity(tokenize_dump, minilm_json, corpus)


def test_smollm2_bytelevel_bpe_matches_hugging_face(tokenize_dump, smollm2_json, corpus):
    assert_parity(tokenize_dump, smollm2_json, corpus)


@pytest.mark.parametrize("family", ["minilm", "smollm2"])
def test_every_code_point_matches_hugging_face(tokenize_dump, request, family):
    """The generated Unicode tables, code point by code point, through both families' pipelines."""
    assert_parity(tokenize_dump, request.getfixturevalue(f"{family}_json"), sweep_texts(), modes=("plain",))


def test_added_token_options_match_hugging_face(tokenize_dump, minilm_json, tmp_path):
    """lstrip/rstrip tokens, a normalized (lower-cased) token and an extra special token in the text."""
    tokenizer = Tokenizer.from_file(str(minilm_json))
    tokenizer.add_tokens([AddedToken("<lx>", lstrip=True), AddedToken("<rx>", rstrip=True),
                          AddedToken("Hello World", normalized=True)])
    tokenizer.add_special_tokens([AddedToken("<sp>", special=True)])
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    assert_parity(tokenize_dump, path, HARD + random_texts(300, seed=1))


@pytest.mark.parametrize("options", [{"lowercase": False, "strip_accents": None},
                                     {"lowercase": False, "strip_accents": True},
                                     {"lowercase": True, "strip_accents": False},
                                     {"clean_text": False, "handle_chinese_chars": False}],
                         ids=["cased", "cased-strip", "uncased-keep-accents", "no-clean-no-cjk"])
def test_bert_normalizer_options_match_hugging_face(tokenize_dump, minilm_json, tmp_path, options):
    doc = json.loads(minilm_json.read_text(encoding="utf-8"))
    doc["normalizer"].update(options)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert_parity(tokenize_dump, path, HARD + random_texts(300, seed=3))


def _tiny_bpe(**model) -> dict:
    """A byte-level BPE over printable ASCII with a few merges, some byte tokens and an unk."""
    chars = [chr(c) for c in range(0x21, 0x7F)] + ["Ġ"]
    vocab = {"<unk>": 0, "<s>": 1}
    for token in chars + ["<0xC3>", "<0x83>", "<0xC2>", "<0xF0>", "<0x9F>"]:
        vocab.setdefault(token, len(vocab))
    merges = [["Ġ", "t"], ["h", "e"], ["Ġt", "he"], ["i", "n"], ["Ġ", "a"], ["e", "r"], ["Ġ", "s"], ["o", "n"]]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": 0, "content": "<unk>", "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True}],
            "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                                                  "trim_offsets": True, "use_regex": True},
            "post_processor": None, "decoder": None,
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": merges, **model}}


@pytest.mark.parametrize("variant", ["fallback-fused", "no-regex", "unfused-ignore-merges-legacy"])
def test_bpe_options_match_hugging_face(tokenize_dump, tmp_path, variant):
    """byte_fallback with missing byte tokens, unk fusing, no regex split, ignore_merges, "a b" merges,
    prefix space, a BOS from a Sequence post-processor."""
    if variant == "fallback-fused":
        doc = _tiny_bpe(byte_fallback=True, fuse_unk=True)
    elif variant == "no-regex":
        doc = _tiny_bpe(byte_fallback=True)
        doc["pre_tokenizer"]["use_regex"] = False
    else:
        doc = _tiny_bpe(ignore_merges=True)
        doc["model"]["merges"] = [" ".join(m) for m in doc["model"]["merges"]]
        doc["pre_tokenizer"]["add_prefix_space"] = True
        doc["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                       {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}]}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert_parity(tokenize_dump, path, HARD + random_texts(300, seed=2))


def _edit(doc: dict, **changes) -> dict:
    return {**doc, **changes}


REFUSED = {
    "wordlevel": (lambda m, s: _edit(m, model={"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}),
                  "model type 'WordLevel' is not supported"),
    "unigram": (lambda m, s: _edit(m, model={"type": "Unigram", "vocab": [["a", 0.0]], "unk_id": 0}),
                "model type 'Unigram' is not supported"),
    "nfkc": (lambda m, s: _edit(m, normalizer={"type": "NFKC"}), "normalizer 'NFKC' is not supported"),
    "metaspace": (lambda m, s: _edit(s, pre_tokenizer={"type": "Metaspace", "replacement": "▁",
                                                      "prepend_scheme": "always", "split": True}),
                  "pre-tokenizer 'Metaspace' is not supported"),
    "digits+bytelevel": (lambda m, s: _edit(s, pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, s["pre_tokenizer"]]}),
        "a Sequence of 2 pre-tokenizers is not supported"),
    "bpe-without-bytelevel": (lambda m, s: _edit(s, pre_tokenizer=None),
                              "BPE without the ByteLevel pre-tokenizer"),
    "dropout": (lambda m, s: _edit(s, model={**s["model"], "dropout": 0.1}), "BPE dropout is random"),
    "single-word": (lambda m, s: _edit(m, added_tokens=m["added_tokens"] + [
        {"id": 5, "content": "[X]", "single_word": True, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True}]), "has single_word: true, which is not supported"),
    "template-without-sequence": (lambda m, s: _edit(m, post_processor={"type": "TemplateProcessing", "single": [],
                                                                "pair": [], "special_tokens": {}}),
                          "the single template needs sequence A once"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_tokenizer_is_refused_in_one_line(tokenize_dump, minilm_json, tmp_path, case):
    make, fragment = REFUSED[case]
    minilm = json.loads(minilm_json.read_text(encoding="utf-8"))
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(make(minilm, _tiny_bpe())), encoding="utf-8")
    proc = run_dump(tokenize_dump, path, ["hello"])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"tokenize_dump: error: {path}: ")
    assert fragment in proc.stderr


@pytest.mark.parametrize("content, fragment", [(None, "cannot open the tokenizer file"),
                                               ("{not json", "not a valid tokenizer.json"),
                                               ('{"model": {"type": "WordPiece", "vocab": [1]}}',
                                                "malformed tokenizer.json")])
def test_unreadable_tokenizer_file_is_refused(tokenize_dump, tmp_path, content, fragment):
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_text(content)
    proc = run_dump(tokenize_dump, path, ["hello"])
    assert proc.returncode == 2 and proc.stderr.startswith(f"tokenize_dump: error: {path}: ")
    assert fragment in proc.stderr and proc.stderr.count("\n") == 1
