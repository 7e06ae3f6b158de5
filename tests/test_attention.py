"""Attention-side eval baselines (issue 14), each against a slow computation of its definition.

The slow reference works pair by pair in complex numbers (a RoPE rotation by angle θ·d is a multiplication by
e^{iθd}), with the relative position each method's paper defines; the fast path is the attention function
longsearch registers in transformers, fed queries and keys rotated by transformers' own RoPE code — on bare
tensors, and through tiny models (scaled RoPE types, patched factors, Gemma's softcap and local layers) whose
logits are compared with the same model run with the slow definition as its attention function.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from test_models import FAMILIES, L0, build
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from longsearch import attention as A
from longsearch.errors import InputError, ModelError
from longsearch.rope import RopeGeometry

torch.set_num_threads(1)


def paper_distance(name: str, p: dict, i: int, j: int) -> float | None:
    """The relative position of query i and key j as each method's authors define it (None: not attended)."""
    d = i - j
    if d < 0:
        return None
    if name == "rerope":  # exact inside the window, the window's size beyond
        return d if d < p["window"] else p["window"]
    if name == "leaky-rerope":  # exact inside, then slope 1/k
        return d if d < p["window"] else p["window"] + (d - p["window"]) / p["k"]
    if name == "self-extend":  # neighbours exact; grouped positions shifted so they continue the window
        g, w = p["group_size"], p["window_size"]
        return d if d < w else (i // g + w - w // g) - j // g
    if name == "lambda-window":  # local window, plus the first n_global tokens at the largest local distance
        if d < p["n_local"]:
            return d
        return p["n_local"] - 1 if j < p["n_global"] else None
    raise ValueError(name)


CASES = {
    "rerope": {"window": 7},
    "leaky-rerope": {"window": 7, "k": 3.0},
    "self-extend": {"group_size": 4, "window_size": 6},
    "lambda-window": {"n_global": 3, "n_local": 8},
}


def slow_attention(q, k, v, theta, rotary_dim, name, params, scale, softcap=None, sliding_window=None):
    """q, k unrotated [H, L, D] (numpy); rotate-half pairs (m, m + rd/2) as complex numbers. ``softcap``:
    Gemma2's tanh cap on every score; ``sliding_window``: the model's own mask (key within that many tokens)."""
    h, n, _ = q.shape
    half = rotary_dim // 2
    out = np.zeros_like(v)
    for head in range(h):
        qc = q[head, :, :half] + 1j * q[head, :, half:rotary_dim]
        kc = k[head, :, :half] + 1j * k[head, :, half:rotary_dim]
        for i in range(n):
            scores = np.full(n, -np.inf)
            for j in range(n):
                rel = paper_distance(name, params, i, j)
                if rel is None or (sliding_window and i - j >= sliding_window):
                    continue
                rot = np.sum(qc[i] * np.conj(kc[j]) * np.exp(1j * theta * rel)).real
                rest = float(q[head, i, rotary_dim:] @ k[head, j, rotary_dim:])
                scores[j] = (rot + rest) * scale
                if softcap:
                    scores[j] = np.tanh(scores[j] / softcap) * softcap
            w = np.exp(scores - scores.max())
            w /= w.sum()
            out[head, i] = w @ v[head]
    return out


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("rotary_dim", [8, 4])  # full and partial rotary
def test_two_map_attention_equals_the_definition(name, rotary_dim):
    torch.manual_seed(0)
    n, dim, heads, base = 30, 8, 2, 10000.0
    g = RopeGeometry(rotary_dim, base, 16)
    method = A.make_attention_method(name, g, 64, **CASES[name])
    q_raw, k_raw, v = (torch.randn(1, heads, n, dim, dtype=torch.float64).float() for _ in range(3))
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
    pos = torch.arange(n)[None].float()
    freqs = pos[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    q_rot, k_rot = q_raw.clone(), k_raw.clone()
    q_rot[..., :rotary_dim], k_rot[..., :rotary_dim] = apply_rotary_pos_emb(  # transformers' own rotation
        q_raw[..., :rotary_dim], k_raw[..., :rotary_dim], emb.cos(), emb.sin()
    )
    module = types.SimpleNamespace(layer_idx=0)
    token = A._ACTIVE.set(A._Active(method, frozenset(), {None: (inv_freq, torch.arange(n)[None])}))
    try:
        fast, _ = A.two_map_attention(module, q_rot, k_rot, v, None, scaling=dim**-0.5, position_ids=torch.arange(n)[None])
    finally:
        A._ACTIVE.reset(token)
    slow = slow_attention(
        q_raw[0].double().numpy(),
        k_raw[0].double().numpy(),
        v[0].double().numpy(),
        inv_freq.double().numpy(),
        rotary_dim,
        name,
        method.params,
        dim**-0.5,
    )
    np.testing.assert_allclose(fast[0].transpose(0, 1).double().numpy(), slow, atol=2e-5, rtol=1e-4)
    plain = torch.nn.functional.scaled_dot_product_attention(q_rot, k_rot, v, is_causal=True)
    assert not torch.allclose(fast.transpose(1, 2), plain, atol=1e-3), "the method changes attention beyond its window"


# ---------------------------------------------------------------- through a model, beyond the window

N = 40  # tokens: beyond every window of CASES
REFERENCE_NAME = "longsearch_test_slow_reference"
_REFERENCE: dict = {}  # the reference attention's method, params, θ; no_softcap, plain_layers (left to sdpa)


def unrotate(x, theta, pos):
    """x [H, L, D] rotated by a rotate-half RoPE at positions pos: the vectors before it (complex numbers)."""
    half = len(theta)
    c = (x[..., :half] + 1j * x[..., half : 2 * half]) * np.exp(-1j * np.outer(pos, theta))
    out = x.copy()
    out[..., :half], out[..., half : 2 * half] = c.real, c.imag
    return out


def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, sliding_window=None, **kwargs):
    """The slow definition as a transformers attention function: the queries and keys the model rotated (at
    positions 0…n−1, one unpadded sequence) are unrotated with the θ the test gives, then scored pair by pair."""
    r = _REFERENCE
    if getattr(module, "layer_idx", None) in r.get("plain_layers", ()):  # a layer the method leaves alone
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    groups = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    theta, pos = r["theta"], np.arange(query.shape[2])
    out = slow_attention(
        unrotate(query[0].double().numpy(), theta, pos),
        unrotate(k[0].double().numpy(), theta, pos),
        v[0].double().numpy(),
        theta,
        2 * len(theta),
        r["name"],
        r["params"],
        scaling,
        softcap=None if r.get("no_softcap") else softcap,
        sliding_window=sliding_window,
    )
    return torch.from_numpy(out).to(query.dtype)[None].transpose(1, 2).contiguous(), None


def slow_logits(model, x, method, theta, **flags):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(REFERENCE_NAME, reference_attention)
    AttentionMaskInterface.register(REFERENCE_NAME, sdpa_mask)
    _REFERENCE.clear()
    _REFERENCE.update(name=method.name, params=method.params, theta=np.asarray(theta, dtype=np.float64), **flags)
    previous = model.config._attn_implementation
    model.set_attn_implementation(REFERENCE_NAME)
    try:
        with torch.no_grad():
            return model(x).logits
    finally:
        model.set_attn_implementation(previous)


def fast_logits(model, x, method):
    with torch.no_grad(), A.attention_method(model, method):
        return model(x).logits


def plain_theta(model):
    from longsearch.models import model_geometry

    g = model_geometry(model.config)
    return 1.0 / (g.base ** (np.arange(0, g.rotary_dim, 2) / g.rotary_dim))


SCALED = {  # Llama configs with a scaled RoPE (window 32 or 64 tokens, the sequence N beyond it where it matters)
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": L0,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0},  # attention factor 1.14
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},  # inv_freq recomputed in the forward: N > 32
    "longrope": {
        "rope_type": "longrope",
        "long_factor": [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 8.0],
        "short_factor": [1.0] * 8,
        "original_max_position_embeddings": 32,  # N > 32: the long factors, chosen in the forward
        "factor": 8.0,
        "attention_factor": 1.3,
    },
}


