"""A real Ray cluster: ``ray start --head`` on 127.0.0.1 (token authentication, Ray's default since 2.59) and a
second node, a search through ``--address`` whose second node is killed mid-run, against a local run.

The test starts its own head node and node with their own temp dir and ports, and stops only the processes
it started (every Ray process of that temp dir), never the machine's other Ray sessions.
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
from pathlib import Path

import pytest
from helpers import evolve_args

from longsearch.workers import is_this_machine, ray_auth_hint

RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _procs_with(text: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and int(pid) != os.getpid():
            out.append(int(pid))
    return out


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(RAY_USAGE_STATS_ENABLED="0", COLUMNS="120", **extra)
    return env


@pytest.fixture
def cluster():
    """A head node and a second node on 127.0.0.1, one CPU each; yields (address, second node's raylet port)."""
    if RAY is None:
        pytest.skip("the ray command is not installed")
    temp = tempfile.mkdtemp(prefix="lsc-", dir="/tmp")  # short: Ray's unix sockets live under it
    port, node_port = _free_port(), _free_port()
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run(
            [
                RAY,
                "start",
                "--head",
                "--port",
                str(port),
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                "1",
                "--temp-dir",
                temp,
                "--include-dashboard",
                "false",
                "--disable-usage-stats",
            ],
            env=_env(),
            check=True,
            capture_output=True,
            timeout=120,
        )
        # joining as a node needs the token mode set, as Ray documents for `ray start --address`
        subprocess.run(
            [
                RAY,
                "start",
                "--address",
                address,
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                "1",
                "--node-manager-port",
                str(node_port),
                "--disable-usage-stats",
            ],
            env=_env(RAY_AUTH_MODE="token"),
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield address, node_port
    finally:
        _kill(_procs_with(temp))
        time.sleep(1)
        _kill(_procs_with(temp))
        shutil.rmtree(temp, ignore_errors=True)


def _journal(run: Path) -> dict:
    out = {}
    for line in (run / "journal.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[(r["kind"], r["id"])] = (r["score"], r["lam"], r.get("m"), r.get("failed", False))
    return out


def test_search_on_a_real_cluster_survives_a_lost_node_and_equals_a_local_run(cluster, tiny_byte_llama_dir, tmp_path):
    model_dir = tiny_byte_llama_dir
    address, node_port = cluster
    local = tmp_path / "local"
    done = subprocess.run(
        [sys.executable, "-m", "longsearch.cli", *evolve_args(model_dir, local, workers=2)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    remote = tmp_path / "remote"
    log = open(tmp_path / "remote.log", "w")
    # RAY_AUTH_MODE unset: longsearch finds the cluster on this machine and uses its token, as `ray` does
    proc = subprocess.Popen(
        [sys.executable, "-m", "longsearch.cli", *evolve_args(model_dir, remote, "--address", address, workers=2)],
        env=_env(),
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
        raylet = _procs_with(f"--node_manager_port={node_port}")
        assert raylet, "the second node's raylet is not running"
        _kill(raylet)  # the second node is lost mid-run, with the worker it held
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
