"""Examples of using sweep.cache: one expensive artifact, computed once, shared, never trusted blindly."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import sweep.files
from sweep.cache import (
    MANIFEST_NAME,
    ArtifactCache,
    CorruptEntryError,
    content_key,
)

SRC = Path(__file__).resolve().parents[1] / "src"
DAY = 86400.0
SPEC = {"model": "vit_b16", "layer": 6, "split": "val"}


class Features:
    """A compute callable that counts its calls and writes deterministic files."""

    def __init__(self, payload: bytes = b"features" * 100) -> None:
        self.calls = 0
        self.payload = payload

    def __call__(self, out: Path) -> None:
        self.calls += 1
        (out / "features.bin").write_bytes(self.payload)
        (out / "meta").mkdir()
        (out / "meta" / "info.json").write_text('{"n": 100}')


def run_python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(SRC), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


# ----------------------------------------------------------------------------- keys


def test_key_ignores_dict_order_and_container_flavour():
    a = content_key("features", {"model": "vit", "layers": [1, 2], "data": Path("/d/x")})
    b = content_key("features", {"data": "/d/x", "layers": (1, 2), "model": "vit"})
    assert a == b
    assert len(a) == 24 and int(a, 16) >= 0


def test_key_changes_with_spec_and_kind():
    assert content_key("features", SPEC) != content_key("features", {**SPEC, "layer": 7})
    assert content_key("features", SPEC) != content_key("weights", SPEC)
    # 1 and 1.0 are different JSON, so different artifacts: specs should use one type.
    assert content_key("features", {"lr": 1}) != content_key("features", {"lr": 1.0})


def test_key_is_stable_across_processes():
    code = (
        "from sweep.cache import content_key; "
        "print(content_key('features', {'split': 'val', 'layer': 6, 'model': 'vit_b16', 'tags': {'a', 'b', 'c'}}))"
    )
    keys = {run_python(code, PYTHONHASHSEED=str(seed)) for seed in (1, 2)}
    assert keys == {content_key("features", {**SPEC, "tags": {"c", "b", "a"}})}


def test_key_is_pinned():
    # Changing this value orphans every existing cache entry. If that is intended,
    # bump CACHE_FORMAT_VERSION and update the value here.
    assert content_key("features", SPEC) == "8324e5222cdc906bede6fb3e"


@pytest.mark.parametrize(
    "spec, error",
    [
        ({"lr": float("nan")}, ValueError),
        ({"lr": float("inf")}, ValueError),
        ({1: "x"}, TypeError),
        ({"model": object()}, TypeError),
        ({"blob": b"bytes"}, TypeError),
    ],
)
def test_key_rejects_specs_without_a_stable_form(spec, error):
    with pytest.raises(error):
        content_key("features", spec)


@pytest.mark.parametrize("kind", ["", "a/b", "../x", ".hidden", "tmp", "locks", "a.b"])
def test_key_rejects_kinds_that_are_not_safe_directory_names(kind):
    with pytest.raises(ValueError):
        content_key(kind, SPEC)


# ----------------------------------------------------------------------------- get_or_compute


def test_computes_once_then_hits(tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    compute = Features()

    first = cache.get_or_compute("features", SPEC, compute, description="vit layer 6")
    second = cache.get_or_compute("features", dict(reversed(SPEC.items())), compute)

    assert first == second == cache.entry_dir("features", SPEC)
    assert compute.calls == 1
    assert (cache.stats.computes, cache.stats.hits) == (1, 1)
    assert (first / "features.bin").read_bytes() == compute.payload
    assert (first / "meta" / "info.json").read_text() == '{"n": 100}'
    manifest = json.loads((first / MANIFEST_NAME).read_text())
    assert manifest["spec"] == SPEC and manifest["description"] == "vit layer 6"
    assert set(manifest["files"]) == {"features.bin", "meta/info.json"}
    assert cache.has("features", SPEC)


def test_a_new_cache_object_finds_existing_entries(tmp_path):
    ArtifactCache(tmp_path).get_or_compute("features", SPEC, Features())
    later = ArtifactCache(tmp_path)
    compute = Features()
    later.get_or_compute("features", SPEC, compute)
    assert compute.calls == 0 and later.stats.hits == 1


def test_different_specs_get_different_entries(tmp_path):
    cache = ArtifactCache(tmp_path)
    a = cache.get_or_compute("features", SPEC, Features(b"a"))
    b = cache.get_or_compute("features", {**SPEC, "layer": 7}, Features(b"b"))
    assert a != b
    assert (a / "features.bin").read_bytes() == b"a"
    assert (b / "features.bin").read_bytes() == b"b"


def test_flipped_byte_is_detected_and_recomputed(tmp_path, caplog):
    cache = ArtifactCache(tmp_path, verify="full")
    entry = cache.get_or_compute("features", SPEC, Features())
    data = bytearray((entry / "features.bin").read_bytes())
    data[10] ^= 0xFF
    (entry / "features.bin").write_bytes(data)  # same size: only the hash can tell
    assert not cache.has("features", SPEC)

    compute = Features()
    with caplog.at_level(logging.WARNING, logger="sweep.cache"):
        again = cache.get_or_compute("features", SPEC, compute)

    assert compute.calls == 1 and cache.stats.corrupt == 1
    assert (again / "features.bin").read_bytes() == compute.payload
    assert "corrupt cache entry" in caplog.text and "sha256" in caplog.text


@pytest.mark.parametrize("verify", ["full", "size"])
def test_truncated_file_is_detected_and_recomputed(tmp_path, verify):
    cache = ArtifactCache(tmp_path, verify=verify)
    entry = cache.get_or_compute("features", SPEC, Features())
    with open(entry / "features.bin", "r+b") as f:
        f.truncate(5)

    compute = Features()
    again = cache.get_or_compute("features", SPEC, compute)
    assert compute.calls == 1 and cache.stats.corrupt == 1
    assert (again / "features.bin").read_bytes() == compute.payload


def test_size_verification_trusts_same_size_edits(tmp_path):
    # The trade-off of verify="size": cheap reads, but a same-size edit goes unnoticed.
    cache = ArtifactCache(tmp_path, verify="size")
    entry = cache.get_or_compute("features", SPEC, Features(b"abc"))
    (entry / "features.bin").write_bytes(b"xyz")
    assert cache.has("features", SPEC)


def test_deleted_file_is_detected_and_recomputed(tmp_path):
    cache = ArtifactCache(tmp_path)
    entry = cache.get_or_compute("features", SPEC, Features())
    (entry / "meta" / "info.json").unlink()
    compute = Features()
    cache.get_or_compute("features", SPEC, compute)
    assert compute.calls == 1 and (entry / "meta" / "info.json").exists()


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(data)  # same size: only the hash can tell


def test_lazy_files_are_hashed_only_when_read_and_never_used_corrupt(tmp_path, caplog):
    """An entry whose big files a reader may not need: one hidden-state file per layer,
    of which a cell reads one. The get checks their sizes; verified() checks the hash."""
    cache = ArtifactCache(tmp_path, verify="full")
    entry = cache.get_or_compute("features", SPEC, Features(), lazy=("features.bin",))
    flip_a_byte(entry / "features.bin")

    compute = Features()
    assert cache.get_or_compute("features", SPEC, compute, lazy=("features.bin",)) == entry
    assert compute.calls == 0  # the other files are fine, and this one was not read
    assert cache.verified(entry, "meta/info.json") == entry / "meta" / "info.json"
    with caplog.at_level(logging.WARNING, logger="sweep.cache"), pytest.raises(CorruptEntryError, match="sha256"):
        cache.verified(entry, "features.bin")

    assert not entry.exists() and cache.stats.corrupt == 1  # removed before anyone else reads it
    again = cache.get_or_compute("features", SPEC, compute, lazy=("features.bin",))
    assert compute.calls == 1 and cache.verified(again, "features.bin").read_bytes() == compute.payload
    assert "corrupt cache entry" in caplog.text


def test_a_process_remembers_hashes_until_the_file_changes(tmp_path, monkeypatch):
    # Cells in one sweep process read the same entries; hashing them once is enough while
    # the file's inode, size and timestamps stay put. (Normally only files whose
    # timestamps are 2 s old are remembered; here every file is, to see it happen.)
    monkeypatch.setattr(sweep.files, "_RACY_NS", -1)
    monkeypatch.setattr(sweep.files, "_HASH_MEMO", {})
    hashed: list[str] = []
    real_sha256 = sweep.files.sha256
    monkeypatch.setattr(sweep.files, "sha256", lambda path: hashed.append(path.name) or real_sha256(path))
    cache = ArtifactCache(tmp_path, verify="full")
    entry = cache.get_or_compute("features", SPEC, Features())
    for _ in range(3):
        cache.get_or_compute("features", SPEC, Features())
    assert sorted(hashed) == ["features.bin", "info.json"]  # once each, however many reads

    flip_a_byte(entry / "features.bin")  # a write changes the signature
    compute = Features()
    cache.get_or_compute("features", SPEC, compute)
    assert compute.calls == 1 and cache.stats.corrupt == 1


def test_entry_without_manifest_is_not_used(tmp_path):
    # What a writer killed before writing its manifest would look like, had it not
    # written into tmp/ first: files that may be incomplete.
    cache = ArtifactCache(tmp_path)
    entry = cache.entry_dir("features", SPEC)
    entry.mkdir(parents=True)
    (entry / "features.bin").write_bytes(b"half")
    # ... and a killed writer's actual leftovers in tmp/, which must not matter either.
    leftover = tmp_path / "tmp" / f"features.{content_key('features', SPEC)}.node1.123.abcd"
    leftover.mkdir(parents=True)
    (leftover / "features.bin").write_bytes(b"half")

    compute = Features()
    got = cache.get_or_compute("features", SPEC, compute)
    assert compute.calls == 1 and cache.stats.corrupt == 1
    assert (got / "features.bin").read_bytes() == compute.payload


def test_failing_compute_leaves_nothing_and_next_call_works(tmp_path):
    cache = ArtifactCache(tmp_path)

    def broken(out: Path) -> None:
        (out / "features.bin").write_bytes(b"partial")
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cache.get_or_compute("features", SPEC, broken)
    assert not cache.entry_dir("features", SPEC).exists()
    assert list((tmp_path / "tmp").iterdir()) == []

    compute = Features()
    cache.get_or_compute("features", SPEC, compute)
    assert compute.calls == 1 and cache.has("features", SPEC)


def test_compute_may_not_write_the_cache_own_files(tmp_path):
    cache = ArtifactCache(tmp_path)
    with pytest.raises(ValueError, match="reserves"):
        cache.get_or_compute("features", SPEC, lambda out: (out / MANIFEST_NAME).write_text("{}"))
    assert not cache.entry_dir("features", SPEC).exists()


def test_disabled_cache_computes_every_time(tmp_path):
    # Used to check that a cached artifact equals a fresh recomputation.
    cached = ArtifactCache(tmp_path).get_or_compute("features", SPEC, Features())

    uncached = ArtifactCache(tmp_path, enabled=False)
    compute = Features()
    first = uncached.get_or_compute("features", SPEC, compute)
    second = uncached.get_or_compute("features", SPEC, compute)

    assert compute.calls == 2 and first != second and cached not in (first, second)
    assert not uncached.has("features", SPEC)
    files = lambda d: json.loads((d / MANIFEST_NAME).read_text())["files"]  # noqa: E731
    assert files(first) == files(second) == files(cached)


def test_bad_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="verify"):
        ArtifactCache(tmp_path, verify="sometimes")
    with pytest.raises(ValueError, match="lock_timeout_s"):
        ArtifactCache(tmp_path, lock_timeout_s=-5)
    with pytest.raises(ValueError, match="empty"):
        ArtifactCache("")


def test_concurrent_processes_compute_once(tmp_path):
    cache_dir, counter, go = tmp_path / "cache", tmp_path / "computed.txt", tmp_path / "go"
    worker = tmp_path / "worker.py"
    worker.write_text(
        textwrap.dedent(
            f"""
            import json, os, sys, time
            from pathlib import Path
            from sweep.cache import ArtifactCache

            def compute(out):
                time.sleep(1.0)
                with open({str(counter)!r}, "a") as f:
                    f.write(f"{{os.getpid()}}\\n")
                (out / "features.bin").write_bytes(b"shared" * 1000)

            while not os.path.exists({str(go)!r}):  # start together, not staggered by imports
                time.sleep(0.01)
            cache = ArtifactCache({str(cache_dir)!r})
            path = cache.get_or_compute("features", {SPEC!r}, compute)
            print(json.dumps({{"path": str(path), "content": (path / "features.bin").read_text(),
                               "computes": cache.stats.computes, "hits": cache.stats.hits}}))
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    procs = [
        subprocess.Popen([sys.executable, str(worker)], env=env, stdout=subprocess.PIPE, text=True) for _ in range(4)
    ]
    time.sleep(0.3)
    go.touch()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        results.append(json.loads(out))

    assert len(counter.read_text().splitlines()) == 1
    assert {r["path"] for r in results} == {str(ArtifactCache(cache_dir).entry_dir("features", SPEC))}
    assert {r["content"] for r in results} == {"shared" * 1000}
    assert sorted(r["computes"] for r in results) == [0, 0, 0, 1]
    assert sorted(r["hits"] for r in results) == [0, 1, 1, 1]


def test_the_cache_modules_do_not_import_torch():
    assert (
        run_python("import sys, sweep.cache, sweep.cache_admin, sweep.files; print('torch' in sys.modules)") == "False"
    )
