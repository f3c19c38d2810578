"""Content-addressed artifact cache on a (possibly shared) filesystem.

Many sweep cells need the same expensive artifacts (decoded images, extracted features,
fitted heads and probes, trained toys). Each artifact is named by a hash of what determines its
content, so cells on different SLURM nodes find each other's work without coordination
beyond a file lock, and a stale or half-written artifact can never be mistaken for a good
one: an entry only appears by an atomic rename after its manifest is written, and every
read checks the files against that manifest.

Layout under ``root``::

    <kind>/<key>/               one entry: the files compute() wrote, plus
        MANIFEST.json           what they must be (sizes, sha256) and where they came from
        .last_used              marker whose mtime is the last hit (atime is unreliable)
    locks/<kind>/<key>.lock     serialises computing one entry across processes and hosts
    tmp/                        entries being written, uncached results, entries being deleted

Lock files are never deleted: unlinking a lock file another process is waiting on would
let two processes hold "the" lock at once.

This module holds the keys and an entry's life cycle (compute once under a lock, publish
atomically, verify on read); what the cache holds and pruning it are `sweep.cache_admin`'s,
atomic writes and file hashes `sweep.files`'s. It must not import torch: the
``sweep-cache`` CLI imports it and has to start fast.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import math
import numbers
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any

import filelock

from sweep.files import HASH_CHUNK, atomic_write_json, fsync_dir, remove_tree, sha256_remembered

logger = logging.getLogger(__name__)

# Part of every key: bump it when the manifest layout or the canonical-JSON rules change,
# so old entries are simply never found again instead of being misread.
CACHE_FORMAT_VERSION = 1
KEY_LENGTH = 24  # hex characters: 96 bits, ample against accidental collisions
MANIFEST_NAME = "MANIFEST.json"
LAST_USED_NAME = ".last_used"
VERIFY_MODES = ("full", "size")

KIND_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
KEY_PATTERN = re.compile(rf"^[0-9a-f]{{{KEY_LENGTH}}}$")
_RESERVED_KINDS = frozenset({"locks", "tmp"})
_RESERVED_ENTRY_NAMES = frozenset({MANIFEST_NAME, LAST_USED_NAME})
# Prefixes of directories under tmp/. Kinds start with an alphanumeric, so "_..." can't collide.
_UNCACHED_PREFIX = "_uncached"
TRASH_PREFIX = "_trash"


# --------------------------------------------------------------------------- keys


def _canonical(value: Any, where: str) -> Any:
    """Turn `value` into plain JSON types the same way in every process, so equal specs
    give equal keys. Anything with no obvious deterministic form is rejected rather than
    guessed (repr() of arbitrary objects can embed memory addresses)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):  # int, numpy integers
        return int(value)
    if isinstance(value, numbers.Real):  # float, numpy floats
        as_float = float(value)
        if not math.isfinite(as_float):
            raise ValueError(f"spec{where} is {as_float}; NaN/inf have no stable JSON form")
        return as_float
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                # JSON would turn 1 into "1" and make {1: x} and {"1": x} the same key.
                raise TypeError(f"spec{where} has a non-string key {k!r}; use string keys")
            out[k] = _canonical(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, Set):
        items = [_canonical(v, f"{where}{{...}}") for v in value]
        return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"spec{where} is a {type(value).__name__}, which has no canonical JSON form; "
        "convert it to str/int/float/bool/None/list/dict first"
    )


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or not KIND_PATTERN.match(kind):
        raise ValueError(f"artifact kind {kind!r} must be letters, digits, '_' or '-', starting with a letter or digit")
    if kind in _RESERVED_KINDS:
        raise ValueError(f"artifact kind {kind!r} is reserved for the cache's own directories")


def content_key(kind: str, spec: Mapping[str, Any]) -> str:
    """The entry name for (kind, spec): the first 24 hex digits of the sha256 of canonical
    JSON. Dict order, tuple-vs-list and Path-vs-str do not matter; 1 and 1.0 do (they are
    different JSON). The key also covers CACHE_FORMAT_VERSION. The entry lives at
    root/<kind>/<key>.

    The spec must contain everything that determines the artifact's content (including a
    version string for the code that produces it) and nothing that doesn't (output paths,
    host names), or cells will either share wrong results or never share at all.
    """
    _check_kind(kind)
    if not isinstance(spec, Mapping):
        raise TypeError(f"spec must be a mapping, got {type(spec).__name__}")
    payload = {"format": CACHE_FORMAT_VERSION, "kind": kind, "spec": _canonical(spec, "")}
    return hashlib.sha256(_canonical_json(payload).encode("ascii")).hexdigest()[:KEY_LENGTH]


# --------------------------------------------------------------------------- results


class CorruptEntryError(RuntimeError):
    """A lazily verified file did not match its manifest. The entry has been removed, so
    asking for it again recomputes it."""


