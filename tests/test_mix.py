"""Needle mixes: several served lengths scored as one, raced shortest first, cost counted in token-forwards."""

from __future__ import annotations

import math

import numpy as np
import pytest

from longsearch.errors import InputError
from longsearch.mix import NeedleMix, build_mix, default_lengths, load_needle_mix, parse_serve_lengths, parse_serve_weights, score_mix
from longsearch.models import load_model
from longsearch.rope import Rescale, rescale
from longsearch.scoring import score


@pytest.fixture(scope="module")
def lm():
    return load_model(None, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def mix(lm):
    return build_mix(lm.tokenizer, [256, 512, 1024], None, 4, "passkey", seed=3, depths="spread")


def test_default_lengths_weights_and_parsing():
    assert default_lengths(256, 2048) == [256, 512, 1024, 2048]
    assert default_lengths(256, 1536) == [256, 512, 1024, 1536]
    assert parse_serve_lengths("target", 256, 2048) == [2048]
    assert parse_serve_lengths("256,1k,2k", 256, 2048) == [256, 1024, 2048]
    assert parse_serve_weights("auto", [256, 512, 1024]) == [0.25, 0.25, 0.5]
    for bad in ("256,1k", "1k,256,2k", "abc"):
        with pytest.raises(InputError):
            parse_serve_lengths(bad, 256, 2048)
    with pytest.raises(InputError):
        parse_serve_weights("1,2", [256, 512, 1024])


def test_a_mix_scores_the_weighted_mean_of_its_sets_with_the_long_factors_at_every_length(lm, mix):
    r = rescale("yarn", lm.geometry, 1024)
    m = score_mix(lm, mix, r)
    parts = [score(lm, ns, r, target_length=ns.length) for ns in mix.parts]  # each set alone, the same (λ, m)
    assert mix.lengths == [256, 512, 1024] and [len(p.samples) for p in mix.parts] == [2, 2, 4]
    assert m.nll == pytest.approx(sum(w * p.nll for w, p in zip(mix.weights, parts, strict=True)), rel=1e-12)
    assert m.per_sample == [x for p in parts for x in p.per_sample] and not m.censored
    assert [p["accuracy"] for p in m.per_length] == [p.accuracy for p in parts]
    assert mix.token_forwards(None) == 2 * 256 + 2 * 512 + 4 * 1024 and mix.token_cost(2) == pytest.approx(512 / 5632)


def test_racing_stops_on_the_short_sets_and_gives_a_lower_bound(lm, mix):
    bad = Rescale(np.full(lm.geometry.n_freq, 16.0), 1.0)  # hopeless in the window
    full = score_mix(lm, mix, bad)
    raced = score_mix(lm, mix, bad, stop_at=0.5 * full.nll)
    assert raced.censored and raced.n_scored < len(mix.samples) and 0.5 * full.nll <= raced.nll <= full.nll
    assert raced.per_sample == pytest.approx(full.per_sample[: raced.n_scored], rel=1e-5)  # a prefix, shortest first (race batches differ)
    good = score_mix(lm, mix, bad, stop_at=math.inf)
    assert good.nll == full.nll and not good.censored


def test_a_mix_saves_and_loads_and_a_plain_set_loads_as_a_mix_of_one(lm, mix, tmp_path):
    mix.save(tmp_path / "m")
    back = load_needle_mix(tmp_path / "m", tokenizer=lm.tokenizer, length=1024)
    assert back.lengths == mix.lengths and back.weights == mix.weights
    assert all(np.array_equal(a.input_ids, b.input_ids) for a, b in zip(back.samples, mix.samples, strict=True))
    one = NeedleMix.single(mix.parts[-1])
    one.save(tmp_path / "one")
    assert (tmp_path / "one" / "manifest.json").is_file() and not (tmp_path / "one" / "mix.json").exists()
    assert load_needle_mix(tmp_path / "one").weights == [1.0]
