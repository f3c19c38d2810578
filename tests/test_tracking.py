"""W&B per cell, offline or against a stand-in server on 127.0.0.1 (no real one can run
here): one run per cell in its folder, any W&B failure falling back to offline fast without
costing the cell its record, and no secret in any file a sweep writes."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import FAST, compose_cell
from sweeps import multirun
from wandb_files import OfflineRun

from sweep.cellspec import cell_spec
from sweep.errors import ConfigError
from sweep.record import AXES
from sweep.settings import Wandb
from sweep.tracking import WandbTracker, check_mode, choose_mode, run_id, tracker

pytestmark = pytest.mark.slow  # real W&B runs in offline mode and stand-in servers

SECRETS = {"WANDB_API_KEY": "local-0123456789abcdef0123456789abcdef01234567", "HF_TOKEN": "hf_SeCrEt0123456789"}


@pytest.fixture(scope="module")
def wandb_sweep(tmp_path_factory, cache_dir):
    cwd = tmp_path_factory.mktemp("wandb")
    env = {
        **os.environ,
        "SWEEP_CACHE_DIR": str(cache_dir),
        "WANDB_MODE": "offline",
        **SECRETS,
        "HOME": str(cwd),
    }  # no ~/.netrc: nothing to find a key in but the environment
    result = multirun(
        [
            "model=toy_vit",
            "layer=5,6",
            "intervention=none,shuffle",
            "sweep.name=tracked",
            "logger=wandb",
            "wandb.project=cls-tokens",
            f"+note=token:{SECRETS['HF_TOKEN']}",
        ],
        env,
        cwd,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name, secret in SECRETS.items():  # the sweep prints its plan, with the command line
        assert secret not in result.stdout + result.stderr, f"{name} leaked into the sweep's output"
    return cwd, cwd / "multirun" / "tracked"


def test_every_cell_writes_one_offline_wandb_run_in_its_own_folder(wandb_sweep):
    _, sweep_dir = wandb_sweep
    cells = [p.parent for p in sweep_dir.rglob("result.json")]
    assert len(cells) == 4
    for cell in cells:
        record = json.loads((cell / "result.json").read_text())
        (log,) = cell.glob("wandb/offline-run-*/run-*.wandb")  # exactly one run, inside the cell's folder
        assert log.name == f"run-{run_id('tracked', record['cell_id'])}.wandb"
        raw = log.read_bytes()  # protobuf keeps strings and JSON values verbatim
        for expected in (
            "tracked",
            record["name"],
            record["intervention"],
            "cls-tokens",  # group, name, job type
            "attn_implementation",  # the resolved config
            f"{record['metrics']['accuracy']}",
        ):  # the summary
            assert expected.encode() in raw, expected
        # the packages the record pins ride in the config; wandb's own requirements.txt (a
        # scan of every installed package, most of a cell's bookkeeping time) is not written
        assert f'"transformers":"{record["versions"]["transformers"]}"'.encode() in raw
        assert not list(cell.glob("wandb/offline-run-*/files/requirements.txt"))
        # what users group and filter by, as top-level config keys beside the nested config
        config = OfflineRun.read(log.parent).config
        assert {axis: config[axis] for axis in AXES} == {axis: record[axis] for axis in AXES}
        assert config["config"]["model"]["name"] == record["model"] and config["config"]["layer"] == record["layer"]
        # and the cell's identity, as its record's `config`: W&B aggregation compares it within a series
        assert config["identity"] == record["config"]


def test_no_secret_reaches_any_file_the_sweep_writes(wandb_sweep):
    cwd, _ = wandb_sweep
    for path in Path(cwd).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for name, secret in SECRETS.items():
                assert secret.encode() not in data, f"{name} leaked into {path}"


def wandb_settings(**values):
    """The `wandb:` settings (as the cell's config has them) with some values changed."""
    node = {
        "project": "p",
        "entity": None,
        "mode": "online",
        "base_url": "https://api.wandb.ai",
        "reachability_timeout_s": 1.0,
        "init_timeout_s": 30.0,
        "finish_timeout_s": 60.0,
        "tags": (),
        "log_outcomes": False,
    }
    return Wandb(**{**node, **values})


def test_online_without_a_key_falls_back_to_offline_and_says_why(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    mode, why = choose_mode(wandb_settings(mode="online", base_url="https://api.wandb.ai"))
    assert mode == "offline" and "no W&B API key" in why


def test_wandb_mode_from_the_environment_wins_over_the_config(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_mode(wandb_settings(mode="online", base_url="x")) == ("disabled", None)


def test_after_online_failed_later_cells_of_the_process_go_straight_offline(monkeypatch):
    import sweep.tracking

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(sweep.tracking, "_online_failed", "W&B failed earlier in this process (...)")
    assert choose_mode(wandb_settings(mode="online", base_url="x")) == (
        "offline",
        "W&B failed earlier in this process (...)",
    )


def test_wandb_mode_must_be_online_offline_or_disabled(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    choices = "is invalid: it must be one of online, offline, disabled"
    with pytest.raises(ConfigError, match=f"wandb.mode=bogus {choices}"):
        choose_mode(wandb_settings(mode="bogus", base_url="x"))
    monkeypatch.setenv("WANDB_MODE", "offline")  # the config's typo fails even where WANDB_MODE wins
    with pytest.raises(ConfigError, match="wandb.mode=bogus"):
        choose_mode(wandb_settings(mode="bogus", base_url="x"))
    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ConfigError, match="WANDB_MODE=bogus"):
        choose_mode(wandb_settings(mode="online", base_url="x"))
    assert check_mode("dryrun", "WANDB_MODE") == "offline"  # wandb's old name for offline


def test_a_bogus_wandb_mode_stops_the_cell_before_any_work(cli_env, tmp_path):
    result = sweep_run(cli_env, tmp_path, "wandb.mode=bogus")
    assert result.returncode == 2
    assert "error: wandb.mode=bogus is invalid: it must be one of online, offline, disabled" in result.stderr
    assert not list(tmp_path.glob("runs/*/*/result.json"))


class FailingRun:
    """A W&B run whose every call fails, as when wandb's service process has died."""

    settings = type("Settings", (), {"sync_dir": "/cell/wandb/run-x"})()

    @property
    def summary(self):
        raise ConnectionResetError("Connection lost")

    def finish(self, exit_code=0):
        raise TimeoutError("Timed out finishing run.")


def test_errors_while_logging_or_finishing_become_one_offline_message(caplog, tmp_path):
    track = WandbTracker("toy-cell", tmp_path, log_outcomes=False)
    track.run = FailingRun()
    track.log_record({"status": "complete"}, None)
    track.log_record({"status": "complete"}, None)
    track.finish(exit_code=0)
    (message,) = [r.getMessage() for r in caplog.records if "W&B:" in r.getMessage()]
    assert "toy-cell's run is offline because logging to W&B failed (ConnectionResetError" in message
    assert "wandb sync /cell/wandb/run-x" in message


def test_an_online_run_failing_mid_run_sends_the_processs_later_cells_straight_offline(caplog, monkeypatch, tmp_path):
    import sweep.tracking

    monkeypatch.setattr(sweep.tracking, "_online_failed", None)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    track = WandbTracker("toy-cell", tmp_path, log_outcomes=False)
    track.run, track.online = FailingRun(), True  # as if wandb.init had succeeded online
    track.finish(exit_code=0)
    mode, why = choose_mode(wandb_settings(mode="online", base_url="x"))
    assert mode == "offline" and "finishing the W&B run (uploading its data) failed (TimeoutError" in why


# A stand-in W&B server on 127.0.0.1 (ephemeral port), one failure mode each:
#   refused        nothing listens (the port is bound, so nothing else can take it)
#   silent         accepts the connection and never answers
#   http-500       answers every request with 500
#   http-401       answers every request with 401 (the server rejects the key)
#   http-429       rate-limits every request: 429 with a Retry-After header
#   malformed-key  would answer, but the key is too short for wandb to even try
#   uploads-hang   accepts the run (resume status, upsert) and never answers the uploads
#   uploads-429    accepts the run, then rate-limits the uploads (429 + Retry-After) mid-run
class StandInServer:
    RETRY_AFTER_S = 30  # longer than the test's timeouts: a client that waits it out fails the test

    def __init__(self, mode: str) -> None:
        self.mode, self.received, self.closed = mode, bytearray(), threading.Event()
        if mode in ("refused", "silent"):
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
            if mode == "silent":
                self.sock.listen(64)
                threading.Thread(target=self._hold, daemon=True).start()
            return
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _hold(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read_forever, args=(conn,), daemon=True).start()

    def _read_forever(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                self.received += data

    def _handler(self) -> type:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.received += self.path.encode() + body
                status, reply = server.reply(body)
                if status is None:
                    server.closed.wait()  # hold the request until the test ends
                    return
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", str(server.RETRY_AFTER_S))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_PUT = do_POST

            def log_message(self, *args) -> None:
                pass

        return Handler

    def reply(self, body: bytes) -> tuple[int | None, bytes]:
        if self.mode in ("http-500", "http-401", "http-429"):
            return int(self.mode[-3:]), b'{"errors": [{"message": "stand-in server says no"}]}'
        if self.mode.startswith("uploads-") and b"RunResumeStatus" in body:
            return 200, b'{"data": {"model": null}}'  # a new run
        if self.mode.startswith("uploads-") and b"UpsertBucket" in body:
            name = json.loads(body)["variables"]["name"]
            bucket = {
                "id": "UnVuOjE=",
                "name": name,
                "displayName": name,
                "historyLineCount": 0,
                "eventsLineCount": 0,
                "config": "{}",
                "summaryMetrics": "{}",
                "project": {"id": "UHJvajox", "name": "sweep", "entity": {"id": "RW50OjE=", "name": "e"}},
            }
            return 200, json.dumps({"data": {"upsertBucket": {"inserted": True, "bucket": bucket}}}).encode()
        if self.mode == "uploads-hang":
            return None, b""
        if self.mode == "uploads-429":
            return 429, b'{"errors": [{"message": "rate limit exceeded"}]}'
        return 200, b'{"data": {}}'

    def __enter__(self) -> StandInServer:
        return self

    def __exit__(self, *exc) -> None:
        self.closed.set()
        if hasattr(self, "http"):
            self.http.shutdown()
            self.http.server_close()
        else:
            self.sock.close()


def sweep_run(env, cwd, *args, **popen):
    command = [sys.executable, "-m", "sweep.run", *FAST, "model=toy_vit", "layer=6", "logger=wandb", *args]
    if popen:
        return subprocess.Popen(command, env=env, cwd=cwd, text=True, **popen)
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def run_folders(cell: Path) -> list[Path]:
    """The cell's W&B run folders (`latest-run` is a link to one of them)."""
    return sorted(p for p in (cell / "wandb").iterdir() if p.is_dir() and not p.is_symlink())


def assert_no_secret_under(folder: Path, env: dict, also: bytes = b"") -> None:
    for name in ("WANDB_API_KEY", "HF_TOKEN"):
        secret = env[name].encode()
        assert secret not in also, f"{name} was sent to the server"
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert secret not in path.read_bytes(), f"{name} leaked into {path}"


FAILURES = ["refused", "silent", "http-500", "http-401", "http-429", "malformed-key", "uploads-hang", "uploads-429"]


@pytest.mark.parametrize("mode", FAILURES)
def test_a_wandb_failure_costs_the_cell_nothing_but_its_dashboard(mode, cli_env, tmp_path):
    """Online against a server that fails: the cell exits 0 with a complete record within
    seconds, says once that its run is offline and how to sync it, and keeps one run folder;
    the secret typed on its command line reaches no file and not the server."""
    key = "too-short" if mode == "malformed-key" else SECRETS["WANDB_API_KEY"]
    env = {k: v for k, v in cli_env.items() if k != "WANDB_MODE"}
    env.update(WANDB_API_KEY=key, HF_TOKEN=SECRETS["HF_TOKEN"], HOME=str(tmp_path))
    with StandInServer(mode) as server:
        started = time.perf_counter()
        result = sweep_run(
            env,
            tmp_path,
            "wandb.mode=online",
            f"wandb.base_url={server.url}",
            "wandb.init_timeout_s=5",
            "wandb.finish_timeout_s=5",
            f"+note={SECRETS['HF_TOKEN']}",
        )
        seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    (cell,) = [p.parent for p in tmp_path.glob("runs/toy_vit/*/result.json")]
    status = json.loads((cell / "result.json").read_text())["status"]
    messages = [line.split(" - ", 1)[-1] for line in output.splitlines() if "W&B:" in line]
    print(f"\n| {mode} | {result.returncode} | {seconds:.1f} | {status} | {messages[0] if messages else ''} |")
    assert status == "complete"
    assert len(messages) == 1 and "offline" in messages[0] and "wandb sync" in messages[0], output
    (folder,) = run_folders(cell)
    assert folder.name.startswith("run-" if mode.startswith("uploads-") else "offline-run-")
    assert (folder / f"run-{run_id(None, json.loads((cell / 'result.json').read_text())['cell_id'])}.wandb").exists()
    if mode not in ("refused", "malformed-key"):
        assert b"/graphql" in server.received  # wandb talked to the configured server, not its default
    assert_no_secret_under(tmp_path, env, bytes(server.received))
    assert seconds < 60, output


def test_a_killed_attempt_and_its_rerun_leave_one_run_folder(cli_env, tmp_path):
    env = {**cli_env, "HOME": str(tmp_path)}  # offline: each attempt writes its own offline-run folder
    with open(tmp_path / "attempt.log", "w") as log:
        attempt = sweep_run(
            {**env, "SWEEP_TEST_PAUSE": "toy_vit-L06=120"}, tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 120
        while "SWEEP_TEST_PAUSE: holding" not in (tmp_path / "attempt.log").read_text():
            assert attempt.poll() is None and time.time() < deadline, (tmp_path / "attempt.log").read_text()
            time.sleep(0.2)
        attempt.send_signal(signal.SIGKILL)
        attempt.wait()
    (cell,) = tmp_path.glob("runs/toy_vit/*")
    assert not (cell / "result.json").exists() and len(run_folders(cell)) == 1
    time.sleep(1)  # a new second: a second folder would get a different name

    rerun = sweep_run(env, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    record = json.loads((cell / "result.json").read_text())
    (folder,) = run_folders(cell)
    (log,) = folder.glob("run-*.wandb")
    assert f"{record['metrics']['accuracy']}".encode() in log.read_bytes()  # the re-run's summary


def test_a_rate_limit_mid_run_costs_a_units_other_cells_no_wait(cli_env, tmp_path):
    """The server accepts the first cell's run, then rate-limits its uploads: that cell's run
    is left for `wandb sync` after finish_timeout, and the unit's other cell and the sweep's
    summary run go straight offline: the server never hears of them."""
    env = {k: v for k, v in cli_env.items() if k != "WANDB_MODE"}
    env.update(WANDB_API_KEY=SECRETS["WANDB_API_KEY"], HOME=str(tmp_path))
    with StandInServer("uploads-429") as server:
        result = multirun(
            [
                "model=toy_vit",
                "layer=5,6",
                "intervention=none",
                "sweep.name=limited",
                "logger=wandb",
                "wandb.mode=online",
                f"wandb.base_url={server.url}",
                "wandb.init_timeout_s=5",
                "wandb.finish_timeout_s=5",
            ],
            env,
            tmp_path,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    sweep_dir = tmp_path / "multirun" / "limited"
    records = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("toy_vit/*/result.json"))]
    assert [r["status"] for r in records] == ["complete", "complete"]
    contacted = [r for r in records if run_id("limited", r["cell_id"]).encode() in server.received]
    assert len(contacted) == 1, output  # the first cell only
    (online,) = run_folders(next(sweep_dir.glob(f"toy_vit/{contacted[0]['name']}-*")))
    assert online.name.startswith("run-")  # its data, for `wandb sync`
    assert "finishing the W&B run (uploading its data) failed" in output
    assert "W&B failed earlier in this process" in output  # why the rest went offline
    offline = [folder for folder in sweep_dir.rglob("offline-run-*") if not folder.is_symlink()]
    assert len(offline) == 2  # the other cell's run and the summary run
    assert b"aggregate" not in bytes(server.received)


def test_wandbs_cache_is_in_the_sweeps_own_folder_wherever_hydra_puts_it(monkeypatch, tmp_path):
    """hydra.sweep.dir elsewhere: W&B's cache and staging go with the sweep, not to
    <cwd>/<sweep.root>/.wandb (a real, disabled W&B run)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)  # restored after the test: the tracker sets them
    cfg = compose_cell("model=toy_vit", "layer=3", "logger=wandb")
    spec = cell_spec(cfg)
    sweep_dir = tmp_path / "elsewhere" / "mine"
    cell_dir = sweep_dir / spec.subdir
    cell_dir.mkdir(parents=True)
    with tracker(cfg, spec, "mine", cell_dir):
        cache, data = os.environ["WANDB_CACHE_DIR"], os.environ["WANDB_DATA_DIR"]
    assert Path(cache) == sweep_dir.resolve() / ".wandb-cache" / "cache"
    assert Path(data) == sweep_dir.resolve() / ".wandb-cache" / "data"
    assert not (tmp_path / "multirun").exists()
