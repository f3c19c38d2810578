"""Content-addressed artifact cache on a (possibly shared) filesystem.

Many sweep cells need the same expensive artifacts (extracted features, cached hidden
states, fine-tuned weights). Each artifact is named by a hash of what determines its
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

This module must not import torch: the ``sweep-cache`` CLI imports it and has to start fast.
"""

from __future__ import annotations

import dataclasses
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
import stat
import time
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any

import filelock

logger = logging.getLogger(__name__)

# Part of every key: bump it when the manifest layout or the canonical-JSON rules change,
# so old entries are simply never found again instead of being misread.
CACHE_FORMAT_VERSION = 1
KEY_LENGTH = 24  # hex characters: 96 bits, ample against accidental collisions
MANIFEST_NAME = "MANIFEST.json"
LAST_USED_NAME = ".last_used"
VERIFY_MODES = ("full", "size")

_KIND_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_KEY_RE = re.compile(rf"^[0-9a-f]{{{KEY_LENGTH}}}$")
_RESERVED_KINDS = frozenset({"locks", "tmp"})
_RESERVED_ENTRY_NAMES = frozenset({MANIFEST_NAME, LAST_USED_NAME})
# Prefixes of directories under tmp/. Kinds start with an alphanumeric, so "_..." can't collide.
_UNCACHED_PREFIX = "_uncached"
_TRASH_PREFIX = "_trash"
_HASH_CHUNK = 1 << 20
# A file's hash is remembered (per process, by inode, size, mtime and ctime) only once its
# timestamps are this old: filesystems stamp with a coarse clock, so a write in the same
# tick as the hash could otherwise keep the signature ("racy git").
_RACY_NS = 2_000_000_000
_HASH_MEMO: dict[str, tuple[tuple[int, int, int, int], str]] = {}
_SECONDS_PER_DAY = 86400.0
_BYTES_PER_GB = 1e9  # decimal, as in the CLI's sizes


# --------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` so readers see either the old file or the complete new one, never a
    prefix, even if this process is killed: temp file in the same directory, fsync,
    os.replace. The directory must exist (creating it silently would hide a wrong path)."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {parent} does not exist")
    tmp = parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # os.open with 0o666 lets the umask decide permissions, like a plain open() would;
    # tempfile.mkstemp would leave the final file readable by its owner only.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(parent)


