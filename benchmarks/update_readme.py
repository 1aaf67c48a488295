"""Refresh the documentation from what the benchmarks last measured.

    python benchmarks/update_readme.py

1. A docs page (README.md, docs/*.md) holding ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->`` gets
   the current table of ``benchmarks/results/NAME.md`` between the markers, and NAME's figures (as in 2.),
   so the prose beside a table always shows the last measurement.
2. ``docs/results.md`` is written afresh: one section per ``benchmarks/results/*.md`` with the script that
   produced it, its table, every ``docs/figures/*.png`` whose name starts with the section's name (the
   longest such name wins: ``adaptive_q_curves.png`` goes under adaptive_q_curves, ``peers_step.png`` under
   peers), and a link to the page that discusses it. New results and figures appear without editing this.
3. Every relative link of those pages must reach an existing file (and heading, for ``page.md#anchor``);
   a broken one is printed and the exit status is 1. ``tests/test_docs.py`` runs the same check.
"""

from __future__ import annotations

import ast
import os
import re
import struct
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
FIGURES = DOCS / "figures"
PAGE = DOCS / "results.md"
MARKER = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n).*?(<!-- /results:(?P=name) -->)", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"(#{1,6}) +(.+?) *#*$")


def doc_pages() -> list[Path]:
    """The pages this script and the link check cover: the README and every page under docs/."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of a Markdown text outside fenced code blocks (a ``#`` in a shell block is no
    heading, a ``[x](y)`` there no link)."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines()):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation and symbols dropped, spaces as hyphens."""
    kept = "".join(ch for ch in heading.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def anchors(text: str) -> list[tuple[int, str]]:
    """(line number, anchor) of every heading outside code blocks, with GitHub's -1, -2 for repeats."""
    seen: dict[str, int] = {}
    found = []
    for index, line in prose_lines(text):
        if match := HEADING.match(line):
            base = slug(match[2])
            found.append((index, f"{base}-{seen[base]}" if base in seen else base))
            seen[base] = seen.get(base, 0) + 1
    return found


def heading_anchors(page: Path) -> set[str]:
    return {anchor for _, anchor in anchors(page.read_text(encoding="utf-8"))}


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def broken_links(page: Path) -> list[str]:
    """Every relative link of ``page`` whose file, or heading in a Markdown file, does not exist."""
    broken = []
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ... are not ours to check
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{shown(page)}: {target}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file):
                broken.append(f"{shown(page)}: {target}: no such heading")
    return broken


def result_names() -> list[str]:
    return sorted(p.stem for p in RESULTS.glob("*.md"))


def figure_links(figures: list[Path], page: Path) -> list[str]:
    """Image links to ``figures``, relative to ``page``'s folder."""
    return [f"![{caption(f)}]({Path(os.path.relpath(f, page.parent)).as_posix()})" for f in figures]


def with_tables(text: str, page: Path) -> str:
    """``text`` (of ``page``) with the table lines of benchmarks/results/NAME.md and NAME's figures between
    each NAME marker pair (a marker whose results file does not exist yet keeps what it holds)."""
    figures = figures_by_section(result_names())

    def table(match: re.Match) -> str:
        source = RESULTS / f"{match['name']}.md"
        if not source.is_file():
            return match.group(0)
        lines = [ln for ln in source.read_text(encoding="utf-8").splitlines() if ln.startswith("|")]
        for link in figure_links(figures.get(match["name"], []), page):
            lines += ["", link]
        return match.group(1) + "\n".join(lines) + "\n" + match.group(3)

    return MARKER.sub(table, text)


def refresh_tables(page: Path) -> int:
    """Rewrite ``page``'s marked tables; returns how many markers it holds."""
    text = page.read_text(encoding="utf-8")
    if (updated := with_tables(text, page)) != text:
        page.write_text(updated, encoding="utf-8")
    return len(MARKER.findall(text))


def longest_prefix(name: str, candidates: list[str]) -> str | None:
    """The longest of ``candidates`` that ``name`` starts with."""
    matches = [c for c in candidates if name.startswith(c)]
    return max(matches, key=len) if matches else None


def producer(name: str) -> Path | None:
    """The script that writes results NAME: bench_X.py for the longest X that NAME starts with, or an example."""
    scripts = {p.stem.removeprefix("bench_"): p for p in sorted((ROOT / "benchmarks").glob("bench_*.py"))}
    scripts.update({p.stem: p for p in sorted((ROOT / "examples").glob("*.py"))})
    stem = longest_prefix(name, list(scripts))
    return scripts[stem] if stem else None


def summary(script: Path) -> str:
    """The first paragraph of a script's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    return " ".join(doc.split("\n\n")[0].split())


def discussed_in(name: str, script: Path | None) -> str | None:
    """``page.md#heading`` of the first page that shows NAME's table, or else names its results file, or
    else its script: the heading above the first such line."""
    needles = [f"<!-- results:{name} -->", f"results/{name}."] + ([script.name] if script else [])
    pages = [page for page in sorted(DOCS.glob("*.md")) if page != PAGE]
    for needle in needles:
        for page in pages:
            text = page.read_text(encoding="utf-8")
            hits = [i for i, line in enumerate(text.splitlines()) if needle in line]
            if hits:
                above = [anchor for i, anchor in anchors(text) if i <= hits[0]]
                return page.name + (f"#{above[-1]}" if above else "")
    return None


def caption(figure: Path) -> str:
    """A figure's PNG ``Title`` (or ``Description``) text chunk, as matplotlib's savefig(metadata=) writes
    it; else the summary of the script that measured it; else its file name in words."""
    data, texts = figure.read_bytes(), {}
    offset = 8  # after the PNG signature
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        if kind == b"tEXt" and b"\0" in body:
            key, _, value = body.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt" and body.count(b"\0") >= 4:
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            value = rest.split(b"\0", 2)[2]
            texts[key.decode("latin-1")] = (zlib.decompress(value) if compressed else value).decode("utf-8")
        elif kind == b"IEND":
            break
        offset += 12 + length
    script = producer(figure.stem)
    fallback = summary(script) if script else figure.stem.replace("_", " ")
    return re.sub(r"[][`]", "", texts.get("Title") or texts.get("Description") or fallback)


def figures_by_section(names: list[str], folder: Path = FIGURES) -> dict[str | None, list[Path]]:
    """Each ``folder/*.png`` under the results name it starts with (None: it starts with none)."""
    placed: dict[str | None, list[Path]] = {}
    for figure in sorted(folder.glob("*.png")):
        placed.setdefault(longest_prefix(figure.stem, names), []).append(figure)
    return placed


def section(name: str, figures: list[Path]) -> list[str]:
    script = producer(name)
    lines = [f"## {name}", ""]
    if script:
        lines.append(f"`python {script.relative_to(ROOT)}`: {summary(script)}")
    if page := discussed_in(name, script):
        lines.append(f"Setup and discussion: [{page.split('#')[0]}]({page}).")
    lines.append("")
    for line in (RESULTS / f"{name}.md").read_text(encoding="utf-8").strip().splitlines():
        lines.append("##" + line if line.startswith("#") else line)  # below this section's heading
    for link in figure_links(figures, PAGE):
        lines += ["", link]
    return lines + [""]


def results_page() -> str:
    names = result_names()
    figures = figures_by_section(names)
    lines = [
        "# Benchmark results",
        "",
        "<!-- generated by `python benchmarks/update_readme.py` from benchmarks/results/*.md and",
        "     docs/figures/*.png: edit those or the script, not this file -->",
        "",
        "Every table the benchmarks in `benchmarks/` last wrote, with its figures. Absolute times come from",
        "shared development machines and drift; each script compares its configurations in one run, so the",
        "ratios are the robust figures. [performance.md](performance.md) and the feature pages say how each",
        "was measured and what it shows.",
        "",
        *(f"- [{name}](#{slug(name)})" for name in names),
        "",
    ]
    for name in names:
        lines += section(name, figures.get(name, []))
    if strays := figures.get(None):
        lines += ["## Other figures", "", *(f"{link}\n" for link in figure_links(strays, PAGE))]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> int:
    tables = {page: refresh_tables(page) for page in doc_pages() if page != PAGE}
    PAGE.write_text(results_page(), encoding="utf-8")
    print(f"{sum(tables.values())} marked tables in {sum(1 for n in tables.values() if n)} pages; "
          f"{PAGE.relative_to(ROOT)} written")
    broken = [problem for page in doc_pages() for problem in broken_links(page)]
    for problem in broken:
        print(f"broken link: {problem}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
