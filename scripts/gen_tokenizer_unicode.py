"""Generate ``csrc/runtime/tokenizer/unicode_tables.inc``: the Unicode facts the C++ tokenizer needs.

    python scripts/gen_tokenizer_unicode.py > csrc/runtime/tokenizer/unicode_tables.inc

The tables are read off Hugging Face ``tokenizers`` itself, one code point at a time, not off Python's
``unicodedata``: the Rust library answers each question with a different crate, each pinned to its own
Unicode version (``unicode_categories`` for BERT's control/punctuation/mark tests, ``std`` for
whitespace and lowercase, ``unicode-normalization-alignments`` for NFD, Oniguruma for ``\\p{L}``, ``\\p{N}``
and ``\\s`` in the byte-level regex). Parity with Hugging Face's ids is the goal, so Hugging Face is the
oracle; the script prints how many code points differ from ``unicodedata`` to show why that matters.
Only the canonical combining classes (the order of marks inside NFD) come from ``unicodedata``: no
``tokenizers`` call exposes them; the parity test's every-code-point texts check them through NFD.
"""

from __future__ import annotations

import sys
import unicodedata

import tokenizers
from tokenizers import Regex, normalizers, pre_tokenizers

# flag bits, mirrored in unicode.h
CLEAN_REMOVE, CLEAN_SPACE, CHINESE, MARK_NONSPACING, WHITESPACE, BERT_PUNCT, LETTER, NUMBER, REGEX_SPACE = (
    1 << i for i in range(9))
SEP = "|"  # ASCII punctuation that every normaliser below leaves alone: it delimits per-character results
SURROGATES = range(0xD800, 0xE000)


def code_points() -> list[int]:
    return [cp for cp in range(0x110000) if cp not in SURROGATES]


def per_char(normalizer, cps: list[int]) -> list[str]:
    """What ``normalizer`` makes of each code point on its own (the separator itself asked alone)."""
    others = [cp for cp in cps if chr(cp) != SEP]
    out = normalizer.normalize_str(SEP + SEP.join(map(chr, others)) + SEP).split(SEP)[1:-1]
    assert len(out) == len(others)
    found = dict(zip(others, out))
    return [found[cp] if chr(cp) != SEP else normalizer.normalize_str(SEP) for cp in cps]


def uncovered(pre_tokenizer, cps: list[int]) -> set[int]:
    """Code points that ``pre_tokenizer`` drops (splits on with behaviour "removed")."""
    text = "".join(map(chr, cps))
    covered = bytearray(len(text))
    for _, (a, b) in pre_tokenizer.pre_tokenize_str(text):
        covered[a:b] = b"\x01" * (b - a)
    return {cp for cp, c in zip(cps, covered) if not c}


def bert(**flags) -> normalizers.BertNormalizer:
    options = {"clean_text": False, "handle_chinese_chars": False, "strip_accents": False, "lowercase": False}
    return normalizers.BertNormalizer(**{**options, **flags})


def flags_of(cps: list[int]) -> dict[int, int]:
    flags = dict.fromkeys(cps, 0)
    for cp, out in zip(cps, per_char(bert(clean_text=True), cps)):
        if out == "":
            flags[cp] |= CLEAN_REMOVE
        elif out == " " and cp != 0x20:
            flags[cp] |= CLEAN_SPACE
    for cp, out in zip(cps, per_char(bert(handle_chinese_chars=True), cps)):
        if out != chr(cp):
            assert out == f" {chr(cp)} ", hex(cp)
            flags[cp] |= CHINESE
    nfd = per_char(normalizers.NFD(), cps)
    for cp, decomposed, stripped in zip(cps, nfd, per_char(bert(strip_accents=True), cps)):
        if decomposed == chr(cp) and stripped == "":
            flags[cp] |= MARK_NONSPACING
    # BertPreTokenizer: whitespace removed, punctuation isolated; "a" between them keeps the cases apart
    probe = [ord("a")]
    for cp in cps:
        probe += [cp, ord("a")]
    text = "".join(map(chr, probe))
    pieces = {(a, b): s for s, (a, b) in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(text)}
    covered = bytearray(len(text))
    for a, b in pieces:
        covered[a:b] = b"\x01" * (b - a)
    for i, cp in enumerate(cps):
        at = 2 * i + 1
        if not covered[at]:
            flags[cp] |= WHITESPACE
        elif pieces.get((at, at + 1)) == chr(cp):
            flags[cp] |= BERT_PUNCT
    for bit, pattern in ((LETTER, r"\p{L}"), (NUMBER, r"\p{N}"), (REGEX_SPACE, r"\s")):
        for cp in uncovered(pre_tokenizers.Split(Regex(pattern), behavior="removed"), cps):
            flags[cp] |= bit
    return flags