def scaled_llama(rope):
    params = dict(SCALED[rope], rope_theta=10000.0)
    return build("llama", rope_parameters=params, max_position_embeddings=32 if rope == "dynamic" else 4 * L0)


def test_scaled_configs_scale():
    """The configs the next test runs: each has frequencies, at the forward's length, unlike the plain ones."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for rope in SCALED:
        model = scaled_llama(rope)
        theta, m = ROPE_INIT_FUNCTIONS[rope](model.config, None, seq_len=N)
        assert np.abs(theta.double().numpy() / plain_theta(model) - 1).max() > 0.5, rope
        assert (m != 1.0) == (rope in ("yarn", "longrope")), rope


@pytest.mark.parametrize("name", ["rerope", "self-extend", "leaky-rerope"])
@pytest.mark.parametrize("rope", list(SCALED))
def test_scaled_rope_through_the_model_equals_the_definition(rope, name):
    """A model whose config scales its RoPE (Llama 3.1's llama3, linear, yarn's attention factor, the per-forward
    dynamic and longrope types): beyond the window the logits equal the slow definition with the θ transformers
    defines for that type at this length — not the plain θ of the base, which the far positions would get wrong."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from longsearch.models import model_geometry

    model = scaled_llama(rope)
    method = A.make_attention_method(name, model_geometry(model.config), 4 * L0, **CASES[name])
    x = torch.randint(0, 97, (1, N), generator=torch.Generator().manual_seed(2))
    theta = ROPE_INIT_FUNCTIONS[rope](model.config, None, seq_len=N)[0]
    fast = fast_logits(model, x, method)
    torch.testing.assert_close(fast, slow_logits(model, x, method, theta), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        assert (fast - model(x).logits).abs().max() > 1e-3, "the method changes attention beyond its window"
    if name == "rerope":  # the plain θ (what a base-only un-rotation assumes) is another computation
        assert (fast - slow_logits(model, x, method, plain_theta(model))).abs().max() > 1e-3


def test_patched_factors_through_the_model_equal_the_definition():
    """Under longsearch's own patched RoPE (λ divides θ, m multiplies cos and sin) the frequencies are λ's."""
    from longsearch.models import model_geometry, patched
    from longsearch.rope import Rescale

    model = build("llama")
    g = model_geometry(model.config)
    lam = np.linspace(1.0, 6.0, g.n_freq)
    method = A.make_attention_method("self-extend", g, 4 * L0, **CASES["self-extend"])
    x = torch.randint(0, 97, (1, N), generator=torch.Generator().manual_seed(3))
    with patched(model, Rescale(lam, 1.25)):
        fast = fast_logits(model, x, method)
        slow = slow_logits(model, x, method, plain_theta(model) / lam)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(CASES))
