"""Paste each ``benchmarks/results/NAME.md`` table into README.md between its markers.

    python benchmarks/update_readme.py

README.md holds ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->`` pairs; whatever is between
them is replaced by the current table, so the README always shows what the scripts last measured.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n).*?(<!-- /results:(?P=name) -->)", re.S)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()

    def table(match: re.Match) -> str:
        source = ROOT / "benchmarks" / "results" / f"{match['name']}.md"
        if not source.is_file():
            print(f"no {source.relative_to(ROOT)} yet: its README table is left as it is")
            return match.group(0)
        lines = [ln for ln in source.read_text().splitlines() if ln.startswith("|")]
        return match.group(1) + "\n".join(lines) + "\n" + match.group(3)

    updated = MARKER.sub(table, text)
    if updated != text:
        readme.write_text(updated)
    print(f"README.md: {len(MARKER.findall(text))} result tables")


if __name__ == "__main__":
    main()
