"""``longsearch info`` through the real entry point (cli.main) on local configs: output and exit codes."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import transformers as T

from longsearch import cli
from longsearch import models as M
from longsearch.info import info_report
from longsearch.rope import RopeGeometry


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["longsearch", *args])
    monkeypatch.setenv("COLUMNS", "160")
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def llama3_dir(tmp_path):
    """A Llama-3-8B-shaped config (no weights: info reads only the config)."""
    path = tmp_path / "llama3"
    T.LlamaConfig(
        hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0
    ).save_pretrained(path)
    return path


@pytest.fixture()
def phi3_dir(tmp_path):
    """Phi-3-mini-shaped: original window 4096 at top level, sliding_window 2047 (which must be ignored)."""
    path = tmp_path / "phi3"
    T.Phi3Config(
        hidden_size=3072,
        num_attention_heads=32,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        sliding_window=2047,
    ).save_pretrained(path)
    return path


def expected_tcd(d: int, base: float, length: int) -> int:
    return math.ceil((d / 2) * math.log(length / (2 * math.pi)) / math.log(base))


def row_of(out: str, index: int) -> list[str]:
    for line in out.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        cells = [c for c in cells if c]
        if cells and cells[0].split()[0] == str(index):
            return cells
    raise AssertionError(f"no table row {index} in:\n{out}")


def test_info_llama3(monkeypatch, capsys, llama3_dir):
    code, out, err = run_cli(monkeypatch, capsys, "info", "--model", str(llama3_dir), "--target", "128k")
    assert code == 0, err
    assert expected_tcd(128, 500000.0, 8192) == 35
    assert "d_tcd             35" in out
    assert "[24, 35]" in out
    assert "rotary dim d      128" in out and "base b            500000" in out
    assert "original window L 8192" in out and "scale s           16" in out
    row0, row35, row63 = row_of(out, 0), row_of(out, 35), row_of(out, 63)
    assert "d_tcd" in row35[0]
    assert row0[1] == "6.3" and row0[2] == "no"  # period 2π
    assert row35[2] == "yes" and row_of(out, 34)[2] == "no"
    assert row0[3:] == ["16.0000", "1.0000", "1.0000", "1.0000"]  # PI, NTK, YaRN, Llama-3
    assert row63[3:] == ["16.0000", "16.0000", "16.0000", "16.0000"]


def test_info_phi3_ignores_sliding_window(monkeypatch, capsys, phi3_dir):
    code, out, _ = run_cli(monkeypatch, capsys, "info", "-m", str(phi3_dir), "-t", "128k")
    assert code == 0
    assert "original window L 4096" in out
    assert f"d_tcd             {expected_tcd(96, 10000.0, 4096)}" in out  # 34; sliding_window 2047 would give 31
    assert expected_tcd(96, 10000.0, 4096) == 34 and expected_tcd(96, 10000.0, 2047) == 31


@pytest.mark.parametrize(
    "target,message",
    [("4k", "not above the original window"), ("2k", "not above the original window"), ("12q", "cannot read the length")],
)
def test_info_bad_target_exits_2_with_one_line(monkeypatch, capsys, llama3_dir, target, message):
    # 4k is below Llama-3's 8192 window; 2k too; 12q is not a length
    code, out, err = run_cli(monkeypatch, capsys, "info", "--model", str(llama3_dir), "--target", target)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err + out


def test_info_target_equal_to_window_is_refused(monkeypatch, capsys, llama3_dir):
    code, _, err = run_cli(monkeypatch, capsys, "info", "--model", str(llama3_dir), "--target", "8192")
    assert code == 2 and "not above the original window of 8192" in err


def test_info_unknown_path_and_missing_testbed(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "info", "--model", str(tmp_path / "nowhere"), "--target", "128k")
    assert code == 2 and "no model directory" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(M, "TESTBED_DIR", tmp_path / "missing")
    code, _, err = run_cli(monkeypatch, capsys, "info", "--target", "128k")
    assert code == 2 and "testbed model is missing" in err


def test_info_no_rope_model(monkeypatch, capsys, tmp_path):
    T.GPT2Config(n_layer=1).save_pretrained(tmp_path / "gpt2")
    code, _, err = run_cli(monkeypatch, capsys, "info", "--model", str(tmp_path / "gpt2"), "--target", "128k")
    assert code == 2 and "no rotary position embedding" in err


def test_info_report_values():
    g = RopeGeometry(96, 10000.0, 4096)
    r = info_report(g, 131072)
    assert r.scale == 32.0 and r.critical_index == 34
    assert r.beyond_window.sum() == g.n_freq - 34
    assert set(r.lambdas) == {"pi", "ntk", "yarn", "llama3"} and all(v.shape == (48,) for v in r.lambdas.values())
    assert r.attention["yarn"] == pytest.approx(0.1 * math.log(32) + 1)


def test_info_subprocess_exit_code(tmp_path, llama3_dir):
    """The installed entry point end to end: a good run, then a bad target as one line and exit code 2."""
    env = dict(os.environ, COLUMNS="160", OMP_NUM_THREADS="1")
    good = subprocess.run(
        [sys.executable, "-m", "longsearch.cli", "info", "--model", str(llama3_dir), "--target", "1m"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert good.returncode == 0, good.stderr
    assert "scale s           128" in good.stdout and "d_tcd             35" in good.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "longsearch.cli", "info", "--model", str(llama3_dir), "--target", "1k"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "not above the original window" in bad.stderr


def _layer_rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│") if c.strip()]
        if cells and cells[0] in ("sliding_attention", "full_attention", "all"):
            rows[cells[0]] = cells
    return rows


def test_info_shows_the_rope_of_each_layer_type(monkeypatch, capsys, tmp_path):
    """Gemma 3 (270M's shape): 15 sliding layers with a local base of 10k are left alone, 3 global ones with base 1M
    are what λ rescales (models.apply_rope patches the full-attention type only)."""
    path = tmp_path / "gemma3"
    T.Gemma3TextConfig(
        hidden_size=640,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
        max_position_embeddings=32768,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        },
    ).save_pretrained(path)
    code, out, err = run_cli(monkeypatch, capsys, "info", "--model", str(path), "--target", "128k")
    assert code == 0, err
    assert "base b            1e+06" in out and "d_tcd             80" in out
    rows = _layer_rows(out)
    assert rows["sliding_attention"][1:] == ["15", "10000", "256", "512", "default", "no"]
    assert rows["full_attention"][1:] == ["3", "1e+06", "256", "–", "default", "yes"]


def test_info_a_model_whose_layers_share_one_rope(monkeypatch, capsys, llama3_dir):
    code, out, _ = run_cli(monkeypatch, capsys, "info", "--model", str(llama3_dir), "--target", "128k")
    assert code == 0
    assert _layer_rows(out)["all"][1:] == ["32", "500000", "128", "–", "default", "yes"]
