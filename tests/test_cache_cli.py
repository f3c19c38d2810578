"""Examples of the `sweep-cache` command on a small populated cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cache_admin import temp_dirs  # a stale and a fresh folder in the cache's tmp/

from sweep.cache import LAST_USED_NAME, ArtifactCache
from sweep.cache_admin import info
from sweep.cache_cli import human_size, main

SRC = Path(__file__).resolve().parents[1] / "src"
DAY = 86400.0


def sweep_cache(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in a fresh interpreter."""
    base_env = {k: v for k, v in os.environ.items() if k != "SWEEP_CACHE_DIR"}
    return subprocess.run(
        [sys.executable, "-m", "sweep.cache_cli", *args],
        env={**base_env, "PYTHONPATH": str(SRC), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """features: 2 entries (an old 2 MB one, a fresh 1 MB one); weights: 1 fresh 3 MB entry."""
    root = tmp_path / "cache"
    cache = ArtifactCache(root)
    now = time.time()
    for kind, name, size, age_days in [
        ("features", "old", 2_000_000, 30),
        ("features", "new", 1_000_000, 0),
        ("weights", "vit", 3_000_000, 0),
    ]:
        entry = cache.get_or_compute(
            kind, {"name": name}, lambda out, n=size: (out / "data.bin").write_bytes(b"\0" * n)
        )
        stamp = now - age_days * DAY
        os.utime(entry / LAST_USED_NAME, (stamp, stamp))
    return root


def entry(root: Path, kind: str, name: str) -> Path:
    return ArtifactCache(root).entry_dir(kind, {"name": name})


def test_info_prints_a_table_per_kind(cache_dir):
    result = sweep_cache("info", f"cache.dir={cache_dir}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"cache root: {cache_dir}"
    assert any(line.split()[:3] == ["features", "2", "3.0"] and line.endswith("MB") for line in lines)
    assert any(line.split()[:3] == ["weights", "1", "3.0"] for line in lines)
    assert any(line.split()[:3] == ["total", "3", "6.0"] for line in lines)


def test_info_uses_the_environment_then_the_default(cache_dir, tmp_path):
    from_env = sweep_cache("info", SWEEP_CACHE_DIR=str(cache_dir))
    assert f"cache root: {cache_dir}" in from_env.stdout

    default = sweep_cache("info", cwd=tmp_path)
    assert f"cache root: {tmp_path / '.cache' / 'sweep'}" in default.stdout
    assert "does not exist yet" in default.stdout


def test_help_states_the_default_directory():
    result = sweep_cache("info", "--help")
    assert "$SWEEP_CACHE_DIR if set, else .cache/sweep relative to the current directory" in " ".join(
        result.stdout.split()
    )


def test_prune_by_age_removes_only_old_entries(cache_dir):
    result = sweep_cache("prune", f"cache.dir={cache_dir}", "older_than_days=7")
    assert result.returncode == 0, result.stderr
    assert f"removed {entry(cache_dir, 'features', 'old')}" in result.stdout
    assert "freed 2.0 MB in 1 directories" in result.stdout
    assert not entry(cache_dir, "features", "old").exists()
    assert entry(cache_dir, "features", "new").exists() and entry(cache_dir, "weights", "vit").exists()


def test_prune_by_size_dry_run_removes_nothing(cache_dir, capsys):
    # 6 MB cached, limit 3.5 MB: the old entry goes first, then the least recently used of the rest.
    assert main(["prune", f"cache.dir={cache_dir}", "max_size_gb=0.0035", "dry_run=true"]) == 0
    out = capsys.readouterr().out
    assert f"would remove {entry(cache_dir, 'features', 'old')}" in out
    assert "would free" in out
    assert entry(cache_dir, "features", "old").exists()

    assert main(["prune", f"cache.dir={cache_dir}", "max_size_gb=0.0035"]) == 0
    assert not entry(cache_dir, "features", "old").exists()
    assert info(ArtifactCache(cache_dir)).total_bytes <= 3_500_000


def test_prune_without_a_criterion_removes_what_killed_runs_left_after_a_day(cache_dir):
    stale, fresh = temp_dirs(cache_dir)
    result = sweep_cache("prune", f"cache.dir={cache_dir}")
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and fresh.exists()
    assert entry(cache_dir, "features", "old").exists()


def test_empty_cache_dir_variable_is_an_error(tmp_path):
    result = sweep_cache("info", cwd=tmp_path, SWEEP_CACHE_DIR="")
    assert result.returncode != 0
    assert "SWEEP_CACHE_DIR is set but empty" in result.stderr


def test_human_sizes_are_decimal_like_max_size_gb():
    assert human_size(999) == "999 B"
    assert human_size(1500) == "1.5 kB"
    assert human_size(2_000_000_000) == "2.0 GB"


def test_cli_does_not_import_torch():
    code = "import sys, sweep.cache_cli; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True
    )
    assert result.stdout.strip() == "False", result.stderr


def test_a_bad_setting_names_the_key_the_value_and_what_is_valid(cache_dir):
    result = sweep_cache("prune", f"cache.dir={cache_dir}", "older_than_days=soon")
    assert result.returncode == 2
    assert "older_than_days=soon is invalid: it must be a number >= 0" in result.stderr
    assert "usage: sweep-cache prune" in result.stderr
    flags = sweep_cache("prune", "--older-than-days", "7")
    assert flags.returncode == 2 and "settings are key=value" in flags.stderr
    assert entry(cache_dir, "features", "old").exists()
