"""Measures of the package's shape that a reshape should move: run before and after, compare.

    python scripts/house_metrics.py            # a Markdown table on stdout
    python scripts/house_metrics.py --json     # the same as JSON

- top-level modules: ``edgetune/*.py``, ``__init__`` excluded;
- the longest function (lines from ``def`` to its last statement), anywhere in ``edgetune/``;
- import cycles between edgetune modules, counting imports inside functions too (a deferred import
  hides a circle from Python, not from a reader);
- places that parse ``--trainable``: calls of the functions that read the spec string;
- README lines.

Static analysis only (``ast``): nothing is imported, so it runs without the built core.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgetune"
# The functions that turn the --trainable string into a meaning (graph/trainable.py's TrainableSpec.parse
# alone since the grammar moved there); each call is a place where the spec text enters the program.
TRAINABLE_PARSERS = {"parse"}
TRAINABLE_PARSER_OWNERS = {"parse": "TrainableSpec"}  # a bare name too common to count without its owner


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p): (p, ast.parse(p.read_text(encoding="utf-8"), str(p)))
            for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """edgetune modules that ``name`` imports anywhere in its body (``from a import b`` counts a.b when it is a module)."""
    package = name if (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").exists() else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != name}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(result)


def package_of_init(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the edge from a module to its own package: importing ``a.b`` runs ``a/__init__`` first by
    design, and an ``__init__`` re-exporting its modules is not a circle a reader has to follow."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def longest_function(trees: dict[str, tuple[Path, ast.Module]]) -> tuple[int, str]:
    best = (0, "")
    for name, (_, tree) in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                best = max(best, (length, f"{name}.{node.name}"))
    return best


def trainable_parse_sites(trees: dict[str, tuple[Path, ast.Module]]) -> list[str]:
    sites = []
    for name, (_, tree) in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called not in TRAINABLE_PARSERS:
                continue
            owner = TRAINABLE_PARSER_OWNERS.get(called)
            if owner and not (isinstance(func, ast.Attribute) and getattr(func.value, "id", None) == owner):
                continue
            sites.append(f"{name}:{node.lineno}")
    return sites


def measure() -> dict:
    trees = sources()
    graph = package_of_init({m: imported_modules(m, t, set(trees)) for m, (_, t) in trees.items()})
    length, where = longest_function(trees)
    sites = trainable_parse_sites(trees)
    return {
        "top_level_modules": sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"),
        "longest_function": {"lines": length, "name": where},
        "import_cycles": import_cycles(graph),
        "trainable_parse_sites": sites,
        "readme_lines": len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    metrics = measure()
    if parser.parse_args().json:
        print(json.dumps(metrics, indent=2))
        return
    cycles = metrics["import_cycles"]
    print("| measure | value |\n|---|---|")
    print(f"| modules at the top of edgetune/ | {len(metrics['top_level_modules'])} |")
    print(f"| longest function | {metrics['longest_function']['lines']} lines ({metrics['longest_function']['name']}) |")
    print(f"| import cycles | {len(cycles)}{': ' + '; '.join(' ↔ '.join(c) for c in cycles) if cycles else ''} |")
    print(f"| places that parse --trainable | {len(metrics['trainable_parse_sites'])} |")
    print(f"| README lines | {metrics['readme_lines']} |")


if __name__ == "__main__":
    main()
