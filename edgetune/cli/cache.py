"""``edgetune cache``: list or empty the prepared-graph cache."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    cache = commands.add_parser(
        "cache", help="list or empty the prepared-graph cache (EDGETUNE_CACHE)",
        description="Tuning prepares a model's graphs once per model and --trainable and keeps them in "
        "$EDGETUNE_CACHE/prepared (default ~/.cache/edgetune/prepared), capped at EDGETUNE_CACHE_MAX "
        "(default 2GB) by evicting the least recently used entries.")
    cache.add_argument("--clear", action="store_true", help="delete every entry")


def run(args: argparse.Namespace) -> int:
    import time

    from edgetune.graph.cache import cache_entries, cache_limit, clear_cache, default_cache_root

    root = default_cache_root()
    limit = cache_limit()  # a bad EDGETUNE_CACHE_MAX is reported before anything is deleted
    if args.clear:
        count, size = clear_cache(root)
        print(f"removed {count} entries ({size / 2**20:.1f} MB) from {root}")
        return 0
    entries = cache_entries(root)
    print(f"prepared-graph cache {root} (EDGETUNE_CACHE):")
    for entry in reversed(entries):  # most recently used first
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
        print(f"  {entry.bytes / 2**20:9.1f} MB  last used {used}  {entry.model}  --trainable {entry.trainable}")
    print(f"{len(entries)} entries, {sum(e.bytes for e in entries) / 2**20:.1f} MB of "
          f"{limit / 2**20:.0f} MB (EDGETUNE_CACHE_MAX)")
    return 0
