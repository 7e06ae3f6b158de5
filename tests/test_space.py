"""Search spaces: presets, the registry of kinds, repair, the longrope2 structure, seeds, keys, serialization, bad YAML."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from longsearch import rope
from longsearch.errors import InputError
from longsearch.rope import RopeGeometry
from longsearch.space import KINDS, FreeSpace, Grid, LongRoPE2Space, Point, SearchSpace, eval_bound, preset_names, preset_path

TESTBED = (RopeGeometry(64, 10000.0, 256), 2048)  # s = 8
LLAMA3 = (RopeGeometry(128, 500000.0, 8192), 131072)  # s = 16
CASES = [TESTBED, LLAMA3]


def hf_inv_freq(head_dim: int, max_pos: int, rope_parameters: dict) -> np.ndarray:
    cfg = LlamaConfig(
        hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim, max_position_embeddings=max_pos, rope_parameters=rope_parameters
    )
    return LlamaRotaryEmbedding(cfg).inv_freq.double().numpy()


def on_grid(x: np.ndarray, step: float) -> bool:
    k = x / step
    return bool(np.all(np.abs(k - np.round(k)) < 1e-6))


def random_vectors(n: int, count: int, seed: int, high: float) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [rng.uniform(0.1, high, size=n) for _ in range(count)]
    out += [np.full(n, 1.0), np.full(n, high * 3), np.linspace(high, 0.5, n)]
    return out


# ---------------------------------------------------------------- presets and geometry


def test_presets_ship_inside_the_package_and_at_the_repo_root():
    import yaml

    assert {"hybrid", "yarn", "longrope2", "longrope"} <= set(preset_names())
    root = Path(__file__).resolve().parents[1] / "search_spaces"
    for name in preset_names():
        assert preset_path(name).is_file()
        assert (root / f"{name}.yaml").read_text() == preset_path(name).read_text()
        lines = preset_path(name).read_text().splitlines()
        keys = yaml.safe_load("\n".join(lines))
        # every top-level key is documented: a comment on its line or in the block just above it
        for k in keys:
            at = next(n for n, line in enumerate(lines) if line.startswith(f"{k}:"))
            up = at - 1
            while up >= 0 and lines[up].strip() and not lines[up].startswith("#"):
                up -= 1  # keys documented together by one comment block (lower / upper)
            documented = "#" in lines[at] or (up >= 0 and lines[up].startswith("#"))
            assert documented or k == "kind", f"{name}.yaml: {k} has no comment"
        # and the preset loads into the space its name promises
        assert SearchSpace.load(name, *TESTBED).name == name


def test_critical_range_against_published_and_hand_computed_values():
    # LongRoPE2's theoretical critical index d_tcd as published: Llama-3-8B (d 128, b 500000, L 8192) 35,
    # Phi-3-mini (d 96, b 10000, L 2048) 31; the real critical index its search found (30, 25) lies in the range
    g, t = LLAMA3
    sp = SearchSpace.load("longrope2", g, t)
    # lower end by hand: 64·ln(8192 / 20π) / ln 500000 = 64 · 4.8704 / 13.1224 = 23.75 → 24
    assert sp.critical_range == (24, 35) and 24 <= 30 <= 35
    assert (sp.lower, sp.upper) == (16.0, 32.0)
    assert sp.attention == pytest.approx(1.1435, abs=1e-4)  # √(1 + ln 16 / ln 8192) = √(1 + 2.7726 / 9.0109) = √1.3077
    phi3 = SearchSpace.load("longrope2", RopeGeometry(96, 10000.0, 2048), 131072)
    # lower end by hand: 48·ln(2048 / 20π) / ln 10000 = 48 · 3.4842 / 9.2103 = 18.16 → 19
    assert phi3.critical_range == (19, 31) and 19 <= 25 <= 31
    # the testbed by hand: d_tcd = ⌈32·ln(256 / 2π) / ln 10⁴⌉ = ⌈32 · 3.7072 / 9.2103⌉ = ⌈12.88⌉ = 13;
    # lower ⌈32·ln(256 / 20π) / ln 10⁴⌉ = ⌈32 · 1.4046 / 9.2103⌉ = ⌈4.88⌉ = 5
    assert SearchSpace.load("longrope2", *TESTBED).critical_range == (5, 13)


def test_longrope_v1_preset_bounds():
    g, t = TESTBED
    sp = SearchSpace.load("longrope", g, t)
    assert sp.kind == "free" and isinstance(sp, FreeSpace) and not hasattr(sp, "critical_range")
    assert (sp.lower, sp.upper, sp.step, sp.monotone) == (1.0, 9.0, 0.01, True)
    assert sp.seed_points()["seed:pi"].params == {}  # no critical index


# ---------------------------------------------------------------- the registry of kinds


def test_every_kind_is_one_registered_class_and_presets_load_as_theirs():
    assert list(KINDS) == ["longrope2", "free", "hybrid", "yarn"]
    for name, cls in KINDS.items():
        assert issubclass(cls, SearchSpace) and cls.kind == name
    for preset, kind in (("hybrid", "hybrid"), ("yarn", "yarn"), ("longrope2", "longrope2"), ("longrope", "free")):
        sp = SearchSpace.load(preset, *TESTBED)
        assert type(sp) is KINDS[kind] and sp.kind == kind
    assert type(SearchSpace.from_spec({}, *TESTBED)) is KINDS["longrope2"]  # the default kind


def readme_kind() -> type[SearchSpace]:
    """The worked example of search_spaces/README.md (its first Python block), run as longsearch/space/uniform.py."""
    readme = (Path(__file__).resolve().parents[1] / "search_spaces" / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {"__name__": "longsearch.space.uniform", "__package__": "longsearch.space"}
    exec(compile(code, "search_spaces/README.md", "exec"), namespace)
    return namespace["UniformSpace"]


def test_a_new_kind_is_one_class_and_one_registry_line(monkeypatch):
    from longsearch.optimizers import Result, make_optimizer

    UniformSpace = readme_kind()
    monkeypatch.setitem(KINDS, "uniform", UniformSpace)
    g, t = TESTBED
    sp = SearchSpace.from_spec({"kind": "uniform", "lower": 1, "seeds": ["pi", "ntk"], "attention": {"min": 1, "max": 1.5}}, g, t)
    assert isinstance(sp, UniformSpace) and sp.n_params == 2 and sp.searches_m
    assert sp.describe() == "custom (uniform): λ_i = c ∈ [1, 16], m ∈ [1.000, 1.500]"
    seeds = sp.seed_points()
    assert list(seeds) == ["seed:pi", "seed:ntk"] and seeds["seed:pi"].params == {"factor": 8.0}
    d = sp.to_dict()
    assert d["kind"] == "uniform" and d["critical_range"] is None and d["beta_fast"] is None  # release 0.1's layout
    assert SearchSpace.from_dict(json.loads(json.dumps(d)), g, t).to_dict() == d
    opt = make_optimizer("ga", sp, "quick", 0)
    while not opt.done:
        batch = opt.ask()
        assert all(sp.contains_point(c.point) and np.all(c.lam == c.lam[0]) for c in batch)
        opt.tell([Result(c, abs(float(c.lam[0]) - 11.0) + c.m) for c in batch])
    assert opt.best().score < 1.0 + 3.0  # better than the PI seed (8, m = 1)
    # the shared keys are read for it; other kinds' keys are refused by name
    with pytest.raises(InputError, match="critical_lower applies only to kinds longrope2 and hybrid"):
        SearchSpace.from_spec({"kind": "uniform", "critical_lower": 3}, g, t)
    with pytest.raises(InputError, match="kind must be one of longrope2, free, hybrid, yarn, uniform"):
        SearchSpace.from_spec({"kind": "nope"}, g, t)


# ---------------------------------------------------------------- repair


@pytest.mark.parametrize("g,t", CASES)
def test_longrope2_repair_is_monotone_in_bounds_on_grid_and_ntk_shaped(g, t):
    sp = SearchSpace.load("longrope2", g, t)
    lo, hi = sp.critical_range
    s = t / g.original_length
    for lam in random_vectors(g.n_freq, 20, 1, 3 * s):
        for d in [None, lo, (lo + hi) // 2, hi]:
            p = sp.make_point(lam) if d is None else sp.make_point(lam, d_rcd=d)
            x, dd = p.lam, p.params["d_rcd"]
            if d is not None:
                assert dd == d
            assert lo <= dd <= hi
            tail = x[dd:]
            assert np.all(np.diff(x) >= -1e-12), "λ must be non-decreasing"
            assert np.all(tail >= s - 1e-9) and np.all(tail <= 2 * s + 1e-9)
            assert on_grid(tail, 0.01)
            i = np.arange(dd)
            np.testing.assert_allclose(x[:dd], x[dd] ** (i / dd), rtol=1e-12)
            assert x[0] == 1.0
            again = sp.make_point(x)  # idempotent: λ alone keeps its own d_rcd
            np.testing.assert_array_equal(again.lam, x)
            assert again.params == p.params
            assert sp.contains_point(p)


@pytest.mark.parametrize("g,t", CASES)
def test_longrope2_head_is_default_rope_with_a_new_base(g, t):
    # independent check with transformers: below d_rcd, θ_i/λ_i is plain RoPE with base b·λ_d^(D/(2d))
    sp = SearchSpace.load("longrope2", g, t)
    x = sp.make_point(np.linspace(1.0, 2 * sp.upper, g.n_freq), d_rcd=sp.critical_range[0] + 2).lam
    d = sp.make_point(x).params["d_rcd"]  # the critical index λ itself has
    new_base = g.base * x[d] ** (g.rotary_dim / (2 * d))
    expected = hf_inv_freq(g.rotary_dim, t, {"rope_type": "default", "rope_theta": new_base})
    np.testing.assert_allclose((rope.inv_freq(g) / x)[: d + 1], expected[: d + 1], rtol=1e-6)


@pytest.mark.parametrize("g,t", CASES)
def test_free_space_repair(g, t):
    sp = SearchSpace.load("longrope", g, t)
    s = t / g.original_length
    for lam in random_vectors(g.n_freq, 20, 2, 2 * s):
        p = sp.make_point(lam)
        x = p.lam
        assert np.all(np.diff(x) >= 0) and p.params == {}
        assert np.all(x >= 1.0) and np.all(x <= 1 + s + 1e-9)
        assert on_grid(x, 0.01)
        np.testing.assert_array_equal(sp.make_point(x).lam, x)


def test_non_monotone_user_space_keeps_order(tmp_path):
    g, t = TESTBED
    p = tmp_path / "free.yaml"
    p.write_text("kind: free\nmonotone: false\nlower: 1\nupper: 2s\nstep: 0.05\nseeds: [yarn, pi]\n")
    sp = SearchSpace.load(str(p), g, t)
    lam = np.linspace(20.0, 0.0, g.n_freq)
    x = sp.make_point(lam).lam
    assert np.all(np.diff(x) <= 0) and x[0] == 16.0 and x[-1] == 1.0
    assert on_grid(x, 0.05)
    assert list(sp.seed_points()) == ["seed:yarn", "seed:pi"]


def test_key_rounds_to_the_grid():
    g, t = TESTBED
    sp = SearchSpace.load("longrope", g, t)
    p = sp.make_point(np.linspace(1, 8, g.n_freq))
    key = sp.point_key(p)
    assert key == sp.point_key(Point(p.lam + 0.004, p.m, p.params))
    y = p.lam.copy()
    y[-1] += 0.01
    assert key != sp.point_key(Point(y, p.m, p.params))
    assert all(isinstance(k, int) for k in key)
    assert key[:-1] == tuple(round(v * 100) for v in p.lam)  # λ as grid indices, then m to 1e-3
    assert key == sp.point_key(Point(p.lam, p.m + 0.0004, p.params)) != sp.point_key(Point(p.lam, p.m + 0.002, p.params))


def test_grid_snaps_repairs_and_redraws_between_neighbours():
    grid = Grid(step=0.5, lower=1.0, upper=3.0)
    assert grid.bounds == (2, 6)
    np.testing.assert_array_equal(grid.snap(np.array([0.2, 2.26, 1.4, 9.0])), [1.0, 2.5, 1.5, 3.0])
    np.testing.assert_array_equal(grid.repair(np.array([0.2, 2.26, 1.4, 9.0])), [1.0, 2.5, 2.5, 3.0])
    free = Grid(step=0.5, lower=1.0, upper=3.0, monotone=False)
    np.testing.assert_array_equal(free.repair(np.array([3.0, 1.2])), [3.0, 1.0])
    rng = np.random.default_rng(0)
    x = np.array([1.0, 1.5, 2.0, 2.5, 3.0])
    changed = 0
    for _ in range(50):
        y = grid.redraw(x, 1, rng)  # each value from index 1 on redrawn between its neighbours, in order
        assert y[0] == x[0] and on_grid(y, 0.5) and np.all(np.diff(y) >= 0) and np.all((y >= 1.0) & (y <= 3.0))
        changed += int(np.any(y != x))
    assert changed > 0


# ---------------------------------------------------------------- seeds


@pytest.mark.parametrize("g,t", CASES)
def test_longrope2_seeds(g, t):
    sp = SearchSpace.load("longrope2", g, t)
    seeds = sp.seed_points()
    names = list(seeds)
    lo, hi = sp.critical_range
    mid = (lo + hi) // 2
    joined = "+".join(n.removeprefix("seed:") for n in names)
    for base in ("pi", "ntk", "yarn"):
        assert base in joined.split("+"), names
    for d in (lo, mid, hi):
        name = f"seed:ntk-shaped@{d}"
        assert name in names
        lam = seeds[name].lam
        assert seeds[name].params["d_rcd"] == d and sp.make_point(lam).params["d_rcd"] == d
        i = np.arange(g.n_freq)
        expect = np.minimum(sp.scale ** (i / d), sp.upper)
        np.testing.assert_allclose(lam[d:], np.round(expect[d:], 2), atol=1e-9)
    keys = [sp.point_key(p) for p in seeds.values()]
    assert len(set(keys)) == len(keys)
    assert all(n.startswith("seed:") for n in names)
    assert all(sp.contains_point(p) for p in seeds.values())
    # PI's tail stays s: repair lifts nothing
    pi = seeds["seed:pi"]
    assert np.all(pi.lam[pi.params["d_rcd"] :] == sp.scale)


@pytest.mark.parametrize("g,t", CASES)
def test_free_space_yarn_seed_is_transformers_yarn_on_the_grid(g, t):
    sp = SearchSpace.load("longrope", g, t)
    s = t / g.original_length
    yarn_inv = hf_inv_freq(
        g.rotary_dim,
        t,
        {"rope_type": "yarn", "rope_theta": g.base, "factor": float(s), "original_max_position_embeddings": g.original_length},
    )
    lam_hf = rope.inv_freq(g) / yarn_inv
    seed = sp.seed_points()["seed:yarn"].lam
    assert np.max(np.abs(seed - lam_hf)) <= 0.005 + 1e-6
    assert np.all(np.diff(seed) >= 0)


@pytest.mark.parametrize("g,t", CASES)
@pytest.mark.parametrize("name", ["longrope2", "longrope"])
def test_unit_encoding_round_trips_the_seeds(g, t, name):
    sp = SearchSpace.load(name, g, t)
    for p in sp.seed_points().values():
        u = sp.encode_point(p)
        assert u.shape == (sp.n_params,) and np.all((u >= 0) & (u <= 1))
        back = sp.decode_point(u)
        assert sp.point_key(back) == sp.point_key(p)
        assert back.params == p.params  # the same d_rcd (none for longrope)
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = sp.decode_point(rng.random(sp.n_params))
        assert sp.contains_point(p) and sp.make_point(p.lam).params == p.params  # λ alone has the point's d_rcd
        assert sp.contains_point(sp.sample_point(rng))


# ---------------------------------------------------------------- serialization


def test_to_dict_round_trip_and_refuses_another_geometry():
    g, t = TESTBED
    sp = SearchSpace.load("longrope2", g, t)
    d = json.loads(json.dumps(sp.to_dict()))
    again = SearchSpace.from_dict(d, g, t)
    assert again.to_dict() == sp.to_dict()
    assert again.seed_points().keys() == sp.seed_points().keys()
    with pytest.raises(InputError, match="another model, target or space"):
        SearchSpace.from_dict(d, g, 4096)
    with pytest.raises(InputError, match="another model, target or space"):
        SearchSpace.from_dict(d, RopeGeometry(64, 20000.0, 256), t)
    with pytest.raises(InputError):
        SearchSpace.from_dict({"nothing": 1}, g, t)


# ---------------------------------------------------------------- expressions and bad input


@pytest.mark.parametrize(
    "expr,value",
    [(3, 3.0), ("s", 8.0), ("2s", 16.0), ("1 + s", 9.0), ("1.5*s - 0.5", 11.5), ("s/2", 4.0), ("2 s", 16.0), ("1.25 × s", 10.0)],
)
def test_bound_expressions(expr, value):
    assert eval_bound(expr, 8.0) == pytest.approx(value)


@pytest.mark.parametrize("expr", ["2x", "s**2", "__import__('os')", "", "s +", True, [1]])
def test_bad_bound_expressions(expr):
    with pytest.raises(InputError, match="lower"):
        eval_bound(expr, 8.0, "lower")


BAD_YAML = [
    ("kind: longrope2\nfoo: 1\n", "unknown key 'foo'"),
    ("kind: hyper\n", "kind must be one of"),
    ("lower: 2s\nupper: s\n", "lower .* is above upper"),
    ("lower: 0\n", "every λ must be positive"),
    ("kind: free\nlower: 1.001\nupper: 1.009\n", "no grid value"),
    ("step: -0.01\n", "step must be a positive number"),
    ("upper: 3q\n", "upper: cannot read"),
    ("seeds: [pi, xpos]\n", "unknown seed 'xpos'"),
    ("seeds: []\n", "seeds must be a non-empty list"),
    ("kind: free\nseeds: [ntk-shaped]\n", "ntk-shaped.*needs kind longrope2"),
    ("critical_lower: 12\ncritical_upper: 6\n", "critical_lower .* must not exceed critical_upper"),
    ("critical_lower: -1\n", "critical_lower must be 'auto' or a non-negative integer"),
    ("kind: free\ncritical_lower: 3\n", "critical_lower applies only to kinds longrope2 and hybrid"),
    ("monotone: false\n", "monotone: false is not supported"),
    ("monotone: maybe\n", "monotone must be true or false"),
    ("attention: huge\n", "attention: unknown attention-factor policy"),
    ("n_mutated_seeds: -3\n", "n_mutated_seeds must be"),
    ("- a\n- b\n", "must be a YAML mapping"),
    ("kind: [unclosed\n", "not valid YAML at line"),
    ("", "the file is empty"),
]


@pytest.mark.parametrize("text,message", BAD_YAML)
def test_bad_user_yaml_is_one_line_naming_file_and_key(tmp_path, text, message):
    g, t = TESTBED
    p = tmp_path / "mine.yaml"
    p.write_text(text)
    before = p.read_text()
    with pytest.raises(InputError, match=message) as info:
        SearchSpace.load(str(p), g, t)
    msg = str(info.value)
    assert "\n" not in msg and "mine.yaml" in msg
    assert p.read_text() == before


def test_bad_names_and_targets():
    g, t = TESTBED
    with pytest.raises(InputError, match="unknown search space 'longrope3'"):
        SearchSpace.load("longrope3", g, t)
    with pytest.raises(InputError, match="not found"):
        SearchSpace.load("/nonexistent/space.yaml", g, t)
    for target in (256, 128):
        with pytest.raises(InputError, match="not above the model's window"):
            SearchSpace.load("longrope2", g, target)
    with pytest.raises(InputError, match="rotary frequencies"):
        SearchSpace.load("longrope2", g, t).make_point(np.ones(5))


def test_user_yaml_overrides(tmp_path):
    g, t = LLAMA3
    p = tmp_path / "narrow.yaml"
    p.write_text(
        "kind: longrope2\nlower: 1.25 * s\nupper: 1.5s\ncritical_lower: 28\ncritical_upper: 30\n"
        "attention: 1.2\nseeds: [yarn, ntk-shaped]\nstep: 0.1\n"
    )
    sp = SearchSpace.load(str(p), g, t)
    assert (sp.lower, sp.upper, sp.critical_range, sp.attention, sp.step) == (20.0, 24.0, (28, 30), 1.2, 0.1)
    assert list(sp.seed_points()) == ["seed:yarn", "seed:ntk-shaped@28", "seed:ntk-shaped@29", "seed:ntk-shaped@30"]
    for p in sp.seed_points().values():
        lam, d = p.lam, p.params["d_rcd"]
        assert sp.make_point(lam).params["d_rcd"] == d
        assert 28 <= d <= 30 and np.all(lam[d:] >= 20) and np.all(lam[d:] <= 24) and on_grid(lam[d:], 0.1)


# ---------------------------------------------------------------- hybrid and yarn spaces (points with m)


@pytest.mark.parametrize("g,t", [*CASES, (RopeGeometry(128, 10000.0, 4096), 32768)])
def test_hybrid_holds_pi_ntk_and_yarn_exactly_as_transformers_computes_them(g, t):
    # independent reference: transformers' own rotary embeddings (linear, default with the NTK base, yarn)
    sp = SearchSpace.load("hybrid", g, t)
    s = t / g.original_length
    seeds = sp.seed_points()
    theta = rope.inv_freq(g)
    pi = theta / hf_inv_freq(g.rotary_dim, t, {"rope_type": "linear", "rope_theta": g.base, "factor": float(s)})
    ntk_base = g.base * s ** (g.rotary_dim / (g.rotary_dim - 2))
    ntk = theta / hf_inv_freq(g.rotary_dim, t, {"rope_type": "default", "rope_theta": ntk_base})
    cfg = {"rope_type": "yarn", "rope_theta": g.base, "factor": float(s), "original_max_position_embeddings": g.original_length}
    yarn = theta / hf_inv_freq(g.rotary_dim, t, cfg)
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    yarn_m = LlamaRotaryEmbedding(
        LlamaConfig(
            hidden_size=g.rotary_dim * 2, num_attention_heads=2, head_dim=g.rotary_dim, max_position_embeddings=t, rope_parameters=cfg
        )
    ).attention_scaling
    for name, lam, m in (("seed:pi", pi, 1.0), ("seed:ntk", ntk, 1.0), ("seed:yarn", yarn, yarn_m)):
        p = seeds[name]
        np.testing.assert_allclose(p.lam, lam, rtol=2e-6)
        assert p.m == pytest.approx(m, rel=1e-6)
        assert sp.contains_point(p)
    assert seeds["seed:pi"].params["d_rcd"] == 0 and seeds["seed:ntk"].params["d_rcd"] == g.n_freq - 1


def test_hybrid_head_family_by_hand():
    g, t = TESTBED  # s = 8
    sp = SearchSpace.load("hybrid", g, t)
    tail = np.full(g.n_freq, 8.0)
    # exact head: λ = 1 up to a = 3, then the harmonic (YaRN) ramp from 1 at 3 to 8 at d = 7
    p = sp.make_point(tail, 1.3, d_rcd=7, head_start=3, head_shape=0.0)
    expect = [1, 1, 1, 1] + [1 / ((1 - t_) + t_ / 8) for t_ in (0.25, 0.5, 0.75)]
    np.testing.assert_allclose(p.lam[:7], expect, rtol=1e-12)
    assert np.all(p.lam[7:] == 8.0) and p.m == 1.3
    # NTK shape from a = 0: 8^(i/7)
    p = sp.make_point(tail, 1.0, d_rcd=7, head_start=0, head_shape=1.0)
    np.testing.assert_allclose(p.lam[:7], 8.0 ** (np.arange(7) / 7), rtol=1e-12)
    # a = d: the whole head exact, then the tail
    p = sp.make_point(tail, 1.0, d_rcd=5, head_start=5, head_shape=0.5)
    assert np.all(p.lam[:5] == 1.0) and np.all(p.lam[5:] == 8.0)
    # m is clipped into [1, 1 + 0.4 ln s]
    assert sp.make_point(tail, 9.0, d_rcd=5).m == pytest.approx(1 + 0.4 * math.log(8))
    assert sp.make_point(tail, 0.5, d_rcd=5).m == 1.0


def test_yarn_space_is_the_yarn_family():
    g, t = TESTBED
    sp = SearchSpace.load("yarn", g, t)
    assert sp.n_params == 3 and sp.searches_m
    seed = sp.seed_points()["seed:yarn"]
    np.testing.assert_allclose(seed.lam, rope.rescale("yarn", g, t).lam, rtol=1e-12)
    # β_fast ≈ 9.7 keeps frequencies 0…5 exact on the 256-token window (correction index 5.0)
    p = sp.make_point(None, 1.4, beta_fast=9.6, beta_slow=1.0)
    assert np.all(p.lam[:6] == 1.0) and p.lam[6] > 1.0 and p.m == 1.4
    rng = np.random.default_rng(0)
    for _ in range(30):
        q = sp.sample_point(rng)
        assert 2 <= q.params["beta_fast"] <= 128 and 0.125 <= q.params["beta_slow"] <= 4
        assert q.params["beta_slow"] < q.params["beta_fast"] and sp.contains_point(q)
        assert sp.point_key(sp.decode_point(sp.encode_point(q))) == sp.point_key(q)


@pytest.mark.parametrize("name", ["hybrid", "longrope2", "longrope", "yarn"])
def test_points_round_trip_and_operators_stay_in_the_space(name):
    g, t = TESTBED
    sp = SearchSpace.load(name, g, t)
    rng = np.random.default_rng(1)
    pts = list(sp.seed_points().values()) + [sp.sample_point(rng) for _ in range(20)]
    for p in pts:
        assert sp.contains_point(p)
        assert sp.point_key(sp.decode_point(sp.encode_point(p))) == sp.point_key(p)
        for _ in range(5):
            c = sp.mutate(p, rng)
            assert sp.contains_point(c) and np.all(np.diff(c.lam) >= -1e-12)
            x = sp.crossover(p, c, rng)
            assert sp.contains_point(x)


@pytest.mark.parametrize("name,flat", [("hybrid", "lower"), ("hybrid", "upper"), ("longrope2", "lower"), ("longrope", "upper")])
def test_mutation_moves_the_interior_of_a_plateau(name, flat):
    # LongRoPE's gene-wise mutation redraws λ_i between its neighbours: on a run of equal values only the ends
    # can move. The segment moves must change values strictly inside the run.
    g, t = TESTBED
    sp = SearchSpace.load(name, g, t)
    value = sp.lower if flat == "lower" else sp.upper
    params = {"d_rcd": sp.critical_range[0]} if isinstance(sp, LongRoPE2Space) else {}
    if name == "hybrid":
        params = {"d_rcd": 4, "head_start": 0, "head_shape": 0.0}
    p = sp.make_point(np.full(g.n_freq, value), None, **params)
    start = params.get("d_rcd", 0)
    interior = slice(start + 2, g.n_freq - 2)
    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(200):
        c = sp.mutate(p, rng)
        assert sp.contains_point(c)
        if c.params.get("d_rcd", 0) == start and np.any(c.lam[interior] != value):
            moved += 1
    assert moved >= 20, moved