def mappings(normalizer, cps: list[int]) -> dict[int, str]:
    return {cp: out for cp, out in zip(cps, per_char(normalizer, cps)) if out != chr(cp)}


def ranges(values: dict[int, int]) -> list[tuple[int, int]]:
    """(first code point, value) wherever the value changes; a code point not in ``values`` has 0."""
    out, last = [], None
    for cp in range(0x110000):
        value = values.get(cp, 0)
        if value != last:
            out.append((cp, value))
            last = value
    return out


def is_hangul_syllable(cp: int) -> bool:
    return 0xAC00 <= cp <= 0xD7A3  # decomposed arithmetically in unicode.cpp


def emit_map(name: str, table: dict[int, str]) -> list[str]:
    lines = [f"static const MapEntry {name}[] = {{"]
    pool: list[int] = []
    for cp in sorted(table):
        seq = [ord(c) for c in table[cp]]
        lines.append(f"    {{0x{cp:X}, {len(pool)}, {len(seq)}}},")
        pool += seq
    lines.append("};")
    lines.append(f"static const char32_t {name}_POOL[] = {{")
    for i in range(0, len(pool), 12):
        lines.append("    " + ", ".join(f"0x{c:X}" for c in pool[i:i + 12]) + ",")
    lines.append("};")
    return lines


def unicodedata_differences(flags: dict[int, int]) -> dict[str, int]:
    """How many code points Python's unicodedata would classify otherwise (printed to stderr)."""
    def cat(cp):
        return unicodedata.category(chr(cp))
    checks = {
        "letter": (LETTER, lambda cp: cat(cp).startswith("L")),
        "number": (NUMBER, lambda cp: cat(cp).startswith("N")),
        "mark_nonspacing": (MARK_NONSPACING, lambda cp: cat(cp) == "Mn" and unicodedata.normalize("NFD", chr(cp)) == chr(cp)),
        "clean_remove": (CLEAN_REMOVE, lambda cp: cp in (0, 0xFFFD) or (cat(cp) in ("Cc", "Cf", "Cn", "Co") and chr(cp) not in "\t\n\r")),
    }
    return {name: sum((bool(flags[cp] & bit)) != test(cp) for cp in flags) for name, (bit, test) in checks.items()}


def main() -> None:
    cps = code_points()
    flags = flags_of(cps)
    nfd = {cp: s for cp, s in mappings(normalizers.NFD(), cps).items() if not is_hangul_syllable(cp)}
    lower = mappings(bert(lowercase=True), cps)
    ccc = {cp: unicodedata.combining(chr(cp)) for cp in cps if unicodedata.combining(chr(cp))}
    print(f"generation: differences from unicodedata {unicodedata.unidata_version}: "
          f"{unicodedata_differences(flags)}", file=sys.stderr)

    out = [
        "// Generated by scripts/gen_tokenizer_unicode.py from Hugging Face tokenizers "
        f"{tokenizers.__version__} (combining classes: Python unicodedata {unicodedata.unidata_version}).",
        "// Do not edit: rerun the script. Included by unicode.cpp only.",
        "",
        "// (first code point, flags) runs: the flags hold until the next entry's code point",
        "static const FlagRun FLAG_RUNS[] = {",
    ]
    out += [f"    {{0x{cp:X}, 0x{v:X}}}," for cp, v in ranges(flags)]
    out += ["};", "", "// canonical combining class runs, as FLAG_RUNS", "static const FlagRun CCC_RUNS[] = {"]
    out += [f"    {{0x{cp:X}, {v}}}," for cp, v in ranges(ccc)]
    out += ["};", "", "// NFD of every code point that changes (Hangul syllables are computed)"]
    out += emit_map("NFD", nfd)
    out += ["", "// Rust's char::to_lowercase of every code point that changes"]
    out += emit_map("LOWER", lower)
    print("\n".join(out))


if __name__ == "__main__":
    main()
