"""Fault injection: a run killed (SIGKILL) at a write of every kind, or stopped by a full disk, resumes to exactly
the run that was never interrupted (journal sorted, timing fields aside), without evaluating again anything the
journal holds. Killed while its directory is being created, a run leaves nothing to resume: the same command, run
again, removes what the killed one left and makes the same run.

CI runs a few kill points; ``LONGSEARCH_ALL_FAULTS=1 python -m pytest -q tests/test_faults.py`` runs them all
(about 40 s each on a 2-core machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import evolve_args

pytest.importorskip("ray")

from longsearch.factors import load_factors
from longsearch.runs import RunStore

# FILE:N:WHEN:ACTION (see longsearch/faults.py); N counts writes of that file in the killed process
CREATION_POINTS = [  # the run directory is built under a temporary name: killed here, there is no run yet
    "config.json:1:after:kill",  # creation begun: config.json alone
    "manifest.json:1:after:kill",  # the search needles saved
    "config.json:2:after:kill",  # everything written, not yet renamed into place
]
ALL_POINTS = [
    *CREATION_POINTS,
    "dir:1:after:kill",  # the run directory in place, nothing scored yet
    "journal.jsonl:3:after:kill",  # mid generation 0
    "journal.jsonl:9:partial:kill",  # half a journal line on disk
    "baselines.json:1:after:kill",
    "checkpoint:1:before:kill",  # generation 0 scored and journaled, its checkpoint not yet renamed
    "checkpoint:2:after:kill",  # checkpoint written, best.json not yet
    "best.json:2:before:kill",
    "journal.jsonl:24:after:kill",  # the last generation's last line (8 + 4 baselines + 3 × 4), before its checkpoint
    "checkpoint:4:after:kill",  # search done, held-out not started
    "manifest.json:2:before:kill",  # the held-out needles half saved (their manifest not yet renamed)
    "final.json:1:before:kill",  # held-out scored, final.json not written
    "plot:1:before:kill",
    "plot:2:after:kill",
    "best.json:5:after:kill",  # the very last write
]
CI_POINTS = ["journal.jsonl:9:partial:kill", "final.json:1:before:kill"]
POINTS = ALL_POINTS if os.environ.get("LONGSEARCH_ALL_FAULTS") else CI_POINTS


def _evolve(model_dir: str, out: Path, log: Path, fault: str | None = None, resume: bool = False) -> int:
    env = {k: v for k, v in os.environ.items() if k != "LONGSEARCH_FAULT"}
    env["COLUMNS"] = "120"
    if fault:
        env["LONGSEARCH_FAULT"] = fault
    args = ["evolve", "--resume", str(out)] if resume else evolve_args(model_dir, out, samples=4)
    p = subprocess.Popen(
        [sys.executable, "-m", "longsearch.cli", *args], stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    try:
        return p.wait(timeout=600)
    finally:
        try:  # the killed driver's Ray processes share its process group
            os.killpg(p.pid, 9)
        except ProcessLookupError:
            pass


def _comparable(run: Path) -> list[dict]:
    contents = RunStore(run).read_journal()
    last = list(contents.candidates().values()) + list(contents.baselines().values())
    return sorted((r.comparable() for r in last), key=lambda d: (d["kind"], d["id"] if d["id"] is not None else -1, d["name"] or ""))


@pytest.fixture(scope="module")
def reference(tiny_byte_llama_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "reference"
    rc = _evolve(tiny_byte_llama_dir, out, out.with_suffix(".log"))
    assert rc == 0, out.with_suffix(".log").read_text()[-3000:]
    return out


def _journal_lines(run: Path) -> list[dict]:
    p = run / "journal.jsonl"
    if not p.exists():
        return []
    data = p.read_bytes()
    return [json.loads(x) for x in data[: data.rfind(b"\n") + 1].splitlines() if x.strip()]


@pytest.mark.parametrize("fault", POINTS)
def test_killed_at_a_write_then_resumed_equals_uninterrupted(fault, reference, tiny_byte_llama_dir, tmp_path):
    run = tmp_path / "run"
    rc = _evolve(tiny_byte_llama_dir, run, tmp_path / "killed.log", fault=fault)
    assert rc == -9, f"the fault {fault} never fired (rc {rc}): " + (tmp_path / "killed.log").read_text()[-2000:]
    before = _journal_lines(run)
    if fault in CREATION_POINTS:  # no run to resume: the same command again, which removes the leftover
        assert not run.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.tmp~")]
        rc = _evolve(tiny_byte_llama_dir, run, tmp_path / "resumed.log")
        assert rc == 0, (tmp_path / "resumed.log").read_text()[-3000:]
        assert "left by an interrupted write" in (tmp_path / "resumed.log").read_text()
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.")]
    else:
        rc = _evolve(tiny_byte_llama_dir, run, tmp_path / "resumed.log", resume=True)
        assert rc == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    after = _journal_lines(run)
    assert after[: len(before)] == before  # nothing journaled was rewritten
    ids = [(d["kind"], d["id"], d["name"]) for d in after]
    assert len(ids) == len(set(ids)), "an evaluation in the journal was run again"
    assert _comparable(run) == _comparable(reference)
    a, b = load_factors(run), load_factors(reference)
    assert np.array_equal(a.long_factor, b.long_factor) and a.attention_factor == b.attention_factor
    assert json.loads((run / "final.json").read_text())["rows"] == json.loads((reference / "final.json").read_text())["rows"]
    for name in ("progress.png", "factors.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.rglob(".*.tmp")), "a temporary file was left behind"


def test_a_full_disk_stops_the_run_with_a_message_and_it_resumes(reference, tiny_byte_llama_dir, tmp_path):
    run = tmp_path / "run"
    rc = _evolve(tiny_byte_llama_dir, run, tmp_path / "full.log", fault="checkpoint:2:before:enospc")
    text = (tmp_path / "full.log").read_text()
    assert rc == 2, text[-3000:]
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
    assert "disk is full" in last and f"--resume {run}" in last, last
    assert not list(run.rglob(".*.tmp"))
    rc = _evolve(tiny_byte_llama_dir, run, tmp_path / "resumed.log", resume=True)
    assert rc == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert _comparable(run) == _comparable(reference)