def atomic_write_text(path: Path, text: str) -> None:
    """atomic_write_bytes for text, always UTF-8 so files read the same on every node."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any, *, indent: int | None = 2, allow_nan: bool = False) -> None:
    """atomic_write_text for JSON. NaN/inf raise ValueError (before anything is written)
    unless `allow_nan`, because they are not JSON and strict readers (jq, browsers) reject
    the whole file; pass allow_nan=True where a NaN metric is a legitimate result."""
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=allow_nan) + "\n")


def _fsync_dir(path: Path) -> None:
    """Make a rename/create in `path` durable. Best effort: some filesystems refuse."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise ValueError(
            f"artifact kind {kind!r} must be letters, digits, '_' or '-', starting with a letter or digit"
        )
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

    def _lock(self, kind: str, key: str, timeout: float) -> filelock.FileLock:
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
                    actual = _sha256_remembered(path)
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

        lock = self._lock(kind, key, self.lock_timeout_s)
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
                self._discard(entry, kind, key)
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
            self._discard(entry, None, None)
        else:
            with self._lock(kind, key, self.lock_timeout_s):
                # Someone may have replaced it already; remove only what is still bad.
                if entry.exists() and self._file_problem(entry, rel) is not None:
                    self._discard(entry, kind, key)
        raise CorruptEntryError(f"cache entry {entry}: {problem}; it was removed and will be recomputed")

    def _file_problem(self, entry: Path, rel: str) -> str | None:
        try:
            files = json.loads((entry / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
            expected = files[rel]["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"{MANIFEST_NAME} has no usable entry for {rel!r} ({exc})"
        try:
            actual = _sha256_remembered(entry / rel)
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
            _fsync_dir(tmp)
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
        _fsync_dir(entry.parent)

    def _discard(self, path: Path, kind: str | None, key: str | None) -> None:
        """Rename `path` out of the way, then delete it. The rename is atomic, so nobody
        sees a half-deleted entry; if deletion fails (e.g. NFS keeps files open elsewhere)
        the leftovers wait in tmp/ for the next prune."""
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        label = f"{kind}.{key}" if kind and key else path.name
        trash = self.tmp_root / f"{_TRASH_PREFIX}.{label}.{secrets.token_hex(4)}"
        os.rename(path, trash)
        _remove_tree(trash)

    # ----------------------------------------------------------------- info & prune

    def _scan_entries(self) -> list[tuple[str, str, Path]]:
        if not self.root.is_dir():
            return []
        found = []
        for kind_dir in sorted(self.root.iterdir()):
            if kind_dir.name in _RESERVED_KINDS or not _KIND_RE.match(kind_dir.name) or not kind_dir.is_dir():
                continue
            for entry in sorted(kind_dir.iterdir()):
                if _KEY_RE.match(entry.name) and entry.is_dir():
                    found.append((kind_dir.name, entry.name, entry))
        return found

    def info(self) -> CacheInfo:
        """Entries and bytes per kind, plus what sits in tmp/. Reads directory sizes only."""
        kinds: dict[str, list[int]] = {}
        for kind, _key, entry in self._scan_entries():
            counts = kinds.setdefault(kind, [0, 0])
            counts[0] += 1
            counts[1] += _tree_size(entry)
        tmp_dirs = list(self.tmp_root.iterdir()) if self.tmp_root.is_dir() else []
        return CacheInfo(
            root=self.root,
            kinds={k: KindInfo(entries=n, bytes=b) for k, (n, b) in kinds.items()},
            tmp_dirs=len(tmp_dirs),
            tmp_bytes=sum(_tree_size(p) for p in tmp_dirs),
        )

    def plan_prune(
        self,
        *,
        older_than_days: float | None = None,
        max_size_gb: float | None = None,
        stale_tmp_days: float = 1.0,
    ) -> list[PruneItem]:
        """What prune() would remove, without removing anything. Entries unused for more
        than `older_than_days` go; then, least recently used first, entries until the
        remaining entries fit in `max_size_gb` (decimal GB; tmp/ not counted). Temp dirs
        with nothing modified for `stale_tmp_days` (left by killed writers or forgotten
        uncached results) and leftovers of deletions always go."""
        if older_than_days is None and max_size_gb is None:
            raise ValueError("prune needs older_than_days and/or max_size_gb")
        limits = {"older_than_days": older_than_days, "max_size_gb": max_size_gb, "stale_tmp_days": stale_tmp_days}
        for name, value in limits.items():
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        now = time.time()
        entries = [
            PruneItem(path=p, bytes=_tree_size(p), last_used=_last_used(p), reason="", kind=k, key=key)
            for k, key, p in self._scan_entries()
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
        plan += self._plan_tmp(now, stale_tmp_days)
        return plan

    def _plan_tmp(self, now: float, stale_tmp_days: float) -> list[PruneItem]:
        if not self.tmp_root.is_dir():
            return []
        cutoff = now - stale_tmp_days * _SECONDS_PER_DAY
        items = []
        for path in sorted(self.tmp_root.iterdir()):
            newest = _newest_mtime(path)
            kind = key = None
            parts = path.name.split(".")
            if parts[0] == _TRASH_PREFIX:
                reason = "left over from a deletion"
            elif newest < cutoff:
                reason = f"temporary, untouched for {(now - newest) / _SECONDS_PER_DAY:.1f} days"
                if len(parts) >= 2 and _KIND_RE.match(parts[0]) and _KEY_RE.match(parts[1]):
                    kind, key = parts[0], parts[1]  # a writer's dir: prune takes its entry lock
            else:
                continue
            size = _tree_size(path)
            items.append(PruneItem(path=path, bytes=size, last_used=newest, reason=reason, kind=kind, key=key))
        return items

    def apply_prune(self, plan: Sequence[PruneItem]) -> list[Path]:
        """Remove what plan_prune() chose, skipping anything in use since: an entry or
        temp dir whose lock is held (being computed or replaced right now) or an entry hit
        after planning. Returns what was actually removed. A reader that got an entry's
        path just before it is pruned is not protected; prune with age margins while
        sweeps run."""
        removed = []
        for item in plan:
            if item.kind is None or item.key is None:  # trash or uncached: no lock guards these
                _remove_tree(item.path)
                removed.append(item.path)
                continue
            lock = self._lock(item.kind, item.key, timeout=0)
            try:
                lock.acquire()
            except filelock.Timeout:
                logger.info("not removing %s: %s %s is locked (being computed)", item.path, item.kind, item.key)
                continue
            try:
                if not item.path.exists():
                    continue
                is_entry = item.path.parent == self.root / item.kind
                if is_entry and _last_used(item.path) > item.last_used:
                    logger.info("not removing %s: used since the prune was planned", item.path)
                    continue
                if is_entry:
                    self._discard(item.path, item.kind, item.key)
                else:
                    _remove_tree(item.path)
                logger.info("removed %s (%s)", item.path, item.reason)
                removed.append(item.path)
            finally:
                lock.release()
        return removed

    def prune(
        self,
        *,
        older_than_days: float | None = None,
        max_size_gb: float | None = None,
        dry_run: bool = False,
        stale_tmp_days: float = 1.0,
    ) -> list[Path]:
        """plan_prune() then apply_prune(); with dry_run, only the plan's paths. Use the
        two steps directly to report sizes of what was removed."""
        plan = self.plan_prune(older_than_days=older_than_days, max_size_gb=max_size_gb, stale_tmp_days=stale_tmp_days)
        if dry_run:
            return [item.path for item in plan]
        return self.apply_prune(plan)


# --------------------------------------------------------------------------- file helpers


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_remembered(path: Path) -> str:
    """_sha256, remembered for this process while the file's inode, size and timestamps
    stay the same: cells of one sweep process share entries, and re-hashing gigabytes of
    hidden states per cell would cost more than the cell. Any write through the
    filesystem changes the signature; a new process always hashes again."""
    st = path.stat()
    signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    remembered = _HASH_MEMO.get(str(path))
    if remembered is not None and remembered[0] == signature:
        return remembered[1]
    digest = _sha256(path)
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
        _HASH_MEMO[str(path)] = (signature, digest)
    return digest


def file_sha256(path: Path, memo: Path | None = None) -> str:
    """sha256 of `path`, remembered across processes in the JSON file `memo` (when given)
    by (absolute path, size, mtime): model folders hold hundreds of megabytes of weights and
    every cell that loads them needs their identity. Best effort: an unreadable or
    unwritable memo only costs a re-hash; a file still in the racy window is not remembered."""
    path = Path(path).absolute()
    st = path.stat()
    signature = [st.st_size, st.st_mtime_ns]
    entries = _read_memo(memo)
    known = entries.get(str(path))
    if isinstance(known, dict) and known.get("signature") == signature and isinstance(known.get("sha256"), str):
        return known["sha256"]
    digest = _sha256_remembered(path)
    if memo is not None and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
        entries = _read_memo(memo)  # again: another process may have added entries meanwhile
        entries = {name: entry for name, entry in entries.items() if os.path.exists(name)}  # forget removed files
        entries[str(path)] = {"signature": signature, "sha256": digest}
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(memo, entries, indent=None)
        except OSError as error:
            logger.debug("could not remember file hashes in %s: %s", memo, error)
    return digest


def _read_memo(memo: Path | None) -> dict[str, Any]:
    if memo is None:
        return {}
    try:
        entries = json.loads(memo.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


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
                while chunk := f.read(_HASH_CHUNK):
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


def _last_used(entry: Path) -> float:
    for candidate in (entry / LAST_USED_NAME, entry / MANIFEST_NAME, entry):
        try:
            return candidate.stat().st_mtime
        except OSError:
            continue
    return 0.0


def _walk_stats(path: Path) -> list[os.stat_result]:
    """lstat of `path` and everything below it, tolerating files vanishing meanwhile."""
    try:
        stats = [path.lstat()]
    except OSError:
        return []
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                try:
                    stats.append(os.lstat(os.path.join(dirpath, name)))
                except OSError:
                    pass
    return stats


def _tree_size(path: Path) -> int:
    return sum(s.st_size for s in _walk_stats(path) if stat.S_ISREG(s.st_mode))


def _newest_mtime(path: Path) -> float:
    """Directory mtimes change only when entries are added or removed, so a writer
    appending to one big file is seen through the file's own mtime."""
    return max((s.st_mtime for s in _walk_stats(path)), default=0.0)


def _remove_tree(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not fully remove %s (%s); prune will retry", path, exc)
