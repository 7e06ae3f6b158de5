"""Eval as the engines serve: per-forward (transformers) and long-everywhere (vLLM, llama.cpp) rows, defaults that
fit the model (template auto, a segment that leaves NBCE room, the window in the default lengths). On the shipped
testbed (window 256), a couple of documents per cell."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from longsearch.errors import InputError
from longsearch.evaluate import build_methods, default_lengths, parse_serving, resolve_lengths, run_eval, write_eval
from longsearch.factors import RopeFactors
from longsearch.models import load_model
from longsearch.needles import build_needle_set
from longsearch.rope import Rescale, rescale
from longsearch.scoring import score

torch.set_num_threads(1)

TARGET = 2048
LENGTHS = [256, 512]


@pytest.fixture(scope="module")
def lm():
    return load_model(None, device="cpu", dtype="float32")


def _searched(g) -> RopeFactors:
    """Searched-like factors for 8×: λ = 1 on the fastest frequencies, rising to 9 (ones as short factors)."""
    lam = np.concatenate([np.ones(4), np.geomspace(1.1, 9.0, g.n_freq - 4)])
    return RopeFactors.searched(g, TARGET, Rescale(lam, 1.2), {"method": "test"})


@pytest.fixture(scope="module")
def served(lm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    path = tmp / "searched.json"
    _searched(lm.geometry).save(path)
    methods = build_methods(lm.geometry, ["yarn", "dynamic-ntk"], [path], target_length=TARGET)
    result = run_eval(lm, methods, LENGTHS, depths=[0.5], samples=2, cost_repeats=1)  # every default else: template auto
    paths = write_eval(result, tmp / "out")
    return result, methods, tmp / "out", paths


def _needles(lm, result, n):
    return build_needle_set(lm.tokenizer, n, 2, template=result.settings["template"], seed=777, depths=[0.5], haystack="heldout")


def test_long_everywhere_applies_the_long_factors_inside_the_window(lm, served):
    result, methods, _, _ = served
    assert result.labels == [
        "none",
        "yarn",
        "dynamic-ntk (per-forward)",
        "dynamic-ntk (long-everywhere)",
        "searched (per-forward)",
        "searched (long-everywhere)",
    ]
    factors = next(m.spec for m in methods if m.label == "searched (per-forward)")
    assert isinstance(factors, RopeFactors)
    ns = _needles(lm, result, 256)
    long, short = score(lm, ns, factors.long), score(lm, ns, Rescale(np.ones(lm.geometry.n_freq), factors.attention_factor))
    served_cell, switched = result.cell("searched (long-everywhere)", 256, 0.5), result.cell("searched (per-forward)", 256, 0.5)
    assert served_cell.nll == pytest.approx(long.nll, rel=1e-6) and served_cell.accuracy == long.accuracy
    assert switched.nll == pytest.approx(short.nll, rel=1e-6) and switched.accuracy == short.accuracy
    assert served_cell.nll != pytest.approx(switched.nll, rel=1e-3)  # in the window the two modes differ
    seg_served, seg_switched = result.segment("searched (long-everywhere)", 256), result.segment("searched (per-forward)", 256)
    assert seg_served.nll != pytest.approx(seg_switched.nll, rel=1e-4) and seg_served.same_as is None
    assert served_cell.same_as is None and switched.same_as is None
    # above the window both apply the long factors: computed once, the same numbers
    above = result.cell("searched (long-everywhere)", 512, 0.5)
    assert above.same_as == "searched (per-forward)" and above.nll == result.cell("searched (per-forward)", 512, 0.5).nll
    assert above.nll == pytest.approx(score(lm, _needles(lm, result, 512), factors.long).nll, rel=1e-6)
    # dynamic NTK served: the λ for the target at every length (vLLM's fixed base), per forward: λ of the length
    fixed = rescale("dynamic-ntk", lm.geometry, TARGET, current_length=TARGET)
    assert result.cell("dynamic-ntk (long-everywhere)", 256, 0.5).nll == pytest.approx(score(lm, ns, fixed).nll, rel=1e-6)
    assert result.cell("dynamic-ntk (per-forward)", 256, 0.5).nll == pytest.approx(result.cell("none", 256, 0.5).nll, rel=1e-6)


def test_template_auto_picks_what_the_testbed_solves_in_its_window(served):
    result = served[0]
    s = result.settings
    # every template the testbed solves in its window, as evolve --template auto keeps them (passkey and its
    # search variety passkey-recall; never the validation-only passkey-find)
    assert s["template"].split("+") == s["template_check"]["solved"] and s["template_requested"] == "auto"
    assert "passkey" in s["template"].split("+") and "passkey-find" not in s["template"]
    assert s["template_check"]["templates"]["passkey"]["accuracy"] >= s["template_check"]["threshold"]
    assert s["template_check"]["templates"]["passkey"]["length"] == 256
    assert s["segment_tokens"] == 64  # a quarter of the window


def test_each_mode_is_one_cost_probe(served):
    result = served[0]
    costs = {(c.method, c.length): c for c in result.costs}
    assert len(costs) == 6 * len(LENGTHS)
    for n in LENGTHS:
        for name in ("searched", "dynamic-ntk"):
            mine, twin = costs[(f"{name} (long-everywhere)", n)], costs[(f"{name} (per-forward)", n)]
            assert mine.same_as == f"{name} (per-forward)"
            assert mine.times == twin.times and twin.same_as is None
        assert costs[("yarn", n)].same_as is None


def test_report_json_and_plot_show_both_modes(served):
    _, _, out, paths = served
    data = json.loads((out / "eval.json").read_text())
    serving = {m["label"]: m["serving"] for m in data["methods"]}
    assert serving["none"] == serving["yarn"] == "every" and serving["searched (long-everywhere)"] == "long-everywhere"
    assert {m["method"] for m in data["methods"]} == {"none", "yarn", "dynamic-ntk", "searched"}
    assert data["settings"]["serving"] == ["per-forward", "long-everywhere"]
    row = next(r for r in data["summary"] if r["method"] == "searched (per-forward)" and r["length"] == 256)
    assert row["serving"] == "per-forward" and 0.0 <= row["needle_accuracy"] <= 1.0
    report = (out / "report.md").read_text()
    assert "| searched (long-everywhere) | factors | long-everywhere |" in report
    assert "chosen by `--template auto`" in report and "searched (long-everywhere) = searched (per-forward) at 512" in report
    assert "accuracy_vs_length.png" in [p.name for p in paths]
    from matplotlib.image import imread

    assert imread(out / "accuracy_vs_length.png").shape[0] > 100


def test_serving_choice_and_default_lengths(lm, tmp_path):
    g = lm.geometry
    assert parse_serving(None) == ["per-forward", "long-everywhere"]
    assert parse_serving("vllm, transformers") == ["long-everywhere", "per-forward"]
    with pytest.raises(InputError, match="unknown serving mode 'fixed'"):
        parse_serving("fixed")
    path = tmp_path / "searched.json"
    _searched(g).save(path)
    one = build_methods(g, ["dynamic-ntk"], [path], target_length=TARGET, serving=["long-everywhere"])
    assert [m.label for m in one] == ["none", "dynamic-ntk", "searched"]
    assert [m.describe()["serving"] for m in one] == ["every", "long-everywhere", "long-everywhere"]
    # factors whose short and long factors are equal do not switch: one row
    same = RopeFactors.searched(g, TARGET, Rescale(np.ones(g.n_freq), 1.0))
    same.save(tmp_path / "flat.json")
    assert [m.label for m in build_methods(g, [], [tmp_path / "flat.json"])] == ["none", "flat"]
    # the window is in the default lengths; the factors' target sets them when --target is not given
    assert default_lengths(256, 2048) == [256, 512, 1024, 2048] and default_lengths(256, 1500) == [256, 512, 1024, 1500]
    assert resolve_lengths(None, g, None, [path]) == ([256, 512, 1024, 2048], TARGET)
    assert resolve_lengths([512, 1024], g, None, [path]) == ([512, 1024], 1024)
    with pytest.raises(InputError, match="give --lengths"):
        resolve_lengths(None, g, None, [])


def test_cli_nbce_with_the_defaults(run_cli, capsys, tmp_path):
    out = tmp_path / "nbce"
    common = ["--samples", "1", "--depths", "1", "--no-cost", "--device", "cpu"]
    assert run_cli("eval", "--baselines", "nbce", "--lengths", "512", *common, "--out", str(out)) == 0
    data = json.loads((out / "eval.json").read_text())
    assert data["settings"]["segment_tokens"] == 64 and data["settings"]["template"] == "passkey+passkey-recall"
    assert [m["kind"] for m in data["methods"]] == ["none", "attention"]
    assert all(math.isfinite(s["nll"]) for s in data["segments"])
    # no --lengths: the window and its doublings up to --target
    out2 = tmp_path / "default-lengths"
    assert run_cli("eval", "--baselines", "yarn", "--target", "512", *common, "--out", str(out2)) == 0
    assert json.loads((out2 / "eval.json").read_text())["lengths"] == [256, 512]
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert run_cli("eval", "--lengths", "512", "--serving", "sometimes", "--out", str(bad)) == 2
    err = capsys.readouterr().err
    assert "unknown serving mode 'sometimes'" in err and len(err.strip().splitlines()) == 1 and not bad.exists()
