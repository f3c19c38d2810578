"""Files that a reader on another node never sees half-written, and their content hashes.

Records, plans, unit files, leases, tables and figures are all written with
`atomic_write_*`; the artifact cache hashes its entries' files, and model folders are
identified by the hashes of theirs (`file_sha256`, remembered across processes).

Torch-free: every command writes through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20
# A file's hash is remembered (per process, by inode, size, mtime and ctime) only once its
# timestamps are this old: filesystems stamp with a coarse clock, so a write in the same
# tick as the hash could otherwise keep the signature ("racy git").
_RACY_NS = 2_000_000_000
_HASH_MEMO: dict[str, tuple[tuple[int, int, int, int], str]] = {}


# --------------------------------------------------------------------------- atomic writes


class WriteFailed(OSError):
    """A file could not be written (a full disk, a read-only folder). It names the file that
    was meant, with the reason, where the OSError underneath names a temporary or nothing
    (ENOSPC from write() has no file name). Still an OSError, so that code that tolerates a
    failed write (a heartbeat, the hash memo) keeps doing so; the commands end with its one
    line instead of a traceback."""

    def __init__(self, path: str | Path, errno: int | None, reason: str) -> None:
        super().__init__(errno, reason)
        self.path, self.reason = Path(path), reason

    @classmethod
    def of(cls, path: str | Path, error: OSError) -> WriteFailed:
        return error if isinstance(error, WriteFailed) else cls(path, error.errno, error.strerror or str(error))

    def __str__(self) -> str:
        return f"could not write {self.path}: {self.reason}"

    def __reduce__(self) -> tuple:  # a unit's error travels back from its job pickled
        return type(self), (str(self.path), self.errno, self.reason)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` so readers see either the old file or the complete new one, never a
    prefix, even if this process is killed: temp file in the same directory, fsync,
    os.replace. The directory must exist (creating it silently would hide a wrong path).
    Any other failure raises WriteFailed, naming `path`."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {parent} does not exist")
    tmp = parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
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
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
    except OSError as error:
        raise WriteFailed.of(path, error) from error
    fsync_dir(parent)


def atomic_write_text(path: Path, text: str) -> None:
    """atomic_write_bytes for text, always UTF-8 so files read the same on every node."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any, *, indent: int | None = 2, allow_nan: bool = False) -> None:
    """atomic_write_text for JSON. NaN/inf raise ValueError (before anything is written)
    unless `allow_nan`, because they are not JSON and strict readers (jq, browsers) reject
    the whole file; pass allow_nan=True where a NaN metric is a legitimate result."""
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=allow_nan) + "\n")


def fsync_dir(path: Path) -> None:
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


# --------------------------------------------------------------------------- content hashes


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_remembered(path: Path) -> str:
    """sha256, remembered for this process while the file's inode, size and timestamps
    stay the same: cells of one sweep process share entries, and re-hashing gigabytes of
    hidden states per cell would cost more than the cell. Any write through the
    filesystem changes the signature; a new process always hashes again."""
    st = path.stat()
    signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    remembered = _HASH_MEMO.get(str(path))
    if remembered is not None and remembered[0] == signature:
        return remembered[1]
    digest = sha256(path)
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
    digest = sha256_remembered(path)
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


# --------------------------------------------------------------------------- trees


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


def tree_size(path: Path) -> int:
    return sum(s.st_size for s in _walk_stats(path) if stat.S_ISREG(s.st_mode))


def newest_mtime(path: Path) -> float:
    """Directory mtimes change only when entries are added or removed, so a writer
    appending to one big file is seen through the file's own mtime."""
    return max((s.st_mtime for s in _walk_stats(path)), default=0.0)


def remove_tree(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not fully remove %s (%s); prune will retry", path, exc)
