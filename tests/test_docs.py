"""The documentation holds together: links resolve, the generated results page and the pasted tables are
what benchmarks/update_readme.py makes of benchmarks/results/, and each figure lands under its benchmark."""

import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import update_readme as docs  # noqa: E402  (benchmarks/ is no package)


def test_every_relative_link_resolves():
    """README.md and docs/*.md: each relative link reaches a file, and a page.md#anchor one of its headings."""
    pages = docs.doc_pages()
    assert ROOT / "docs" / "results.md" in pages and len(pages) >= 10
    assert [problem for page in pages for problem in docs.broken_links(page)] == []


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# A heading: with `code`\n\n## A heading: with `code`\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading-with-code-1) [gone](missing.md) [bad](other.md#nowhere) "
                    "[web](https://example.org/x) [here](#top)\n\n# Top\n\n```bash\n[not a link](nope.md)\n```\n")
    assert docs.broken_links(page) == [f"{page}: missing.md: no such file",
                                       f"{page}: other.md#nowhere: no such heading"]


def test_results_page_and_pasted_tables_are_current():
    """docs/results.md is the script's output, and every marked table equals its benchmarks/results file:
    after a benchmark or a figure changes, `python benchmarks/update_readme.py` has been run."""
    stale = "is stale: run python benchmarks/update_readme.py"
    assert (ROOT / "docs" / "results.md").read_text(encoding="utf-8") == docs.results_page(), f"docs/results.md {stale}"
    for page in docs.doc_pages():
        text = page.read_text(encoding="utf-8")
        assert docs.with_tables(text, page) == text, f"{page.relative_to(ROOT)} {stale}"


def test_results_page_has_a_section_and_the_figures_of_every_benchmark():
    page = docs.results_page()
    for result in (ROOT / "benchmarks" / "results").glob("*.md"):
        assert f"\n## {result.stem}\n" in page
    for figure in (ROOT / "docs" / "figures").glob("*.png"):
        owner = docs.longest_prefix(figure.stem, [r.stem for r in (ROOT / "benchmarks" / "results").glob("*.md")])
        section = page.split(f"\n## {owner}\n")[1].split("\n## ")[0]
        assert f"(figures/{figure.name})" in section


def _png(path: Path, **texts: str) -> Path:
    chunks = b"".join(struct.pack(">I4s", len(body), b"tEXt") + body + b"\0\0\0\0"
                      for body in (f"{k}\0{v}".encode("latin-1") for k, v in texts.items()))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks + struct.pack(">I4s", 0, b"IEND") + b"\0\0\0\0")
    return path


def test_a_figure_goes_under_the_longest_benchmark_name_it_starts_with(tmp_path):
    for name in ("peers_step", "adaptive_q_curves_seed0", "adaptive_q", "unmatched"):
        _png(tmp_path / f"{name}.png")
    placed = docs.figures_by_section(["adaptive_q", "adaptive_q_curves", "peers", "plan"], tmp_path)
    assert {k: [p.stem for p in v] for k, v in placed.items()} == {
        "peers": ["peers_step"], "adaptive_q_curves": ["adaptive_q_curves_seed0"], "adaptive_q": ["adaptive_q"],
        None: ["unmatched"]}


def test_a_figure_caption_is_its_png_title_or_its_scripts_summary_or_its_name(tmp_path):
    assert docs.caption(_png(tmp_path / "peers_step.png", Software="matplotlib", Title="Step time vs peers")) \
        == "Step time vs peers"
    assert docs.caption(_png(tmp_path / "job_peak.png", Software="matplotlib")) == \
        docs.summary(ROOT / "benchmarks" / "bench_job_peak.py").replace("`", "")  # alt text: no code spans
    assert docs.caption(_png(tmp_path / "no_such_benchmark.png")) == "no such benchmark"
