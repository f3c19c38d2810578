"""`sweep-cache`'s library: what the artifact cache holds, and pruning it.

Only `sweep-cache` (`sweep.cache_cli`) uses this; cells never prune. Pruning takes each
entry's compute lock, so an entry being computed or replaced right now is never removed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import filelock

from sweep.cache import KEY_PATTERN, KIND_PATTERN, LAST_USED_NAME, MANIFEST_NAME, TRASH_PREFIX, ArtifactCache
from sweep.files import newest_mtime, remove_tree, tree_size

logger = logging.getLogger(__name__)

_SECONDS_PER_DAY = 86400.0
_BYTES_PER_GB = 1e9  # decimal, as in the CLI's sizes


@dataclass(frozen=True)
class KindInfo:
    entries: int
    bytes: int


@dataclass(frozen=True)
class CacheInfo:
    """What is on disk. Entries are counted, not verified: verifying means hashing everything."""

    root: Path
    kinds: dict[str, KindInfo]
    tmp_dirs: int
    tmp_bytes: int

    @property
    def total_entries(self) -> int:
        return sum(k.entries for k in self.kinds.values())

    @property
    def total_bytes(self) -> int:
        return sum(k.bytes for k in self.kinds.values())


@dataclass(frozen=True)
class PruneItem:
    """One directory prune() would remove, with why, so callers can report it before and
    after the directory is gone."""

    path: Path
    bytes: int
    last_used: float  # unix time: marker mtime for entries, newest mtime inside for tmp dirs
    reason: str
    kind: str | None = None  # set for entries and for temp dirs of an entry being computed
    key: str | None = None


def info(cache: ArtifactCache) -> CacheInfo:
    """Entries and bytes per kind, plus what sits in tmp/. Reads directory sizes only."""
    kinds: dict[str, list[int]] = {}
    for kind, _key, entry in cache.entries():
        counts = kinds.setdefault(kind, [0, 0])
        counts[0] += 1
        counts[1] += tree_size(entry)
    tmp_dirs = list(cache.tmp_root.iterdir()) if cache.tmp_root.is_dir() else []
    return CacheInfo(
        root=cache.root,
        kinds={k: KindInfo(entries=n, bytes=b) for k, (n, b) in kinds.items()},
        tmp_dirs=len(tmp_dirs),
        tmp_bytes=sum(tree_size(p) for p in tmp_dirs),
    )


def plan_prune(
    cache: ArtifactCache,
    *,
    older_than_days: float | None = None,
    max_size_gb: float | None = None,
    stale_tmp_days: float = 1.0,
) -> list[PruneItem]:
    """What prune would remove, without removing anything. Entries unused for more
    than `older_than_days` go; then, least recently used first, entries until the
    remaining entries fit in `max_size_gb` (decimal GB; tmp/ not counted). Temp dirs
    with nothing modified for `stale_tmp_days` (left by killed writers or forgotten
    uncached results) and leftovers of deletions always go; with neither limit, only they
    go (what killed runs leave behind is never wanted, entries may be)."""
    limits = {"older_than_days": older_than_days, "max_size_gb": max_size_gb, "stale_tmp_days": stale_tmp_days}
    for name, value in limits.items():
        if value is not None and not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    now = time.time()
    entries = [
        PruneItem(path=p, bytes=tree_size(p), last_used=_last_used(p), reason="", kind=k, key=key)
        for k, key, p in cache.entries()
    ]
    entries.sort(key=lambda e: e.last_used)
    plan: list[PruneItem] = []
    kept = entries
    if older_than_days is not None:
        cutoff = now - older_than_days * _SECONDS_PER_DAY
        old = [e for e in entries if e.last_used < cutoff]
        for e in old:
            plan.append(dataclasses.replace(e, reason=f"unused for {(now - e.last_used) / _SECONDS_PER_DAY:.1f} days"))
        kept = [e for e in entries if e.last_used >= cutoff]
    if max_size_gb is not None:
        limit = max_size_gb * _BYTES_PER_GB
        total = sum(e.bytes for e in kept)
        for e in kept:  # oldest first
            if total <= limit:
                break
            plan.append(dataclasses.replace(e, reason=f"over the {max_size_gb:g} GB limit"))
            total -= e.bytes
    plan += _plan_tmp(cache, now, stale_tmp_days)
    return plan


def _plan_tmp(cache: ArtifactCache, now: float, stale_tmp_days: float) -> list[PruneItem]:
    if not cache.tmp_root.is_dir():
        return []
    cutoff = now - stale_tmp_days * _SECONDS_PER_DAY
    items = []
    for path in sorted(cache.tmp_root.iterdir()):
        newest = newest_mtime(path)
        kind = key = None
        parts = path.name.split(".")
        if parts[0] == TRASH_PREFIX:
            reason = "left over from a deletion"
        elif newest < cutoff:
            reason = f"temporary, untouched for {(now - newest) / _SECONDS_PER_DAY:.1f} days"
            if len(parts) >= 2 and KIND_PATTERN.match(parts[0]) and KEY_PATTERN.match(parts[1]):
                kind, key = parts[0], parts[1]  # a writer's dir: prune takes its entry lock
        else:
            continue
        size = tree_size(path)
        items.append(PruneItem(path=path, bytes=size, last_used=newest, reason=reason, kind=kind, key=key))
    return items


def apply_prune(cache: ArtifactCache, plan: Sequence[PruneItem]) -> list[Path]:
    """Remove what plan_prune chose, skipping anything in use since: an entry or
    temp dir whose lock is held (being computed or replaced right now) or an entry hit
    after planning. Returns what was actually removed. A reader that got an entry's
    path just before it is pruned is not protected; prune with age margins while
    sweeps run."""
    removed = []
    for item in plan:
        if item.kind is None or item.key is None:  # trash or uncached: no lock guards these
            remove_tree(item.path)
            removed.append(item.path)
            continue
        lock = cache.lock(item.kind, item.key, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            logger.info("not removing %s: %s %s is locked (being computed)", item.path, item.kind, item.key)
            continue
        try:
            if not item.path.exists():
                continue
            is_entry = item.path.parent == cache.root / item.kind
            if is_entry and _last_used(item.path) > item.last_used:
                logger.info("not removing %s: used since the prune was planned", item.path)
                continue
            if is_entry:
                cache.discard(item.path, item.kind, item.key)
            else:
                remove_tree(item.path)
            logger.info("removed %s (%s)", item.path, item.reason)
            removed.append(item.path)
        finally:
            lock.release()
    return removed


def prune(
    cache: ArtifactCache,
    *,
    older_than_days: float | None = None,
    max_size_gb: float | None = None,
    dry_run: bool = False,
    stale_tmp_days: float = 1.0,
) -> list[Path]:
    """plan_prune then apply_prune; with dry_run, only the plan's paths. Use the
    two steps directly to report sizes of what was removed."""
    plan = plan_prune(cache, older_than_days=older_than_days, max_size_gb=max_size_gb, stale_tmp_days=stale_tmp_days)
    if dry_run:
        return [item.path for item in plan]
    return apply_prune(cache, plan)


def _last_used(entry: Path) -> float:
    for candidate in (entry / LAST_USED_NAME, entry / MANIFEST_NAME, entry):
        try:
            return candidate.stat().st_mtime
        except OSError:
            continue
    return 0.0
