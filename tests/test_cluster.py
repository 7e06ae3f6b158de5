"""A real Ray cluster: ``ray start --head`` on 127.0.0.1 with token authentication (Ray ≥ 2.59 turns it on for
``ray start --head`` when a token exists, as it does on any machine where ``ray.init()`` has run) and a
second node, a search through ``--address`` whose second node is killed mid-run, against a local run.

The test makes its own HOME with a token in it (so token authentication is on whatever the machine holds),
starts its own head node and node, each in a session of its own, with their own temp dir and ports, and stops
only the processes of those two sessions, never the machine's other Ray sessions.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import evolve_args

from longsearch.workers import is_this_machine, ray_auth_hint

RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_of(pid: int) -> int | None:
    """The session id of a live process (None for one that is gone, or a zombie: dead, only not yet reaped —
    in a container whose init does not reap, orphans stay zombies for good)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name: state, ppid, pgrp, session, ...
    return None if fields[0] in ("Z", "X") else int(fields[3])


def _procs_in_session(sid: int) -> list[int]:
    """Every live process of one session. Ray's daemons and workers keep the session of the `ray start` that
    made them (they rename themselves, e.g. ``ray::DashboardAgent``, so their command lines cannot be matched)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid() and _session_of(int(p)) == sid]


def _kill_session(sid: int) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:  # a process may be forking as we look; a killed one takes a moment to die
        pids = _procs_in_session(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.5)


def _env(home: str, **extra: str) -> dict[str, str]:
    """The test's own HOME, so that ``~/.ray/auth_token`` is the token this test made, whatever the machine holds."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(HOME=home, RAY_USAGE_STATS_ENABLED="0", COLUMNS="120", **extra)
    return env


def _ray_start(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``ray start ARGS`` in a session of its own; returns (session id, its output)."""
    proc = subprocess.Popen(
        [RAY, "start", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    return proc.pid, out


@dataclass
class Cluster:
    address: str
    home: str
    head_session: int
    node_session: int


@pytest.fixture
def cluster():
    """A head node and a second node on 127.0.0.1, one CPU each, with token authentication on: the test makes a
    token in its own HOME (``ray get-auth-token --generate``), as a machine that has run Ray before has one, and
    ``ray start --head`` then enables it. Only the two sessions this fixture started are stopped."""
    if RAY is None:
        pytest.skip("the ray command is not installed")
    temp = tempfile.mkdtemp(prefix="lsc-", dir="/tmp")  # short: Ray's unix sockets live under it
    home = tempfile.mkdtemp(prefix="lsh-", dir="/tmp")
    port, node_port = _free_port(), _free_port()
    address = f"127.0.0.1:{port}"
    sessions: list[int] = []
    try:
        made = subprocess.run([RAY, "get-auth-token", "--generate"], env=_env(home), capture_output=True, text=True, timeout=60)
        assert made.returncode == 0 and (Path(home) / ".ray" / "auth_token").is_file(), made.stdout + made.stderr
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
        sid, out = _ray_start(["--head", "--port", str(port), "--temp-dir", temp, "--include-dashboard", "false", *common], _env(home))
        sessions.append(sid)
        assert "Token authentication is enabled" in out, out[-3000:]
        # joining as a node needs the token mode set, as Ray documents for `ray start --address`
        sid, _ = _ray_start(["--address", address, "--node-manager-port", str(node_port), *common], _env(home, RAY_AUTH_MODE="token"))
        sessions.append(sid)
        yield Cluster(address, home, sessions[0], sessions[1])
    finally:
        for sid in sessions:
            _kill_session(sid)
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        for sid in sessions:
            assert not _procs_in_session(sid), f"processes of the test cluster are still running: {_procs_in_session(sid)}"


def _journal(run: Path) -> dict:
    out = {}
    for line in (run / "journal.jsonl").read_text().splitlines():
        r = json.loads(line)
        # a candidate is named by its optimizer id, a validation by its generation, a baseline by its method
        key = r["id"] if r["kind"] == "candidate" else r["generation"] if r["kind"] == "validation" else r["name"]
        assert (r["kind"], key) not in out, f"journal line for {r['kind']} {key} appears twice"
        out[(r["kind"], key)] = (r["score"], r["lam"], r.get("m"), r.get("failed", False))
    return out


def test_search_on_a_real_cluster_survives_a_lost_node_and_equals_a_local_run(cluster, tiny_byte_llama_dir, tmp_path):
    model_dir = tiny_byte_llama_dir
    local = tmp_path / "local"
    done = subprocess.run(
        [sys.executable, "-m", "longsearch.cli", *evolve_args(model_dir, local, workers=2)],
        env=_env(cluster.home),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    remote = tmp_path / "remote"
    log = open(tmp_path / "remote.log", "w")
    # RAY_AUTH_MODE unset: longsearch finds the cluster on this machine and uses its token, as `ray` does
    proc = subprocess.Popen(
        [sys.executable, "-m", "longsearch.cli", *evolve_args(model_dir, remote, "--address", cluster.address, workers=2)],
        env=_env(cluster.home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if (remote / "journal.jsonl").is_file() and len((remote / "journal.jsonl").read_text().splitlines()) >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "remote.log").read_text()[-3000:]
        node = _procs_in_session(cluster.node_session)
        assert node, "the second node is not running"
        _kill_session(cluster.node_session)  # the second node is lost mid-run: its raylet, agents and the worker it held
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = (tmp_path / "remote.log").read_text()
    assert rc == 0, text[-3000:]
    final = json.loads((remote / "final.json").read_text())
    assert final["failed"] == []
    a, b = _journal(remote), _journal(local)
    assert a.keys() == b.keys() and all(not v[3] for v in a.values())  # every candidate scored, none failed
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}  # the same scores as the local run
    assert json.loads((remote / "best.json").read_text())["long_factor"] == json.loads((local / "best.json").read_text())["long_factor"]
    workers = {json.loads(x).get("worker") for x in (remote / "journal.jsonl").read_text().splitlines()}
    assert {"w0", "w1"} <= workers  # both nodes worked before the loss


def test_which_addresses_get_this_machines_token():
    assert is_this_machine("127.0.0.1:6379") and is_this_machine("localhost:6379")
    assert is_this_machine("ray://127.0.0.1:10001")
    assert not is_this_machine("203.0.113.7:6379")  # TEST-NET-3: never this machine's
    assert not is_this_machine("no-such-host.invalid:6379")


def test_auth_hint_says_what_to_set(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    hint = ray_auth_hint()
    assert "RAY_AUTH_MODE=token" in hint and "~/.ray/auth_token" in hint
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert "must be the cluster's own" in ray_auth_hint()
