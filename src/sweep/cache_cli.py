"""`sweep-cache`: look at and prune the shared artifact cache from a login node.

Kept free of torch (and of everything but the cache modules) so it starts instantly.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sweep.cache import ArtifactCache
from sweep.cache_admin import PruneItem, apply_prune, info, plan_prune

ENV_VAR = "SWEEP_CACHE_DIR"
DEFAULT_DIR = ".cache/sweep"
# Must match the Hydra config's `cache.dir: ${oc.env:SWEEP_CACHE_DIR,.cache/sweep}`.
DIR_HELP = f"cache root (default: ${ENV_VAR} if set, else {DEFAULT_DIR} relative to the current directory)"


def human_size(n_bytes: float) -> str:
    """Decimal units, the same GB that --max-size-gb means."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n_bytes) < 1000 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def resolve_dir(arg: str | None) -> Path:
    """--dir, else the environment, else the default, the same rule as the Hydra config.
    An empty SWEEP_CACHE_DIR is an error rather than silently meaning the cwd."""
    if arg is not None:
        return Path(arg)
    env = os.environ.get(ENV_VAR)
    if env is None:
        return Path(DEFAULT_DIR)
    if not env.strip():
        raise SystemExit(f"sweep-cache: error: {ENV_VAR} is set but empty; unset it or point it at the cache")
    return Path(env)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep-cache", description="Inspect and prune the sweep artifact cache.")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="entries and sizes per artifact kind")
    info.add_argument("--dir", help=DIR_HELP)

    prune = commands.add_parser(
        "prune",
        help="remove least recently used entries",
        description="Remove entries unused for a while and/or the least recently used ones until the cache "
        "fits a size. Entries being computed are skipped. Stale temporary directories are removed too.",
    )
    prune.add_argument("--dir", help=DIR_HELP)
    prune.add_argument("--older-than-days", type=float, metavar="D", help="remove entries unused for more than D days")
    prune.add_argument(
        "--max-size-gb",
        type=float,
        metavar="G",
        help="then remove least recently used entries until at most G GB (1e9 bytes) remain",
    )
    prune.add_argument(
        "--stale-tmp-days",
        type=float,
        default=1.0,
        metavar="D",
        help="remove temporary directories untouched for more than D days (default: %(default)s)",
    )
    prune.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    prune.set_defaults(subparser=prune)
    info.set_defaults(subparser=info)
    return parser


def _print_info(cache: ArtifactCache) -> None:
    held = info(cache)
    print(f"cache root: {held.root}")
    if not held.root.exists():
        print("(does not exist yet)")
    rows = [(kind, str(k.entries), human_size(k.bytes)) for kind, k in sorted(held.kinds.items())]
    rows.append(("total", str(held.total_entries), human_size(held.total_bytes)))
    header = ("kind", "entries", "size")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    fmt = f"{{:<{widths[0]}}}  {{:>{widths[1]}}}  {{:>{widths[2]}}}"
    print(fmt.format(*header))
    for i, row in enumerate(rows):
        if i == len(rows) - 1:
            print("-" * (sum(widths) + 4))
        print(fmt.format(*row))
    if held.tmp_dirs:
        print(f"temporary: {held.tmp_dirs} dirs, {human_size(held.tmp_bytes)} (in progress, or stale until pruned)")


def _describe(item: PruneItem) -> str:
    used = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.last_used))
    return f"{item.path}  {human_size(item.bytes)}  last used {used}  ({item.reason})"


def _prune(cache: ArtifactCache, args: argparse.Namespace) -> None:
    plan = plan_prune(
        cache,
        older_than_days=args.older_than_days, max_size_gb=args.max_size_gb, stale_tmp_days=args.stale_tmp_days
    )
    if args.dry_run:
        chosen, verb = plan, "would remove"
    else:
        removed = set(apply_prune(cache, plan))
        chosen, verb = [item for item in plan if item.path in removed], "removed"
        skipped = len(plan) - len(chosen)
    for item in chosen:
        print(f"{verb} {_describe(item)}")
    freed = sum(item.bytes for item in chosen)
    print(f"{'would free' if args.dry_run else 'freed'} {human_size(freed)} in {len(chosen)} directories")
    if not args.dry_run and skipped:
        print(f"skipped {skipped} in use (being computed or used since the scan)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "prune" and args.older_than_days is None and args.max_size_gb is None:
        args.subparser.error("prune needs --older-than-days and/or --max-size-gb (refusing to guess what to remove)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cache = ArtifactCache(resolve_dir(args.dir))
        if args.command == "info":
            _print_info(cache)
        else:
            _prune(cache, args)
    except ValueError as exc:
        args.subparser.exit(2, f"sweep-cache {args.command}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