def test_every_method_through_a_plain_llama_equals_the_definition(name):
    from longsearch.models import model_geometry

    model = build("llama")
    method = A.make_attention_method(name, model_geometry(model.config), 4 * L0, **CASES[name])
    x = torch.randint(0, 97, (1, N), generator=torch.Generator().manual_seed(4))
    fast = fast_logits(model, x, method)
    torch.testing.assert_close(fast, slow_logits(model, x, method, plain_theta(model)), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        assert (fast - model(x).logits).abs().max() > 1e-3


def test_gemma3_linear_global_rope_beyond_the_window():
    """Gemma3 4B+ (linear ×8 on the full-attention RoPE, a local RoPE on the sliding layers): the global layer
    follows the definition with the scaled global θ; the sliding layer keeps the model's own attention."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from longsearch.models import model_geometry

    rope = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
    }
    model = build("gemma3", rope_parameters=rope)
    method = A.make_attention_method("rerope", model_geometry(model.config), 4 * L0, **CASES["rerope"])
    x = torch.randint(0, 97, (1, N), generator=torch.Generator().manual_seed(6))
    theta = ROPE_INIT_FUNCTIONS["linear"](model.config, None, layer_type="full_attention")[0]
    fast = fast_logits(model, x, method)
    torch.testing.assert_close(fast, slow_logits(model, x, method, theta, plain_layers={0}), atol=1e-4, rtol=1e-4)
    assert (fast - slow_logits(model, x, method, theta * 8.0, plain_layers={0})).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["lambda-window", "leaky-rerope"])
def test_gemma2_softcap_and_sliding_layer_beyond_the_window(name):
    """Gemma2 (a tight score softcap, layer 0 sliding over 32 tokens with the global RoPE): the method applies in
    both layers under the model's mask, each far score capped as the near ones."""
    from longsearch.models import model_geometry

    model = build("gemma2", attn_logit_softcapping=2.0)
    assert A._local_layers(model) == frozenset()
    method = A.make_attention_method(name, model_geometry(model.config), 4 * L0, **CASES[name])
    x = torch.randint(0, 97, (1, N), generator=torch.Generator().manual_seed(5))
    fast = fast_logits(model, x, method)
    torch.testing.assert_close(fast, slow_logits(model, x, method, plain_theta(model)), atol=1e-4, rtol=1e-4)
    assert (fast - slow_logits(model, x, method, plain_theta(model), no_softcap=True)).abs().max() > 1e-3


def test_relative_distances_follow_the_papers():
    g = RopeGeometry(8, 10000.0, 16)
    for name, params in CASES.items():
        m = A.make_attention_method(name, g, 64, **params)
        got = A.relative_distances(m, 25)
        want = np.array([[(-1 if (r := paper_distance(name, m.params, i, j)) is None else r) for j in range(25)] for i in range(25)])
        np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_runs_the_methods_through_transformers(family):
    """Inside its window ReRoPE is plain attention: logits equal the model's own (GQA, partial rotary, Gemma's
    softcap and local layers, Mistral's sliding mask included); beyond it they differ, and the model's own
    attention is back afterwards."""
    from longsearch.models import model_geometry

    model = build(family)
    g = model_geometry(model.config)
    x = torch.randint(0, 97, (1, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        own = model(x).logits
        inside = A.make_attention_method("rerope", g, 4 * L0, window=L0 - 1)  # every distance < 50 is exact
        with A.attention_method(model, inside):
            same = model(x).logits
        narrow = A.make_attention_method("self-extend", g, 4 * L0, group_size=4, window_size=8)
        with A.attention_method(model, narrow):
            other = model(x).logits
        back = model(x).logits
    torch.testing.assert_close(same, own, atol=2e-5, rtol=1e-4)
    assert (other - own).abs().max() > 1e-3
    assert torch.equal(back, own) and model.config._attn_implementation == "eager"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "the rotary hooks are removed"


def test_gemma3_local_layers_are_left_alone():
    model = build("gemma3")
    assert A._local_layers(model) == frozenset({0})  # layer 0 is sliding_attention


def test_rotary_output_is_checked_once_per_position_set(monkeypatch):
    """The full cos/sin check runs the first time a rotary module, position set and frequencies appear, not
    on every forward; a rotary module whose output stops matching at a new length is still refused, with what
    to do."""
    from longsearch.models import find_rotary_embeddings, model_geometry

    model = build("llama")
    method = A.make_attention_method("rerope", model_geometry(model.config), 4 * L0, **CASES["rerope"])
    x = torch.randint(0, 97, (1, N), generator=torch.Generator().manual_seed(7))
    calls = []
    allclose = torch.allclose
    monkeypatch.setattr(torch, "allclose", lambda *a, **k: calls.append(1) or allclose(*a, **k))
    (_, rotary), *_ = find_rotary_embeddings(model)
    # a rotary module that returns other cos/sin than its inv_freq gives, at any length but N
    bad = rotary.register_forward_hook(lambda mod, args, out: out if out[0].shape[-2] == N else (out[0] * 1.01, out[1]))
    try:
        with torch.no_grad(), A.attention_method(model, method):
            first = model(x).logits
            assert len(calls) == 2  # cos and sin, once
            again = model(x).logits
            assert len(calls) == 2 and torch.equal(first, again)  # the same positions and frequencies: not checked again
            with pytest.raises(ModelError) as e:
                model(x[:, : N - 5])  # a new position set: checked, and refused
            assert (
                "cannot undo its RoPE" in str(e.value) and "pi, ntk, yarn" in str(e.value) and len(calls) == 3
            )  # cos differs: sin unchecked
    finally:
        bad.remove()


def test_unreadable_rope_errors_say_what_to_do():
    g = RopeGeometry(8, 10000.0, 16)
    method = A.make_attention_method("rerope", g, 64, window=4)
    with pytest.raises(ModelError, match=r"cannot read its RoPE; use a RoPE baseline \(pi, ntk, yarn\) or nbce"):
        A._used_rotation(torch.nn.Module(), torch.arange(4)[None], None, torch.device("cpu"))
    q = torch.zeros(1, 2, 4, 8)
    token = A._ACTIVE.set(A._Active(method, frozenset()))  # no rotary forward recorded
    try:
        with pytest.raises(ModelError, match=r"no rotary module ran.*or report its model type"):
            A.two_map_attention(types.SimpleNamespace(layer_idx=0), q, q, q, None)
    finally:
        A._ACTIVE.reset(token)


def test_nbce_equals_plain_scoring_for_one_chunk_and_beta_0(tiny_byte_llama_dir):
    from longsearch.models import load_model

    lm = load_model(tiny_byte_llama_dir, device="cpu")
    g = lm.geometry
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 250, size=120)
    m = A.make_attention_method("nbce", g, 1024, beta=0.0)
    rows = A.nbce_logprobs(lm.model, [256], ids[:90], ids[90:], g.original_length, m)
    full = np.concatenate([[256], ids])
    with torch.no_grad():
        ref = torch.log_softmax(lm.model(torch.as_tensor(full)[None]).logits[0, 90:120].float(), dim=-1)
    torch.testing.assert_close(rows, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["min-entropy", "average"])
def test_nbce_pools_chunks_as_defined(tiny_byte_llama_dir, pooling):
    from longsearch.models import load_model

    lm = load_model(tiny_byte_llama_dir, device="cpu")
    window = lm.geometry.original_length
    rng = np.random.default_rng(1)
    context, suffix = rng.integers(0, 250, size=500), rng.integers(0, 250, size=6)
    beta = 0.25
    m = A.make_attention_method("nbce", lm.geometry, 4096, beta=beta, pooling=pooling)
    rows = A.nbce_logprobs(lm.model, [256], context, suffix, window, m)
    room = window - 1 - len(suffix)
    chunks = [context[i : i + room] for i in range(0, len(context), room)]
    assert len(chunks) == 3

    def logp(body):  # log p(suffix[t] | BOS, body, suffix[:t]) for every t, one forward per sequence
        seq = torch.as_tensor(np.concatenate([[256], body, suffix]))[None]
        with torch.no_grad():
            out = torch.log_softmax(lm.model(seq).logits[0].float(), dim=-1)
        return [out[len(body) + t] for t in range(len(suffix))]

    per_chunk = [logp(c) for c in chunks]
    uncond = logp(np.zeros(0, dtype=np.int64))
    for t in range(len(suffix)):
        if pooling == "average":
            pooled = sum(pc[t] for pc in per_chunk) / len(chunks)
        else:
            entropies = [float(-(pc[t].exp() * pc[t]).sum()) for pc in per_chunk]
            pooled = per_chunk[int(np.argmin(entropies))][t]
        want = torch.log_softmax((1 + beta) * pooled - beta * uncond[t], dim=-1)
        torch.testing.assert_close(rows[t], want, atol=1e-5, rtol=1e-5)


def test_defaults_and_bad_parameters():
    g = RopeGeometry(64, 10000.0, 256)
    se = A.make_attention_method("self-extend", g, 4096)
    assert se.params["window_size"] == 128
    far = (4095 // se.params["group_size"]) + 128 - 128 // se.params["group_size"]
    assert far <= 255, "the default group size keeps the target's largest distance inside the window"
    lk = A.make_attention_method("leaky-rerope", g, 4096)
    assert lk.params["window"] + (4095 - lk.params["window"]) / lk.params["k"] <= 255
    assert A.make_attention_method("nbce", g, 4096).params == {"beta": 0.25, "pooling": "min-entropy"}
    for name, bad in (
        ("rerope", {"window": 256}),
        ("self-extend", {"group": 4}),
        ("nbce", {"pooling": "max"}),
        ("leaky-rerope", {"k": "x"}),
        ("lambda-window", {"n_local": 300}),
        ("nope", {}),
    ):
        with pytest.raises(InputError):
            A.make_attention_method(name, g, 4096, **bad)
    assert A.parse_attention_baseline("self-extend:group_size=8:window_size=64") == (
        "self-extend",
        {"group_size": "8", "window_size": "64"},
    )
    with pytest.raises(InputError):
        A.parse_attention_baseline("rerope:window")


def test_eval_grid_has_the_methods_with_their_cost(tmp_path):
    from longsearch import evaluate as ev
    from longsearch.models import load_model

    lm = load_model(None, device="cpu")
    names = ev.parse_baselines("yarn,rerope,self-extend:group_size=4,nbce,lambda-window,leaky-rerope")
    methods = ev.build_methods(lm.geometry, names, [], 1024)
    assert [m.kind for m in methods] == ["none", "baseline"] + ["attention"] * 5
    res = ev.run_eval(lm, methods, [256, 512], depths=[0.5], samples=1, template="passkey", segment=64, cost_repeats=2)
    assert all(len(c.times) == 2 for c in res.costs)  # one timed forward per method and round
    for m in methods:
        for n in (256, 512):
            nll, acc = res.needle_mean(m.label, n)
            assert math.isfinite(nll) and 0.0 <= acc <= 1.0
            assert math.isfinite(res.segment(m.label, n).ppl)
            t, _ = res.cost_ratio(m.label, n)
            assert t > 0 and math.isfinite(t)
    assert all(c.peak_bytes >= 0 and c.memory == "process RSS" for c in res.costs) and len(res.costs) == 2 * len(methods)
    # inside the window the Λ-window (n_local = the window) is plain attention: same needle score
    assert res.needle_mean("lambda-window(n_global=10,n_local=256)", 256) == pytest.approx(res.needle_mean("none", 256), abs=1e-4)
    report = ev.render_report(res)
    assert "Cost relative to plain attention" in report and "cannot be exported" in report
    paths = ev.write_eval(res, tmp_path / "ev")
    assert any(p.name == "eval.json" for p in paths)


def test_eval_cli_refuses_bad_attention_parameters(run_cli, capsys, tmp_path):
    code = run_cli("eval", "--lengths", "512", "--baselines", "self-extend:groups=4", "--out", str(tmp_path / "ev"))
    err = capsys.readouterr().err
    assert code == 2 and "group_size" in err and not (tmp_path / "ev").exists()


def test_cost_time_ratio_is_paired_by_round():
    """A machine slowing down in round 3 weighs on both methods alike: the median of the per-round ratios (2)
    is what the report gives, not the ratio of the medians (1)."""
    from longsearch.evaluate import CostCell, EvalResult

    res = EvalResult("m", {}, [256], [0.5], [], [], [], {})
    res.costs = [
        CostCell("none", 256, 4.0, 100.0, "process RSS", times=[1.0, 4.0, 9.0]),
        CostCell("x", 256, 4.0, 250.0, "process RSS", times=[2.0, 4.0, 27.0]),
    ]
    assert res.cost_ratio("x", 256) == pytest.approx((2.0, 2.5))


def test_the_block_memory_sets_the_peak_and_leaves_the_results_unchanged():
    """The query blocks are sized from a memory budget: the peak tensor memory of a forward (counted from the
    allocator's records) follows the budget, and the logits do not depend on it."""
    import transformers as T

    from longsearch.memory import AllocatorPeak
    from longsearch.models import model_geometry

    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
    )
    model = T.LlamaForCausalLM(cfg).eval()
    n = 2048
    x = torch.randint(0, 97, (1, n), generator=torch.Generator().manual_seed(5))
    g = model_geometry(model.config)
    peaks, logits = {}, {}
    for budget in (8 << 20, 32 << 20, 128 << 20):
        method = A.make_attention_method("rerope", g, 4 * n)
        method.block_memory = budget
        assert A.query_block(budget, 1, 8, n) == budget // ((3 * 8 + 2) * n * 4)
        with AllocatorPeak() as peak:
            logits[budget] = fast_logits(model, x, method)
        peaks[budget] = peak.bytes
    for budget in (32 << 20, 128 << 20):
        torch.testing.assert_close(logits[budget], logits[8 << 20], rtol=1e-5, atol=1e-5)
    # the blocks' score maps are what grows: each extra budget byte shows in the peak, within the estimate's slack
    for small, large in ((8 << 20, 32 << 20), (32 << 20, 128 << 20)):
        grown = peaks[large] - peaks[small]
        assert 0.7 * (large - small) <= grown <= 1.1 * (large - small), (small, large, peaks)
    assert peaks[128 << 20] <= (128 << 20) + peaks[8 << 20]


def test_parse_memory():
    assert A.parse_memory("2GiB") == 2 << 30 and A.parse_memory("512m") == 512 << 20 and A.parse_memory("4096") == 4096
    with pytest.raises(InputError, match="cannot read the memory size"):
        A.parse_memory("lots")
