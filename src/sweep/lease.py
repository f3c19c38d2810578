"""The lease: which process owns a running cell, so that a cell runs in one place at a time.

A cell that runs holds `started.json` (LEASE_FILE) in its folder:

    host, pid                   the owning process
    slurm_job_id                SLURM_JOB_ID (unique per array task), null outside SLURM
    slurm_array_job_id, slurm_array_task_id, slurm_restart_count
    token                       unique per acquisition; a holder refreshes only its own lease
    started, heartbeat          time.time() when taken, and of the last refresh
    stale_after_s               readers judge the owner dead once `heartbeat` is older
    released                    time the owner let go, null while it holds the lease

The file stays after release, as the history of who ran the cell. A lease is *free* when
absent or released, *held* while its owner lives, and *dead* when its process is gone
(this host), its SLURM job left the queue (`squeue`), a requeue of the same job runs now
(higher SLURM_RESTART_COUNT), or its heartbeat is older than its `stale_after_s`. While
squeue answers, another SLURM job's lease is judged by the queue alone: a preempted task
waits there to be requeued, its process gone from the node and its heartbeat silent, and
keeps its cells (a lease of the job this process runs in is judged by its process, as
outside SLURM: in an interactive allocation a killed `sweep-run` can be run again). A dead
lease is taken over; when its owner is gone for sure (not only silent), the taker also
removes the `.*.tmp` files its interrupted atomic writes left in the folder. Taking,
refreshing and releasing happen under a file lock (`.started.json.lock`, never deleted:
unlinking a lock file others wait on would let two processes hold it) and re-read the
lease under it, so two processes, on one host or on hosts sharing the filesystem (flock
must work there, as for the artifact cache), cannot both own a cell. Readers (planner,
sweep-status) read without the lock: the file is replaced atomically.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import filelock

from sweep.files import WriteFailed, atomic_write_json
from sweep.layout import LEASE_FILE

LOCK_FILE = f".{LEASE_FILE}.lock"
LOCK_TIMEOUT_S = 60.0  # the lock is held for one read and one write
SQUEUE_TTL_S = 5.0  # one squeue call answers for every lease read within this time

log = logging.getLogger("sweep.lease")


class LeaseHeld(Exception):
    """Another live owner runs the cell; `holder` is its lease."""

    def __init__(self, holder: Mapping[str, Any]) -> None:
        super().__init__(describe(holder))
        self.holder = dict(holder)


def read_lease(cell_dir: Path) -> dict[str, Any] | None:
    """The cell's lease, or None when there is none (or it cannot be parsed)."""
    try:
        lease = json.loads((Path(cell_dir) / LEASE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return lease if isinstance(lease, dict) else None


def pid_alive(pid: int) -> bool:
    """True if `pid` runs on this host; a zombie (exited, not yet reaped) does not."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we know
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


_squeue_cache: tuple[float, frozenset[str] | None] = (float("-inf"), None)


def queued_slurm_jobs() -> frozenset[str] | None:
    """Ids (unique per array task) of every job SLURM still holds — pending, running,
    requeued, completing — or None when squeue is absent or fails (then only the
    heartbeat can tell)."""
    global _squeue_cache
    asked, jobs = _squeue_cache
    if time.monotonic() - asked < SQUEUE_TTL_S:
        return jobs
    try:
        out = subprocess.run(
            ["squeue", "--noheader", "--all", "--format=%A"], capture_output=True, text=True, timeout=30
        )
        jobs = frozenset(out.stdout.split()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        jobs = None
    _squeue_cache = (time.monotonic(), jobs)
    return jobs


def why_free(lease: Mapping[str, Any] | None, now: float | None = None) -> str | None:
    """Why this lease may be taken (absent, released, its owner dead), or None while its
    owner lives."""
    if lease is None:
        return "no lease"
    if lease.get("released") is not None:
        return "released"
    now = time.time() if now is None else now
    job = lease.get("slurm_job_id")
    restarts = _count(os.environ.get("SLURM_RESTART_COUNT"))
    if job and job == os.environ.get("SLURM_JOB_ID") and restarts > _count(lease.get("slurm_restart_count")):
        return f"SLURM job {job} was requeued (restart {restarts}) and runs again"
    queued = queued_slurm_jobs() if job else None
    if queued is not None and str(job) not in queued:
        return f"SLURM job {job} is no longer queued"
    if queued is not None and job != os.environ.get("SLURM_JOB_ID"):
        return None  # a preempted task waits in the queue, its pid gone from this node, to be requeued with its cells
    if lease.get("host") == socket.gethostname() and not pid_alive(int(lease.get("pid") or -1)):
        return f"its process {lease.get('pid')} on {lease.get('host')} is gone"
    if "token" not in lease and not job and lease.get("host") != socket.gethostname():
        return "a started.json from before leases, whose owner on another host cannot be checked"
    heartbeat, stale_after = lease.get("heartbeat"), lease.get("stale_after_s")
    if heartbeat is not None and stale_after is not None and now - float(heartbeat) > float(stale_after):
        return f"no heartbeat for {now - float(heartbeat):.0f} s (stale after {float(stale_after):.0f} s)"
    return None


def _count(value: Any) -> int:
    """SLURM_RESTART_COUNT as a number: unset outside SLURM and before a first requeue."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def describe(lease: Mapping[str, Any], now: float | None = None) -> str:
    """Who holds it, as a person reads it: pid 12 on node3, SLURM job 45 (restart 1), heartbeat 8 s ago."""
    now = time.time() if now is None else now
    parts = [f"pid {lease.get('pid')} on {lease.get('host')}"]
    if lease.get("slurm_job_id"):
        parts.append(f"SLURM job {lease['slurm_job_id']} (restart {_count(lease.get('slurm_restart_count'))})")
    if lease.get("heartbeat") is not None:
        parts.append(f"heartbeat {now - float(lease['heartbeat']):.0f} s ago")
    return ", ".join(parts)


class Lease:
    """This process's lease on one cell, refreshed by a heartbeat thread until released."""

    def __init__(self, cell_dir: Path, content: dict[str, Any], heartbeat_s: float) -> None:
        self.cell_dir = Path(cell_dir)
        self.content = content
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(heartbeat_s,), daemon=True, name=f"lease-heartbeat {self.cell_dir.name}"
        )
        self._thread.start()

    @classmethod
    def acquire(cls, cell_dir: Path, *, stale_after_s: float, heartbeat_s: float) -> Lease:
        """Take the cell's lease, or raise LeaseHeld when a live owner has it."""
        if not 0 < heartbeat_s < stale_after_s:
            raise ValueError(
                f"sweep.lease needs 0 < heartbeat_s < stale_after_s, got {heartbeat_s} and {stale_after_s}"
            )
        cell_dir = Path(cell_dir)
        try:
            return cls._take(cell_dir, stale_after_s, heartbeat_s)
        except (WriteFailed, filelock.Timeout):  # Timeout is an OSError too
            raise
        except OSError as error:  # the folder or its lock file cannot be made (a full disk, a read-only folder)
            raise WriteFailed.of(cell_dir / LEASE_FILE, error) from error

    @classmethod
    def _take(cls, cell_dir: Path, stale_after_s: float, heartbeat_s: float) -> Lease:
        cell_dir.mkdir(parents=True, exist_ok=True)
        with _lock(cell_dir):
            current = read_lease(cell_dir)
            why = why_free(current)
            if why is None:
                raise LeaseHeld(current)
            if current is not None and current.get("released") is None:
                log.warning("taking over the lease of %s: %s", cell_dir, why)
                if not why.startswith("no heartbeat"):  # its owner is gone for sure, not only silent
                    _remove_temporaries(cell_dir)
            now = time.time()
            content = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
                "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
                "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
                "token": secrets.token_hex(8),
                "started": now,
                "heartbeat": now,
                "stale_after_s": float(stale_after_s),
                "released": None,
            }
            atomic_write_json(cell_dir / LEASE_FILE, content)
        return cls(cell_dir, content, heartbeat_s)

    def release(self, *, forget: bool = False) -> None:
        """Let go: mark the lease released (kept as the cell's history), or with `forget`
        remove it (the cell never really started, e.g. bad input: it stays pending). Where
        the released lease cannot be written (a full disk) it is removed instead: a lease
        left held would show the cell as running for as long as this process lives."""
        self._stop.set()
        self._thread.join()
        with _lock(self.cell_dir):
            if not self._still_mine():
                return
            if not forget:
                try:
                    atomic_write_json(self.cell_dir / LEASE_FILE, {**self.content, "released": time.time()})
                    return
                except OSError as error:
                    log.warning("%s; removing the lease instead", error)
            try:
                (self.cell_dir / LEASE_FILE).unlink(missing_ok=True)
            except OSError as error:
                raise WriteFailed.of(self.cell_dir / LEASE_FILE, error) from error

    def refresh(self) -> bool:
        """Write a new heartbeat; False (and a warning) if someone took the lease over —
        which only happens after this process missed heartbeats for stale_after_s."""
        with _lock(self.cell_dir):
            if not self._still_mine():
                log.warning("lost the lease of %s to %s", self.cell_dir, describe(read_lease(self.cell_dir) or {}))
                return False
            self.content["heartbeat"] = time.time()
            atomic_write_json(self.cell_dir / LEASE_FILE, self.content)
        return True

    def is_mine(self) -> bool:
        """Whether this process still holds the lease (checked under the lock). A cell asks
        before it writes its record, so an owner that was taken over never writes one."""
        with _lock(self.cell_dir):
            return self._still_mine()

    def _still_mine(self) -> bool:
        current = read_lease(self.cell_dir)
        return current is not None and current.get("token") == self.content["token"]

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if not self.refresh():
                    return
            except (OSError, filelock.Timeout) as error:  # a hiccup of the filesystem: try again next beat
                log.warning("could not refresh the lease of %s: %s", self.cell_dir, error)


def _remove_temporaries(cell_dir: Path) -> None:
    """A dead owner killed inside an atomic write (sweep.files.atomic_write_bytes: SIGKILL,
    a lost node) leaves its `.<name>.<random>.tmp` behind, and nothing else would ever remove
    it. Taking over (under the lock) makes this process the folder's only writer, so every
    such file there is a dead writer's."""
    for tmp in cell_dir.glob(".*.tmp"):
        log.info("removing %s, left by the dead owner's interrupted write", tmp)
        tmp.unlink(missing_ok=True)


def _lock(cell_dir: Path) -> filelock.FileLock:
    return filelock.FileLock(cell_dir / LOCK_FILE, timeout=LOCK_TIMEOUT_S)
