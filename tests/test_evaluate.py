"""Eval: the grid holds the scorer's own numbers, the final segment is what transformers computes, files are valid."""

from __future__ import annotations

import csv
import json
import math
import struct

import numpy as np
import pytest
import torch

from longsearch.errors import FactorsError, InputError, RunError
from longsearch.evaluate import (
    build_methods,
    parse_baselines,
    parse_depths,
    run_eval,
    segment_document,
    segment_nll,
    write_eval,
)
from longsearch.factors import RopeFactors
from longsearch.models import TESTBED_DIR, config_with_factors, load_model, patched
from longsearch.needles import build_needle_set
from longsearch.rope import attention_factor, rescale
from longsearch.scoring import score

torch.set_num_threads(1)

LENGTHS = [512, 768]
DEPTHS = [0.2, 0.8]
SEGMENT = 128


def _tiny_model_dir(path):
    """A random byte-level Llama with a 512-token window (used until the shipped testbed exists)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from longsearch.tiny.tokenizer import VOCAB_SIZE, save_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
    )
    LlamaForCausalLM(cfg).eval().save_pretrained(path)
    save_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def model_source(tmp_path_factory):
    if (TESTBED_DIR / "config.json").exists():
        return None  # the shipped testbed
    return str(_tiny_model_dir(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def lm(model_source):
    return load_model(model_source, device="cpu", dtype="float32")


def _searched_like(g, target: int) -> RopeFactors:
    n = g.n_freq
    return RopeFactors(
        long_factor=np.linspace(1.0, 1.5 * target / g.original_length, n),
        short_factor=np.linspace(1.0, 1.3, n),
        original_length=g.original_length,
        target_length=target,
        base=g.base,
        rotary_dim=g.rotary_dim,
        attention_factor=attention_factor("longrope", target / g.original_length, g.original_length),
        provenance={"method": "test"},
    )


@pytest.fixture(scope="module")
def evaluated(lm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    fpath = tmp / "searched.json"
    _searched_like(lm.geometry, max(LENGTHS)).save(fpath)
    # one serving mode (transformers'): one row per method (both modes: test_eval_serving.py)
    methods = build_methods(lm.geometry, ["yarn", "dynamic-ntk"], [fpath], target_length=max(LENGTHS), serving=["per-forward"])
    calls = []
    result = run_eval(
        lm,
        methods,
        LENGTHS,
        depths=DEPTHS,
        samples=2,
        template="magic-number",
        segment=SEGMENT,
        progress=lambda d, t, w: calls.append((d, t)),
        command="longsearch eval --test",
    )
    out = tmp / "out"
    paths = write_eval(result, out)
    return result, methods, out, paths, calls


def test_grid_holds_the_scorers_numbers(lm, evaluated):
    result, methods, _, _, calls = evaluated
    assert result.labels == ["none", "yarn", "dynamic-ntk", "searched"]
    assert len(result.needles) == 4 * len(LENGTHS) * len(DEPTHS) and len(result.segments) == 4 * len(LENGTHS)
    assert all(c.error is None and math.isfinite(c.nll) and 0 <= c.accuracy <= 1 for c in result.needles)
    # the progress callback covered the whole grid and the cost pass (one step per length), in order
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == calls[-1][1] == 4 * len(LENGTHS) * (len(DEPTHS) + 1) + len(LENGTHS)
    assert len(result.costs) == 4 * len(LENGTHS) and all(len(c.times) == 3 for c in result.costs)

    # cross-check cells against the scorer called directly on a freshly built needle set
    for label, n, d in [("searched", 768, 0.8), ("dynamic-ntk", 512, 0.2), ("none", 768, 0.2)]:
        spec = next(m.spec for m in methods if m.label == label)
        ns = build_needle_set(lm.tokenizer, n, 2, template="magic-number", seed=777, depths=[d], haystack="heldout")
        s = score(lm, ns, spec)
        cell = result.cell(label, n, d)
        assert cell.nll == pytest.approx(s.nll, rel=1e-6) and cell.accuracy == s.accuracy
    # methods really differ (the cells are not one number repeated)
    assert len({round(result.cell(m, 768, 0.8).nll, 6) for m in result.labels}) == 4


def test_segment_is_the_same_tokens_as_transformers_computes(lm, evaluated):
    from transformers import AutoModelForCausalLM

    result, methods, _, _, _ = evaluated
    doc = segment_document(lm.tokenizer, max(LENGTHS))
    assert len(doc) == max(LENGTHS) and doc[0] == lm.tokenizer.bos_token_id
    factors = next(m.spec for m in methods if m.label == "searched")
    # an independent implementation: transformers' own longrope from the equivalent config, full logits
    ref = AutoModelForCausalLM.from_config(config_with_factors(lm.model.config, factors)).eval()
    ref.load_state_dict(lm.model.state_dict())
    for n in LENGTHS:
        ids = torch.as_tensor(np.concatenate([doc[:1], doc[len(doc) - (n - 1) :]]))[None]
        assert ids.shape[1] == n and torch.equal(ids[0, -SEGMENT:], torch.as_tensor(doc[-SEGMENT:]))
        with torch.no_grad():
            logits = ref(ids).logits[0, -SEGMENT - 1 : -1]
        expected = torch.nn.functional.cross_entropy(logits, ids[0, -SEGMENT:]).item()
        assert result.segment("searched", n).nll == pytest.approx(expected, rel=1e-4)
    # dynamic NTK: each length sees the λ of that length
    dyn = next(m for m in methods if m.label == "dynamic-ntk")
    for n in LENGTHS:
        static = rescale("dynamic-ntk", lm.geometry, dyn.target_length, current_length=n)
        with patched(lm.model, static):
            assert result.segment("dynamic-ntk", n).nll == pytest.approx(segment_nll(lm.model, doc, 1, n, SEGMENT), rel=1e-6)


def test_files(evaluated):
    result, _, out, paths, _ = evaluated
    names = sorted(p.name for p in paths)
    assert names == sorted(
        ["eval.json", "eval.csv", "report.md", "accuracy_vs_length.png", "nll_vs_length.png", "segment_ppl_vs_length.png"]
        + [f"accuracy_{m}.png" for m in result.labels]
    )
    for p in paths:
        assert p.is_file()
    data = json.loads((out / "eval.json").read_text())
    assert data["lengths"] == LENGTHS and data["settings"]["seed"] == 777
    assert len(data["needles"]) == len(result.needles) and data["command"] == "longsearch eval --test"
    rows = list(csv.DictReader((out / "eval.csv").open()))
    assert {r["kind"] for r in rows} == {"needle", "needle-mean", "segment"}
    seg = next(r for r in rows if r["kind"] == "segment" and r["method"] == "yarn" and r["length"] == "768")
    assert float(seg["nll"]) == result.segment("yarn", 768).nll
    report = (out / "report.md").read_text()
    assert "longsearch eval --test" in report and "| searched |" in report and "![nll_vs_length.png]" in report
    for png in out.glob("*.png"):
        raw = png.read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
        width, height = struct.unpack(">II", raw[16:24])
        assert width > 50 and height > 50
        from matplotlib.image import imread

        assert imread(png).shape[:2] == (height, width)  # decodes
    # an existing output is refused, nothing touched; --force replaces it
    before = (out / "eval.json").read_bytes()
    with pytest.raises(RunError, match="already exists"):
        write_eval(result, out)
    assert (out / "eval.json").read_bytes() == before
    write_eval(result, out, force=True)


def test_bad_input(lm, tmp_path):
    with pytest.raises(InputError, match="unknown baseline 'bogus'.*pi.*yarn"):
        parse_baselines("pi,bogus")
    with pytest.raises(InputError, match="unknown baseline 'longrope'"):
        parse_baselines("longrope")
    assert parse_baselines("linear, yarn,yarn") == ["pi", "yarn"]
    assert parse_depths("5") == [0.1, 0.3, 0.5, 0.7, 0.9] and parse_depths("1") == [0.5] and parse_depths("0.5,0.1") == [0.1, 0.5]
    for bad in ("1.5", "x", "0"):
        with pytest.raises(InputError):
            parse_depths(bad)
    g = lm.geometry
    wrong = RopeFactors.from_method("yarn", type(g)(g.rotary_dim * 2, g.base, g.original_length), 1024)
    path = tmp_path / "wrong.json"
    wrong.save(path)
    with pytest.raises(FactorsError, match="rotary dim"):
        build_methods(g, [], [path], target_length=1024)


def test_cli_eval(run_cli, capsys, tmp_path, model_source, lm):
    model_args = ["--model", model_source] if model_source else []
    f1, f2 = tmp_path / "a.json", tmp_path / "b.json"
    _searched_like(lm.geometry, 768).save(f1)
    RopeFactors.from_method("pi", lm.geometry, 768).save(f2)
    out = tmp_path / "ev"
    common = [*model_args, "--lengths", "512", "--depths", "0.5", "--samples", "1", "--segment", "64", "--device", "cpu"]
    assert run_cli("eval", *common, "--baselines", "ntk", "--factors", str(f1), str(f2), "--out", str(out)) == 0
    data = json.loads((out / "eval.json").read_text())
    modes = ("per-forward", "long-everywhere")  # the default: both ways the engines serve, for factors that switch
    assert [m["label"] for m in data["methods"]] == ["none", "ntk", *(f"{f} ({m})" for f in "ab" for m in modes)]
    assert "--factors" in data["command"]
    capsys.readouterr()
    assert run_cli("eval", *common, "--out", str(out)) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert run_cli("eval", *common, "--baselines", "pi,nope", "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert "unknown baseline 'nope'" in err and "Traceback" not in err and not (tmp_path / "x").exists()


def test_csv_factors_are_accepted(lm, tmp_path):
    from longsearch.factors import write_csv_factors

    g = lm.geometry
    long = np.linspace(1.0, 2.0, g.n_freq)
    path = tmp_path / "ref.csv"
    write_csv_factors(path, long)
    methods = build_methods(g, ["pi"], [path], target_length=1024, serving=["per-forward"])
    assert [m.label for m in methods] == ["none", "pi", "ref"]
    f = methods[-1].spec
    np.testing.assert_array_equal(f.long_factor, long)
    assert f.target_length == 1024 and np.all(f.short_factor == 1.0)
    write_csv_factors(tmp_path / "short.csv", long[:-1])
    with pytest.raises(FactorsError, match="rotary frequencies"):
        build_methods(g, [], [tmp_path / "short.csv"], target_length=1024)


def test_the_loop_asks_every_method_through_the_protocol(lm):
    """A method run_eval has never heard of: its own numbers land in its cells, its description in the methods,
    and the cost probe runs its forward — nothing in the loop looks at a method's name or kind."""
    from longsearch.scoring import Score

    class Fixed:
        def __init__(self) -> None:
            self.label = "fixed"
            self.forwards: list[int] = []

        def describe(self) -> dict:
            return {
                "label": self.label,
                "kind": "made-up",
                "dynamic": False,
                "source": "a test",
                "attention_factor": None,
                "target_length": None,
            }

        def needle_score(self, lm, needle_set) -> Score:
            return Score(
                nll=0.5, per_sample=[0.5] * len(needle_set), ppl=math.exp(0.5), accuracy=1.0, per_sample_correct=[True], seconds=0.0
            )

        def segment_nll(self, lm, document, prefix, length, tokens) -> float:
            assert prefix == 1 and len(document) == 512 and tokens == 64
            return 0.25 + length / 1e4

        def forward(self, lm, sample) -> None:
            self.forwards.append(len(sample.input_ids))

    fixed = Fixed()
    methods = [*build_methods(lm.geometry), fixed]
    res = run_eval(lm, methods, [256, 512], depths=[0.5], samples=1, template="passkey", segment=64, cost_repeats=2)
    assert res.methods[-1] == fixed.describe() and res.labels == ["none", "fixed"]
    assert res.needle_mean("fixed", 512) == (0.5, 1.0)
    assert res.segment("fixed", 256).nll == pytest.approx(0.2756) and res.segment("fixed", 512).nll == pytest.approx(0.3012)
    assert fixed.forwards == [256, 256, 256, 512, 512, 512]  # per length: the memory pass, then two timed rounds
    assert all(c.error is None for c in res.costs) and len(res.costs) == 4