@dataclass
class CacheStats:
    """Counters for this ArtifactCache object, so tests and benchmarks can tell hits from
    recomputation without parsing logs."""

    hits: int = 0
    computes: int = 0
    corrupt: int = 0
    lock_wait_s: float = 0.0  # time spent waiting for another process's compute of an entry


# --------------------------------------------------------------------------- the cache


class ArtifactCache:
    """Artifacts computed once and shared by every process that can see `root`.

    The directory returned by get_or_compute holds exactly the files compute() wrote, plus
    MANIFEST.json and the .last_used marker. Treat it as read-only: an entry modified in
    place fails verification on its next read and is recomputed, and other processes may be
    reading it. Copy files out if you need to change them.

    Locking uses filelock (flock). On NFS this needs working lockd/NFSv4 locks, on Lustre
    the `flock` mount option; where flock is missing filelock falls back to an
    existence-based lock that a killed process leaves behind.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        enabled: bool = True,
        verify: str = "full",
        lock_timeout_s: float = -1,
    ) -> None:
        """`verify`: "full" hashes every file on every read (catches bit flips and
        in-place edits; a process remembers a hash while the file's inode, size and
        timestamps are unchanged); "size" checks sizes only (catches truncation, fast for
        large artifacts). `lock_timeout_s`: how long to wait for another process computing the
        same entry; -1 waits forever, since that process is doing our work for us.
        `enabled=False` computes every time into a fresh directory and shares nothing, to
        check that cached artifacts equal recomputation."""
        if isinstance(root, str) and not root.strip():
            # An empty cache.dir (e.g. SWEEP_CACHE_DIR set but empty) would mean the cwd.
            raise ValueError("cache root is empty; set cache.dir or SWEEP_CACHE_DIR to a directory")
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        if lock_timeout_s != -1 and not lock_timeout_s >= 0:
            raise ValueError(f"lock_timeout_s must be -1 (wait forever) or >= 0, got {lock_timeout_s!r}")
        # Absolute now: Hydra may chdir into the run directory later, and a relative root
        # would then give every run its own private cache.
        self.root = Path(root).expanduser().absolute()
        self.enabled = enabled
        self.verify = verify
        self.lock_timeout_s = lock_timeout_s
        self.stats = CacheStats()

    def __repr__(self) -> str:
        return f"ArtifactCache({str(self.root)!r}, enabled={self.enabled}, verify={self.verify!r})"

    # ----------------------------------------------------------------- paths

    @property
    def tmp_root(self) -> Path:
        return self.root / "tmp"

    def entry_dir(self, kind: str, spec: Mapping[str, Any]) -> Path:
        """Where the entry for (kind, spec) lives (or would live); it may not exist."""
        return self._entry_path(kind, content_key(kind, spec))

    def _entry_path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def lock(self, kind: str, key: str, timeout: float) -> filelock.FileLock:
        lock_path = self.root / "locks" / kind / f"{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(lock_path, timeout=timeout)

    def _new_tmp_dir(self, prefix: str) -> Path:
        """A fresh directory under root/tmp: same filesystem as the entries, so the final
        rename is atomic. os.mkdir (not mkdtemp) so the umask, not 0700, sets permissions
        and other accounts sharing the cache can read the published entry."""
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
        while True:
            path = self.tmp_root / f"{prefix}.{host}.{os.getpid()}.{secrets.token_hex(4)}"
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue

    # ----------------------------------------------------------------- reading

    def has(self, kind: str, spec: Mapping[str, Any]) -> bool:
        """Whether a verified entry exists now (verified with this cache's `verify` mode).
        Always False when the cache is disabled, since get_or_compute would compute."""
        if not self.enabled:
            return False
        key = content_key(kind, spec)
        return self._problem(self._entry_path(kind, key), kind, key) is None

    def _problem(self, entry: Path, kind: str, key: str, lazy: Sequence[str] = ()) -> str | None:
        """Why `entry` must not be used, or None if it matches its manifest. Files matching
        a `lazy` pattern are checked by size only; their reader calls verified()."""
        if not entry.exists():
            return "missing"
        manifest_path = entry / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"no {MANIFEST_NAME} (a writer that did not finish?)"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"unreadable {MANIFEST_NAME}: {exc}"
        if not isinstance(manifest, dict):
            return f"{MANIFEST_NAME} is not a JSON object"
        if (manifest.get("format"), manifest.get("kind"), manifest.get("key")) != (CACHE_FORMAT_VERSION, kind, key):
            return f"{MANIFEST_NAME} describes another entry or format"
        files = manifest.get("files")
        if not isinstance(files, dict):
            return f"{MANIFEST_NAME} has no file list"
        checked: list[tuple[Path, str, str]] = []
        for rel, meta in files.items():
            rel_path = PurePath(rel)
            if rel_path.is_absolute() or ".." in rel_path.parts or not isinstance(meta, dict):
                return f"{MANIFEST_NAME} has a bad entry for {rel!r}"
            path = entry / rel_path
            try:
                size = path.stat().st_size
            except OSError:
                return f"file {rel} is missing"
            if size != meta.get("size"):
                return f"file {rel} has {size} bytes, manifest says {meta.get('size')}"
            if not any(fnmatch.fnmatchcase(rel, pattern) for pattern in lazy):
                checked.append((path, rel, str(meta.get("sha256"))))
        if self.verify == "full":  # after all sizes: a missing file is found without hashing the rest
            for path, rel, expected in checked:
                try:
                    actual = sha256_remembered(path)
                except OSError as exc:
                    return f"file {rel} is unreadable: {exc}"
                if actual != expected:
                    return f"file {rel} has sha256 {actual[:12]}..., manifest says {expected[:12]}..."
        return None

    # ----------------------------------------------------------------- get_or_compute

    def get_or_compute(
        self,
        kind: str,
        spec: Mapping[str, Any],
        compute: Callable[[Path], None],
        *,
        description: str = "",
        lazy: Sequence[str] = (),
    ) -> Path:
        """Return the directory of a complete, verified artifact for (kind, spec), calling
        `compute(tmp_dir)` to write its files into an empty directory only if no good entry
        exists. Concurrent callers for the same entry (other processes, other hosts) wait
        for one compute instead of repeating it. A corrupt entry is logged, removed and
        recomputed, never returned. If compute raises, nothing is published and the
        exception propagates. `description` only goes into logs and the manifest.

        `lazy`: glob patterns (relative paths) of large files that a reader may not need,
        such as one hidden-state file per layer of which a cell reads one. They are checked
        by size here, and by hash only when the reader asks for them through verified()."""
        key = content_key(kind, spec)
        if not self.enabled:
            return self._compute_uncached(kind, key, spec, compute, description)

        entry = self._entry_path(kind, key)
        # Fast path without the lock: entries are immutable once renamed into place.
        if self._problem(entry, kind, key, lazy) is None:
            return self._hit(entry, kind, key, description)

        lock = self.lock(kind, key, self.lock_timeout_s)
        waited = time.monotonic()
        try:
            lock.acquire()
        except filelock.Timeout as exc:
            raise TimeoutError(
                f"waited {self.lock_timeout_s}s for {lock.lock_file} while computing {kind} {key} "
                f"({description}); another process is computing it, or locks do not work on this filesystem"
            ) from exc
        finally:
            self.stats.lock_wait_s += time.monotonic() - waited
        try:
            # Re-check: whoever held the lock may just have published it.
            problem = self._problem(entry, kind, key, lazy)
            if problem is None:
                return self._hit(entry, kind, key, description)
            if problem != "missing":
                logger.warning(
                    "corrupt cache entry %s (%s): %s; removing it and recomputing", entry, description, problem
                )
                self.stats.corrupt += 1
                self.discard(entry, kind, key)
            logger.info("computing %s %s (%s)", kind, key, description)
            tmp = self._new_tmp_dir(f"{kind}.{key}")
            self._fill(tmp, kind, key, spec, compute, description, marker=True)
            self._publish(tmp, entry, kind, key)
            self.stats.computes += 1
            return entry
        finally:
            lock.release()

    def verified(self, entry: Path, rel: str) -> Path:
        """The path of file `rel` in `entry` (as returned by get_or_compute), once it has
        been checked against the manifest: the second half of a `lazy` get. A mismatch
        removes the entry and raises CorruptEntryError, so the file is never used."""
        path = entry / rel
        if self.verify != "full":
            return path  # sizes were checked when the entry was got
        problem = self._file_problem(entry, rel)
        if problem is None:
            return path
        kind, key = entry.parent.name, entry.name
        logger.warning("corrupt cache entry %s: %s; removing it", entry, problem)
        self.stats.corrupt += 1
        if not self.enabled:  # a private uncached directory: nobody else can be using it
            self.discard(entry, None, None)
        else:
            with self.lock(kind, key, self.lock_timeout_s):
                # Someone may have replaced it already; remove only what is still bad.
                if entry.exists() and self._file_problem(entry, rel) is not None:
                    self.discard(entry, kind, key)
        raise CorruptEntryError(f"cache entry {entry}: {problem}; it was removed and will be recomputed")

    def _file_problem(self, entry: Path, rel: str) -> str | None:
        try:
            files = json.loads((entry / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
            expected = files[rel]["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"{MANIFEST_NAME} has no usable entry for {rel!r} ({exc})"
        try:
            actual = sha256_remembered(entry / rel)
        except OSError as exc:
            return f"file {rel} is unreadable: {exc}"
        if actual != expected:
            return f"file {rel} has sha256 {actual[:12]}..., manifest says {str(expected)[:12]}..."
        return None

    def _hit(self, entry: Path, kind: str, key: str, description: str) -> Path:
        logger.debug("cache hit %s %s (%s) at %s", kind, key, description, entry)
        self.stats.hits += 1
        _touch(entry / LAST_USED_NAME)
        return entry

    def _compute_uncached(
        self, kind: str, key: str, spec: Mapping[str, Any], compute: Callable[[Path], None], description: str
    ) -> Path:
        """Disabled cache: a fresh directory per call, shaped like an entry (manifest
        included, so its hashes can be compared with a cached entry's). The caller owns it
        and should delete it; prune() removes forgotten ones after stale_tmp_days."""
        logger.info("computing %s %s (%s) without cache", kind, key, description)
        tmp = self._new_tmp_dir(f"{_UNCACHED_PREFIX}.{kind}.{key}")
        self._fill(tmp, kind, key, spec, compute, description, marker=False)
        self.stats.computes += 1
        return tmp

    def _fill(
        self,
        tmp: Path,
        kind: str,
        key: str,
        spec: Mapping[str, Any],
        compute: Callable[[Path], None],
        description: str,
        *,
        marker: bool,
    ) -> None:
        """Run compute into `tmp` and write the manifest last; on any failure remove `tmp`."""
        try:
            compute(tmp)
            files = _describe_files(tmp)
            if marker:
                (tmp / LAST_USED_NAME).touch()
            now = time.time()
            manifest = {
                "format": CACHE_FORMAT_VERSION,
                "kind": kind,
                "key": key,
                "spec": _canonical(spec, ""),
                "description": description,
                "created": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
                "created_unix": now,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "files": files,
            }
            atomic_write_json(tmp / MANIFEST_NAME, manifest)
            fsync_dir(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _publish(self, tmp: Path, entry: Path, kind: str, key: str) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, entry)
        except OSError:
            # Only reachable if the lock did not exclude another writer (a filesystem
            # without working locks): theirs is as good as ours if it verifies.
            if self._problem(entry, kind, key) is None:
                logger.info("%s %s was published concurrently; using that copy", kind, key)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(entry.parent)

    def entries(self) -> list[tuple[str, str, Path]]:
        """(kind, key, folder) of every entry on disk, verified or not."""
        if not self.root.is_dir():
            return []
        found = []
        for kind_dir in sorted(self.root.iterdir()):
            if kind_dir.name in _RESERVED_KINDS or not KIND_PATTERN.match(kind_dir.name) or not kind_dir.is_dir():
                continue
            for entry in sorted(kind_dir.iterdir()):
                if KEY_PATTERN.match(entry.name) and entry.is_dir():
                    found.append((kind_dir.name, entry.name, entry))
        return found

    def discard(self, path: Path, kind: str | None, key: str | None) -> None:
        """Rename `path` out of the way, then delete it. The rename is atomic, so nobody
        sees a half-deleted entry; if deletion fails (e.g. NFS keeps files open elsewhere)
        the leftovers wait in tmp/ for the next prune."""
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        label = f"{kind}.{key}" if kind and key else path.name
        trash = self.tmp_root / f"{TRASH_PREFIX}.{label}.{secrets.token_hex(4)}"
        os.rename(path, trash)
        remove_tree(trash)


# --------------------------------------------------------------------------- file helpers


def _describe_files(tmp: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of everything compute() wrote, fsynced so that the manifest never
    vouches for data still only in the page cache. Links and special files are refused:
    a symlink could point outside the cache and change behind the manifest's back."""
    files: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(tmp):
        base = Path(dirpath)
        for name in sorted(dirnames):
            if (base / name).is_symlink():
                raise ValueError(f"compute() wrote a symlink {base / name}; artifacts must be plain files")
        for name in sorted(filenames):
            path = base / name
            rel = path.relative_to(tmp).as_posix()
            if rel in _RESERVED_ENTRY_NAMES:
                raise ValueError(f"compute() wrote {rel}, a name the cache reserves for itself")
            if path.is_symlink() or not path.is_file():
                raise ValueError(f"compute() wrote {rel}, which is not a plain file")
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(HASH_CHUNK):
                    digest.update(chunk)
                size = f.tell()
                try:
                    os.fsync(f.fileno())
                except OSError:  # durability only; verification still catches lost data
                    pass
            files[rel] = {"size": size, "sha256": digest.hexdigest()}
    return dict(sorted(files.items()))


def _touch(marker: Path) -> None:
    """Record a hit for prune's LRU order. Failing (read-only mount, another account's
    entry) must not fail the caller, who has a good artifact."""
    try:
        marker.touch()
    except OSError as exc:
        logger.debug("could not touch %s: %s", marker, exc)
