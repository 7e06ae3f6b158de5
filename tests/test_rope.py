"""rope.py against transformers' own RoPE code: each method's θ/λ and m must equal the inv_freq and
attention scaling of transformers' rotary embedding built from the equivalent config (1e-6 relative)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from longsearch import rope
from longsearch.errors import InputError
from longsearch.rope import RopeGeometry, rescale, schedule

GEOMETRIES = [
    # (head_dim, base, original window): the testbed, Llama-3-8B, Phi-3-mini-like, an odd one
    (64, 10000.0, 256),
    (128, 500000.0, 8192),
    (96, 10000.0, 2048),
    (32, 1e6, 4096),
]


def hf_rotary(head_dim: int, max_pos: int, rope_parameters: dict) -> LlamaRotaryEmbedding:
    cfg = LlamaConfig(
        hidden_size=head_dim * 2,
        num_attention_heads=2,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_parameters=rope_parameters,
    )
    return LlamaRotaryEmbedding(cfg)


def hf_after_forward(emb: LlamaRotaryEmbedding, seq_len: int) -> tuple[np.ndarray, float]:
    x = torch.zeros(1, 1, 8)
    emb(x, torch.arange(seq_len)[None])
    return emb.inv_freq.double().numpy(), float(emb.attention_scaling)


def ours(g: RopeGeometry, r: rope.Rescale) -> np.ndarray:
    return rope.inv_freq(g) / r.lam


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-6) -> None:
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0)


@pytest.mark.parametrize("d,b,L", GEOMETRIES)
def test_original_rope_matches_default(d, b, L):
    g = RopeGeometry(d, b, L)
    emb = hf_rotary(d, L, {"rope_type": "default", "rope_theta": b})
    r = rope.rescale("none", g, 4 * L)
    assert_close(ours(g, r), emb.inv_freq.double().numpy())
    assert r.m == emb.attention_scaling == 1.0


@pytest.mark.parametrize("d,b,L", GEOMETRIES)
@pytest.mark.parametrize("s", [2, 8, 32])
def test_pi_matches_linear(d, b, L, s):
    g = RopeGeometry(d, b, L)
    emb = hf_rotary(d, L, {"rope_type": "linear", "rope_theta": b, "factor": float(s)})
    r = rope.rescale("pi", g, s * L)
    assert_close(ours(g, r), emb.inv_freq.double().numpy())
    assert r.m == pytest.approx(emb.attention_scaling, rel=1e-6)


@pytest.mark.parametrize("d,b,L", GEOMETRIES)
@pytest.mark.parametrize("s,n_over_L", [(4, 1.0), (4, 2.5), (8, 8.0), (16, 3.0)])
def test_dynamic_ntk_matches_dynamic(d, b, L, s, n_over_L):
    g = RopeGeometry(d, b, L)
    n = int(n_over_L * L)
    emb = hf_rotary(d, L, {"rope_type": "dynamic", "rope_theta": b, "factor": float(s)})
    hf_inv, hf_m = hf_after_forward(emb, n)
    r = rope.rescale("dynamic-ntk", g, s * L, current_length=n)
    assert_close(ours(g, r), hf_inv)
    assert r.m == hf_m == 1.0


@pytest.mark.parametrize("d,b,L", GEOMETRIES)
@pytest.mark.parametrize("s", [2, 4])
def test_static_ntk_is_dynamic_ntk_where_alpha_equals_s(d, b, L, s):
    # transformers has no static NTK type; dynamic NTK at the length n where α = s·n/L − (s−1) equals s,
    # i.e. n = L·(2s−1)/s, must give the same frequencies as static NTK-aware scaling by s.
    g = RopeGeometry(d, b, L)
    n = L * (2 * s - 1) // s
    assert n * s == L * (2 * s - 1)
    emb = hf_rotary(d, L, {"rope_type": "dynamic", "rope_theta": b, "factor": float(s)})
    hf_inv, _ = hf_after_forward(emb, n)
    assert_close(ours(g, rope.rescale("ntk", g, s * L)), hf_inv)
    # and the NTK-aware base form b·s^(d/(d−2)) (bloc97, "NTK-Aware Scaled RoPE", 2023)
    new_base = b * s ** (d / (d - 2))
    assert_close(ours(g, rope.rescale("ntk", g, s * L)), 1.0 / new_base ** (np.arange(0, d, 2) / d))


YARN_OPTIONS = [
    {},
    {"beta_fast": 16.0, "beta_slow": 2.0},
    {"mscale": 1.0, "mscale_all_dim": 0.707},
    {"truncate": False},
    {"attention_factor": 1.37},
]


@pytest.mark.parametrize("d,b,L", GEOMETRIES)
@pytest.mark.parametrize("s", [4, 16])
@pytest.mark.parametrize("opts", YARN_OPTIONS)
def test_yarn_matches_yarn(d, b, L, s, opts):
    g = RopeGeometry(d, b, L)
    params = {"rope_type": "yarn", "rope_theta": b, "factor": float(s), "original_max_position_embeddings": L}
    params.update(opts)
    emb = hf_rotary(d, s * L, params)
    kwargs = dict(opts)
    if "attention_factor" in kwargs:
        kwargs["attention"] = kwargs.pop("attention_factor")
    r = rope.rescale("yarn", g, s * L, **kwargs)
    assert_close(ours(g, r), emb.inv_freq.double().numpy())
    assert r.m == pytest.approx(emb.attention_scaling, rel=1e-6)


@pytest.mark.parametrize("d,b,L", GEOMETRIES)
@pytest.mark.parametrize("s", [4, 8, 32])
@pytest.mark.parametrize("low,high", [(1.0, 4.0), (2.0, 8.0)])
def test_llama3_matches_llama3(d, b, L, s, low, high):
    g = RopeGeometry(d, b, L)
    params = {
        "rope_type": "llama3",
        "rope_theta": b,
        "factor": float(s),
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": L,
    }
    emb = hf_rotary(d, s * L, params)
    r = rope.rescale("llama3", g, s * L, low_freq_factor=low, high_freq_factor=high)
    # transformers blends the middle band in float32, (1−t)·θ/s + t·θ, whose cancellation costs it up to
    # ~1.4e-6 relative (measured here); longsearch computes in float64. Elsewhere the match is 1e-6.
    assert_close(ours(g, r), emb.inv_freq.double().numpy(), rtol=3e-6)
    assert r.m == emb.attention_scaling == 1.0


@pytest.mark.parametrize("d,b,L", GEOMETRIES)
@pytest.mark.parametrize("s", [4, 16])
@pytest.mark.parametrize("attention", [None, 1.21])
def test_longrope_matches_longrope_long_and_short(d, b, L, s, attention):
    g = RopeGeometry(d, b, L)
    rng = np.random.default_rng(d + s)
    long = np.sort(rng.uniform(1.0, 2 * s, g.n_freq)).round(2)
    short = np.sort(rng.uniform(1.0, 1.5, g.n_freq)).round(2)
    params = {
        "rope_type": "longrope",
        "rope_theta": b,
        "long_factor": long.tolist(),
        "short_factor": short.tolist(),
        "original_max_position_embeddings": L,
        "factor": float(s),
    }
    if attention is not None:
        params["attention_factor"] = attention
    kwargs = {} if attention is None else {"attention": attention}
    for seq_len in (L // 2, L, L + 1, 2 * L):
        emb = hf_rotary(d, s * L, params)
        hf_inv, hf_m = hf_after_forward(emb, seq_len)
        r = rope.rescale("longrope", g, s * L, current_length=seq_len, long_factor=long, short_factor=short, **kwargs)
        assert_close(ours(g, r), hf_inv)
        assert r.m == pytest.approx(hf_m, rel=1e-6)


def test_critical_dimension_published_values():
    # LongRoPE2 (Shang et al., ICML 2025): Llama-3-8B (d 128, b 500000, L 8192): 35; Phi-3-mini (d 96, b 10000, L 2048): 31.
    assert rope.critical_index(RopeGeometry(128, 500000.0, 8192)) == 35
    assert rope.critical_index(RopeGeometry(96, 10000.0, 2048)) == 31
    # the testbed: d 64, b 1e4, L 256 -> ceil(32·log_1e4(256/2π)) = ceil(12.87) = 13
    assert rope.critical_index(RopeGeometry(64, 10000.0, 256)) == 13


@pytest.mark.parametrize("d,b,L", GEOMETRIES)
def test_critical_index_is_first_frequency_whose_period_exceeds_window(d, b, L):
    g = RopeGeometry(d, b, L)
    T = rope.periods(g)
    k = rope.critical_index(g)
    assert np.all(T[k:] > L) and np.all(T[:k] <= L)
    lo = rope.critical_index_lower(g)
    assert lo < k
    assert np.all(T[lo:] > L / 10) and np.all(T[:lo] <= L / 10)


def test_periods_formula():
    g = RopeGeometry(8, 100.0, 16)
    np.testing.assert_allclose(rope.periods(g), [2 * math.pi * 100 ** (2 * i / 8) for i in range(4)])


def test_attention_factor_policies():
    assert rope.attention_factor("longrope", 16, 8192) == pytest.approx(math.sqrt(1 + math.log(16) / math.log(8192)))
    assert rope.attention_factor("yarn", 16, 8192) == pytest.approx(0.1 * math.log(16) + 1)
    assert rope.attention_factor(1.3, 16, 8192) == 1.3
    assert rope.attention_factor("1.25", 16, 8192) == 1.25
    assert rope.attention_factor("longrope", 1, 8192) == 1.0
    with pytest.raises(InputError):
        rope.attention_factor("bogus", 4, 256)
    with pytest.raises(InputError):
        rope.attention_factor(-1.0, 4, 256)


def test_registry_names_and_errors():
    assert set(rope.baseline_names()) >= {"none", "pi", "ntk", "dynamic-ntk", "yarn", "llama3"}
    assert rope.get_method("linear").name == "pi"
    with pytest.raises(InputError, match="unknown RoPE method"):
        rope.get_method("superrope")
    g = RopeGeometry(64, 1e4, 256)
    with pytest.raises(InputError, match="explicit long factors"):
        rope.rescale("longrope", g, 1024)


def test_schedules_follow_the_length():
    g = RopeGeometry(64, 1e4, 256)
    dyn = rope.schedule("dynamic-ntk", g, 2048)
    assert np.all(dyn(256).lam == 1.0)  # inside the window: the original RoPE
    assert dyn(1024).lam[-1] < dyn(2048).lam[-1]
    static = rope.schedule("yarn", g, 2048)
    assert static(100) is static(5000)
    sw = rope.SwitchSchedule(np.full(32, 8.0), np.ones(32), 256, 1.2)
    assert sw(256).lam[0] == 1.0 and sw(257).lam[0] == 8.0 and sw(257).m == 1.2


def test_geometry_validation():
    with pytest.raises(InputError):
        RopeGeometry(63, 1e4, 256)
    with pytest.raises(InputError):
        RopeGeometry(64, 1.0, 256)


def test_a_misspelt_method_option_is_refused_by_name():
    from longsearch.factors import RopeFactors
    from longsearch.rope import schedule

    g = RopeGeometry(64, 10000.0, 256)
    with pytest.raises(InputError, match=r"the yarn method has no option 'beta_fats': it takes beta_fast, beta_slow"):
        rescale("yarn", g, 1024, beta_fats=16)
    with pytest.raises(InputError, match=r"the pi method has no option 'factor': it takes no options"):
        rescale("pi", g, 1024, factor=4)
    with pytest.raises(InputError, match="low_freq"):
        schedule("llama3", g, 1024, low_freq=1.0)
    with pytest.raises(InputError, match="mscale_al"):
        RopeFactors.from_method("yarn", g, 1024, mscale_al=1.0)
    # the options a method does take still work, and change the result
    assert not np.array_equal(rescale("yarn", g, 1024, beta_fast=16).lam, rescale("yarn", g, 1024).lam)


@pytest.mark.parametrize("name", ["pi", "ntk", "dynamic-ntk", "yarn", "llama3"])
def test_a_baseline_for_a_length_inside_the_window_is_the_identity(name):
    """Gemma 3's window is 32k: YaRN "for 2k" used s = 1/16 and sped every interpolated frequency up."""
    g = RopeGeometry(256, 1_000_000.0, 32768)
    for target in (2048, 32768):
        r = rescale(name, g, target)
        assert np.all(r.lam == 1.0) and r.m == 1.0, (target, r.lam[-3:], r.m)
        assert np.all(schedule(name, g, target)(target).lam == 1.0)
    assert rescale(name, g, 65536).lam[-1] > 1.0  # beyond the window it extends as before


def test_eval_says_a_baseline_inside_the_window_is_the_identity():
    from longsearch.evaluate import build_methods

    g = RopeGeometry(256, 1_000_000.0, 32768)
    methods = {m.label: m for m in build_methods(g, ["yarn", "pi"], target_length=2048)}
    for label in ("yarn", "pi"):
        assert np.all(methods[label].spec(2048).lam == 1.0) and methods[label].attention_factor == 1.0
        assert "the identity: 2k is inside the 32k window" in methods[label].source
