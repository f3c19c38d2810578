"""What the artifact cache holds, and pruning it (`sweep-cache`'s library)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sweep.cache import LAST_USED_NAME, ArtifactCache
from sweep.cache_admin import info, prune

DAY = 86400.0


class Features:
    """A compute callable that writes one small file."""

    def __call__(self, out: Path) -> None:
        (out / "features.bin").write_bytes(b"features" * 100)


def populate(root: Path) -> tuple[ArtifactCache, dict[str, Path]]:
    """Three entries of known sizes and ages: old (10 days), mid (5 days), new (now)."""
    cache = ArtifactCache(root)
    now = time.time()
    entries = {}
    for name, kind, size, age_days in [
        ("old", "features", 3000, 10),
        ("mid", "features", 2000, 5),
        ("new", "weights", 1000, 0),
    ]:
        entry = cache.get_or_compute(kind, {"name": name}, lambda out, n=size: (out / "x.bin").write_bytes(b"\0" * n))
        stamp = now - age_days * DAY
        os.utime(entry / LAST_USED_NAME, (stamp, stamp))
        entries[name] = entry
    return cache, entries


def test_info_counts_entries_and_bytes_per_kind(tmp_path):
    cache, _ = populate(tmp_path)
    held = info(cache)
    assert held.root == tmp_path.absolute()
    assert set(held.kinds) == {"features", "weights"}
    assert held.kinds["features"].entries == 2 and held.kinds["weights"].entries == 1
    # payload plus the manifest, which is part of the entry's footprint
    assert 5000 < held.kinds["features"].bytes < 5000 + 4000
    assert held.total_entries == 3 and held.total_bytes == sum(k.bytes for k in held.kinds.values())


def test_info_on_a_missing_root_is_empty(tmp_path):
    held = info(ArtifactCache(tmp_path / "nothing"))
    assert held.kinds == {} and held.total_bytes == 0
    assert not (tmp_path / "nothing").exists()


def test_prune_by_age(tmp_path):
    cache, e = populate(tmp_path)
    assert prune(cache, older_than_days=7, dry_run=True) == [e["old"]]
    assert e["old"].exists()

    assert prune(cache, older_than_days=7) == [e["old"]]
    assert not e["old"].exists() and e["mid"].exists() and e["new"].exists()


def test_prune_by_size_removes_least_recently_used_first(tmp_path):
    cache, e = populate(tmp_path)
    # A hit makes "old" the most recently used, so "mid" goes first.
    cache.get_or_compute("features", {"name": "old"}, Features())
    removed = prune(cache, max_size_gb=5500 / 1e9)  # fits "old" + "new" (4000 bytes + manifests), not all three
    assert removed == [e["mid"]]
    assert info(cache).total_bytes <= 5500


def temp_dirs(root: Path) -> tuple[Path, Path]:
    """Two temporary folders in the cache's tmp/: one a killed writer left two days ago, one
    being written now."""
    stale = root / "tmp" / f"features.{'0' * 24}.node1.99.dead"
    fresh = root / "tmp" / f"features.{'1' * 24}.node2.42.live"
    for d in (stale, fresh):
        d.mkdir(parents=True)
        (d / "part.bin").write_bytes(b"x")
    two_days_ago = time.time() - 2 * DAY
    for p in (stale / "part.bin", stale):
        os.utime(p, (two_days_ago, two_days_ago))
    return stale, fresh


def test_prune_without_a_criterion_removes_only_stale_temp_dirs(tmp_path):
    """What killed writers left in tmp/ goes with no limit given; every entry stays."""
    cache, entries = populate(tmp_path)
    stale, fresh = temp_dirs(tmp_path)
    assert prune(cache) == [stale]
    assert fresh.exists() and all(e.exists() for e in entries.values())


def test_prune_removes_stale_temp_dirs_but_not_fresh_ones(tmp_path):
    cache, _ = populate(tmp_path)
    stale, fresh = temp_dirs(tmp_path)
    removed = prune(cache, older_than_days=100, stale_tmp_days=1)
    assert removed == [stale]
    assert fresh.exists()


def test_prune_skips_entries_being_computed(tmp_path):
    cache, e = populate(tmp_path)
    kind, key = "features", e["old"].name
    with cache.lock(kind, key, timeout=0):  # what a process recomputing this entry holds
        assert prune(cache, older_than_days=7) == []
    assert e["old"].exists()
    assert prune(cache, older_than_days=7) == [e["old"]]
