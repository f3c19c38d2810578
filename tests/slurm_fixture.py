"""Start/stop the local single-node SLURM cluster (launchers/local-slurm) from tests.

Reusable by any test module (or a conftest.py)::

    from slurm_fixture import start_local_slurm, stop_local_slurm, local_slurm_unavailable

    env = start_local_slurm(state_dir)   # {"SLURM_CONF": ".../slurm.conf"}
    os.environ.update(env)               # submitit's sbatch/sacct/... inherit it
    ...
    stop_local_slurm(state_dir)

The cluster needs root and the Debian packages from launchers/local-slurm/install.sh.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_DIR = REPO_ROOT / "launchers" / "local-slurm"
INSTALL_HINT = "run launchers/local-slurm/install.sh (as root) to install SLURM, munge and MariaDB"

# The daemons start.sh starts, each with STATE_DIR/pids/<name>.pid.
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")


class LocalSlurmError(RuntimeError):
    """start.sh/stop.sh failed; the message carries their output."""


def local_slurm_unavailable() -> str | None:
    """Why the local cluster cannot run here, or None if it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the local SLURM cluster must be started as root (it runs munged, mariadbd and the slurm daemons)"
    missing = [
        b
        for b in ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "munged", "mariadbd")
        if shutil.which(b) is None and not os.access(f"/usr/sbin/{b}", os.X_OK)
    ]
    if missing:
        return f"SLURM is not installed (missing: {', '.join(missing)}): {INSTALL_HINT}"
    return None


def _run(script: str, state_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    cmd = ["bash", str(LAUNCHER_DIR / script), str(state_dir)]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise LocalSlurmError(
            f"{script} timed out after {timeout:.0f}s\n--- stdout:\n{e.stdout}\n--- stderr:\n{e.stderr}"
        ) from e
    if proc.returncode != 0:
        raise LocalSlurmError(
            f"{script} {state_dir} failed (exit {proc.returncode})\n"
            f"--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}\n"
            f"(daemon logs: {state_dir}/log)"
        )
    return proc


def _recorded_pids(state_dir: Path) -> dict[str, int]:
    pids = {}
    for name in DAEMONS:
        f = Path(state_dir) / "pids" / f"{name}.pid"
        try:
            pids[name] = int(f.read_text().strip())
        except (OSError, ValueError):
            pass
    return pids


def _running(pid: int) -> bool:
    """True if pid exists and is not a zombie (exited, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_local_slurm(state_dir: str | os.PathLike, timeout: float = 180) -> dict[str, str]:
    """Start a fresh cluster with its state in ``state_dir``.

    Returns the environment variables a client needs (``{"SLURM_CONF": ...}``):
    add them to ``os.environ`` (submitit's subprocesses inherit it) or to a
    subprocess's ``env``. Raises LocalSlurmError with start.sh's output on failure
    (start.sh then has already stopped whatever it had started).
    """
    state_dir = Path(state_dir).resolve()
    try:
        _run("start.sh", state_dir, timeout)
    except LocalSlurmError:
        # start.sh stops what it started when it fails, but not when it is
        # killed by our timeout: make sure nothing is left behind.
        try:
            _run("stop.sh", state_dir, 60)
        except LocalSlurmError:
            pass
        raise
    conf = state_dir / "slurm.conf"
    if not conf.is_file():
        raise LocalSlurmError(f"start.sh succeeded but {conf} is missing")
    return {"SLURM_CONF": str(conf)}


def stop_local_slurm(state_dir: str | os.PathLike, timeout: float = 120) -> None:
    """Stop the daemons start_local_slurm started in ``state_dir``; idempotent.

    Raises LocalSlurmError if stop.sh fails or one of those daemons survives it.
    """
    state_dir = Path(state_dir).resolve()
    before = _recorded_pids(state_dir)
    _run("stop.sh", state_dir, timeout)
    alive = {name: pid for name, pid in before.items() if _running(pid)}
    if alive:
        raise LocalSlurmError(f"stop.sh left daemons running: {alive}")
