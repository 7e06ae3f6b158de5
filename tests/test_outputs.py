"""Large outputs (export directories, GGUF files, eval directories) are written under a temporary name and renamed:
a process killed (SIGKILL) while writing one leaves the destination as it was, and the next write of the same
destination removes what the killed one left — the user's previous output put back if the kill fell between
moving it aside and renaming the new one onto it — while never touching a live process's temporaries."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from longsearch.atomic import atomic_dir, destination_exists, sweep_stale
from longsearch.factors import RopeFactors
from longsearch.models import load_config, model_geometry


def _factors(model_dir: str, path: Path, method: str) -> Path:
    g = model_geometry(load_config(model_dir))
    RopeFactors.from_method(method, g, 4 * g.original_length).save(path)
    return path


def _cli(*args: str, fault: str | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "LONGSEARCH_FAULT"}
    if fault:
        env["LONGSEARCH_FAULT"] = fault
    p = subprocess.run([sys.executable, "-m", "longsearch.cli", *args], env=env, capture_output=True, text=True, timeout=300)
    return p.returncode


def _leftovers(out: Path) -> list[str]:
    return sorted(e.name for e in out.parent.iterdir() if e.name.startswith(f".{out.name}."))


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_export_killed_before_its_rename_leaves_nothing_and_the_next_export_cleans_up(tmp_path, tiny_byte_llama_dir):
    f = _factors(tiny_byte_llama_dir, tmp_path / "yarn.json", "yarn")
    out = tmp_path / "exported"
    args = ("export", str(f), "--format", "hf", "--model-dir", tiny_byte_llama_dir, "--out", str(out))
    assert _cli(*args, fault="dir:1:before:kill") == -9
    assert not out.exists()
    left = _leftovers(out)
    assert len(left) == 1 and left[0].startswith(f".exported.tmp~{socket.gethostname()}~")  # the weights' copy
    assert (out.parent / left[0] / "model.safetensors").exists()

    assert _cli(*args) == 0
    assert _leftovers(out) == []
    clean = tmp_path / "clean"
    assert _cli("export", str(f), "--format", "hf", "--model-dir", tiny_byte_llama_dir, "--out", str(clean)) == 0
    assert _tree(out) == _tree(clean)


def test_replacement_killed_between_renames_gives_the_previous_export_back(tmp_path, tiny_byte_llama_dir):
    fa = _factors(tiny_byte_llama_dir, tmp_path / "pi.json", "pi")
    fb = _factors(tiny_byte_llama_dir, tmp_path / "yarn.json", "yarn")
    out = tmp_path / "exported"
    base = ("--format", "hf", "--model-dir", tiny_byte_llama_dir, "--out", str(out))
    assert _cli("export", str(fa), *base) == 0
    first = _tree(out)
    assert _cli("export", str(fb), *base, "--force", fault="dir:1:aside:kill") == -9
    assert not out.exists()  # the kill fell between the two renames
    assert any(n.startswith(".exported.old~") for n in _leftovers(out))

    # without --force the restored previous export counts as existing: refused, and it is intact
    assert _cli("export", str(fb), *base) == 2
    assert _tree(out) == first and _leftovers(out) == []
    assert json.loads(fa.read_text())["long_factor"] != json.loads(fb.read_text())["long_factor"]
    assert json.loads((out / "longsearch_factors.json").read_text())["long_factor"] == json.loads(fa.read_text())["long_factor"]

    assert _cli("export", str(fb), *base, "--force") == 0
    assert json.loads((out / "longsearch_factors.json").read_text())["long_factor"] == json.loads(fb.read_text())["long_factor"]
    assert _leftovers(out) == []


def test_gguf_killed_before_its_rename(tmp_path):
    pytest.importorskip("gguf")
    out = tmp_path / "testbed.gguf"
    assert _cli("testbed", "gguf", "--out", str(out), fault="dir:1:before:kill") == -9
    assert not out.exists() and len(_leftovers(out)) == 1
    assert _cli("testbed", "gguf", "--out", str(out)) == 0
    assert out.stat().st_size > 0 and _leftovers(out) == []


def test_sweep_leaves_live_and_foreign_temporaries_alone(tmp_path):
    out = tmp_path / "report"
    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_tmp = tmp_path / f".report.tmp~{host}~{sleeper.pid}~abc"
        foreign_tmp = tmp_path / f".report.tmp~another-host~{dead.pid}~abc"
        dead_tmp = tmp_path / f".report.tmp~{host}~{dead.pid}~abc"
        other_name = tmp_path / f".reports.tmp~{host}~{dead.pid}~abc"  # another destination's
        for d in (live_tmp, foreign_tmp, dead_tmp, other_name):
            d.mkdir()
        done = sweep_stale(out)
        assert len(done) == 1 and dead_tmp.name in done[0]
        assert live_tmp.exists() and foreign_tmp.exists() and other_name.exists() and not dead_tmp.exists()
        assert not destination_exists(out)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_atomic_dir_error_keeps_the_old_output(tmp_path):
    out = tmp_path / "d"
    with atomic_dir(out) as t:
        (t / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as t:
        (t / "a").write_text("new")
        raise RuntimeError("boom")
    assert (out / "a").read_text() == "old" and _leftovers(out) == []
