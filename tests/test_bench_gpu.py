"""bench/gpu.py (the GPU run, never in CI) checked on a CPU at small sizes: --smoke runs its search, its comparison
with PI, NTK and YaRN, and its scoring-memory probe, and writes the report saying no GPU was used."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_bench_runs_at_small_sizes_on_a_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    env = {k: v for k, v in os.environ.items() if k != "LONGSEARCH_FAULT"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--out", str(out), "--work", str(tmp_path / "work")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, start_new_session=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = out.read_text()
    assert "No GPU was used" in report
    for method in ("none", "pi", "ntk", "yarn", "run"):  # the searched factors are labelled after the run directory
        for length in ("512", "1k"):  # each method served both ways (per forward, long factors everywhere)
            assert re.search(rf"^\| {method} \| (per-forward|long-everywhere|every) \| {length} \|", report, re.M), report
    assert "| 512 |" in report and "process RSS" in report
    assert "longsearch evolve --model" in report and "longsearch eval --model" in report


def test_without_a_gpu_the_full_run_says_so_and_writes_nothing(tmp_path):
    if torch.cuda.is_available():
        return  # a machine with a GPU runs the real thing
    out = tmp_path / "gpu.md"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "no GPU here" in p.stdout and not out.exists()
