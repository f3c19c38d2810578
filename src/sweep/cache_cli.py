"""`sweep-cache`: look at and prune the shared artifact cache from a login node.

Kept free of torch (and of everything but the cache modules) so it starts instantly. The
command-line grammar is the one of every sweep command beside sweep-run (`sweep.cli`):
`sweep-cache prune older_than_days=30 max_size_gb=500 dry_run=true`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sweep.cache import ArtifactCache
from sweep.cache_admin import PruneItem, apply_prune, info, plan_prune
from sweep.cli import HELP, Command, Setting, UsageError
from sweep.rules import Flag, Optional, Real, Text

ENV_VAR = "SWEEP_CACHE_DIR"
DEFAULT_DIR = ".cache/sweep"
# Must match the Hydra config's `cache.dir: ${oc.env:SWEEP_CACHE_DIR,.cache/sweep}`.
DIR_HELP = f"cache root (default: ${ENV_VAR} if set, else {DEFAULT_DIR} relative to the current directory)"


def human_size(n_bytes: float) -> str:
    """Decimal units, the same GB that max_size_gb means."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n_bytes) < 1000 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def resolve_dir(arg: str | None) -> Path:
    """cache.dir=, else the environment, else the default, the same rule as the Hydra config.
    An empty SWEEP_CACHE_DIR is an error rather than silently meaning the cwd."""
    if arg is not None:
        return Path(arg)
    env = os.environ.get(ENV_VAR)
    if env is None:
        return Path(DEFAULT_DIR)
    if not env.strip():
        raise SystemExit(f"sweep-cache: error: {ENV_VAR} is set but empty; unset it or point it at the cache")
    return Path(env)


def _dir_setting() -> Setting:
    return Setting(Optional(Text()), None, DIR_HELP)


INFO = Command(
    prog="sweep-cache info", summary="Entries and sizes per artifact kind.", settings={"cache.dir": _dir_setting()}
)
PRUNE = Command(
    prog="sweep-cache prune",
    summary="Remove entries unused for a while and/or the least recently used ones until the cache fits a size. "
    "Entries being computed are skipped. Stale temporary directories (left by killed runs) are removed too; "
    "without older_than_days or max_size_gb, only they are.",
    settings={
        "cache.dir": _dir_setting(),
        "older_than_days": Setting(Optional(Real(0)), None, "remove entries unused for more than this many days"),
        "max_size_gb": Setting(
            Optional(Real(0)),
            None,
            "then remove least recently used entries until at most this many GB (1e9 bytes) remain",
        ),
        "stale_tmp_days": Setting(Real(0), 1.0, "remove temporary directories untouched for more than this many days"),
        "dry_run": Setting(Flag(), False, "only print what would be removed"),
    },
)
COMMANDS = {"info": INFO, "prune": PRUNE}
USAGE = (
    "usage: sweep-cache info [key=value ...]\n       sweep-cache prune [key=value ...]\n\n"
    "Inspect and prune the sweep artifact cache; `sweep-cache <command> --help` lists a command's settings."
)


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


def _prune(cache: ArtifactCache, settings: dict) -> None:
    dry_run = settings["dry_run"]
    plan = plan_prune(
        cache,
        older_than_days=settings["older_than_days"],
        max_size_gb=settings["max_size_gb"],
        stale_tmp_days=settings["stale_tmp_days"],
    )
    if dry_run:
        chosen, verb = plan, "would remove"
    else:
        removed = set(apply_prune(cache, plan))
        chosen, verb = [item for item in plan if item.path in removed], "removed"
        skipped = len(plan) - len(chosen)
    for item in chosen:
        print(f"{verb} {_describe(item)}")
    freed = sum(item.bytes for item in chosen)
    print(f"{'would free' if dry_run else 'freed'} {human_size(freed)} in {len(chosen)} directories")
    if not dry_run and skipped:
        print(f"skipped {skipped} in use (being computed or used since the scan)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in HELP:
        print(USAGE)
        return 0 if argv else 2
    name, command = argv[0], COMMANDS.get(argv[0])
    try:
        if command is None:
            raise UsageError(f"unknown command {name!r}; the commands are: {', '.join(COMMANDS)}")
        parsed = command.parse(argv[1:])
        if parsed is None:
            print(command.usage())
            return 0
        _, settings = parsed
    except UsageError as error:
        print(f"sweep-cache: error: {error}\n\n{(command.usage() if command else USAGE)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cache = ArtifactCache(resolve_dir(settings["cache.dir"]))
        if name == "info":
            _print_info(cache)
        else:
            _prune(cache, settings)
    except ValueError as exc:
        print(f"sweep-cache {name}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
