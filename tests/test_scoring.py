"""The scorer: answer-token NLL equals a full-logits cross-entropy reference, λ matters, refusals, +inf on NaN."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import transformers as T

from longsearch.errors import NeedleError
from longsearch.factors import RopeFactors
from longsearch.models import LoadedModel, config_with_factors, model_geometry
from longsearch.needles import NeedleSample, NeedleSet, build_needle_set
from longsearch.rope import Rescale, rescale
from longsearch.scoring import Score, score
from longsearch.tiny.tokenizer import build_tokenizer

torch.set_num_threads(1)

WINDOW = 256  # the tiny model's original window
TOL = 1e-5


def _llama(seed: int = 0, rope_parameters: dict | None = None, **overrides) -> T.LlamaForCausalLM:
    torch.manual_seed(seed)
    kw = dict(
        vocab_size=260,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=WINDOW,
        rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": 10000.0},
    )
    kw.update(overrides)
    model = T.LlamaForCausalLM(T.LlamaConfig(**kw)).eval()
    with torch.no_grad():  # larger weights than the default init: sharper attention, so RoPE changes show
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8.0)
    return model


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model():
    return _llama()


@pytest.fixture(scope="module")
def long_set(tok):
    return build_needle_set(tok, 600, 3, template="magic-number", seed=0, depths="uniform")


@pytest.fixture(scope="module")
def short_set(tok):
    return build_needle_set(tok, 240, 2, template="passkey", seed=1)


def _reference(model, ns: NeedleSet) -> tuple[list[float], list[bool]]:
    """Straightforward: full logits, cross-entropy on the answer positions (float64), greedy check."""
    nll, ok = [], []
    with torch.no_grad():
        for s in ns.samples:
            ids = torch.from_numpy(s.input_ids)[None]
            logits = model(ids, use_cache=False).logits[0].double()
            a, b = s.answer_start, s.answer_end
            nll.append(float(torch.nn.functional.cross_entropy(logits[a - 1 : b - 1], ids[0, a:b])))
            ok.append(bool((logits[a - 1 : b - 1].argmax(-1) == ids[0, a:b]).all()))
    return nll, ok


@pytest.mark.parametrize("spec_name", ["none", "yarn", "pi", "random"])
def test_nll_equals_full_logits_reference(model, long_set, spec_name):
    g = model_geometry(model.config)
    if spec_name == "random":
        rng = np.random.default_rng(0)
        spec = Rescale(np.sort(rng.uniform(1.0, 4.0, g.n_freq)), 1.1)
    else:
        spec = spec_name
    result = score(model, long_set, spec, target_length=600)
    # the reference is transformers' own RoPE: the same weights under a longrope config with long = short = λ
    # and attention_factor = m (whichever transformers picks at this length is λ)
    r = spec if isinstance(spec, Rescale) else rescale(spec, g, 600)
    f = RopeFactors(r.lam, r.lam, g.original_length, 600, g.base, g.rotary_dim, r.m)
    twin = type(model)(config_with_factors(model.config, f)).eval()
    twin.load_state_dict(model.state_dict())
    assert twin.model.rotary_emb.rope_type == "longrope"
    ref, ok = _reference(twin, long_set)
    assert result.error is None and result.ok
    assert result.per_sample == pytest.approx(ref, abs=TOL)
    assert result.nll == pytest.approx(float(np.mean(ref)), abs=TOL)
    assert result.ppl == pytest.approx(math.exp(result.nll), rel=1e-12)
    assert result.per_sample_correct == ok
    assert result.seconds > 0


def test_batched_equals_one_at_a_time(model, long_set):
    one = score(model, long_set, "yarn", batch_size=1)
    three = score(model, long_set, "yarn", batch_size=3)
    two = score(model, long_set, "yarn", batch_size=2)  # uneven batches
    assert three.per_sample == pytest.approx(one.per_sample, abs=TOL)
    assert two.per_sample == pytest.approx(one.per_sample, abs=TOL)


@pytest.mark.parametrize("spec", [None, "yarn"])
def test_a_model_spread_by_accelerate_scores_as_the_plain_model(model, long_set, tmp_path, spec):
    """accelerate's device map (what --gpus-per-worker N loads) puts modules on several devices; the scorer must
    feed the ids where the embedding runs and index the answer positions where the last hidden states are. On a
    CPU machine the device map that genuinely spreads a model is an offload: the embedding's weights on disk
    (the parameters on ``meta``, run on the CPU by accelerate's hooks), the rest on the CPU. Scoring used to send
    the ids and positions to the first parameter's device (``meta``) and failed."""
    from accelerate import dispatch_model

    reference = score(model, long_set, spec, target_length=600)
    spread = copy.deepcopy(model)
    device_map = {"model.embed_tokens": "disk", "model.layers": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    spread = dispatch_model(spread, device_map, offload_dir=str(tmp_path))
    assert next(spread.parameters()).device.type == "meta" and spread.lm_head.weight.device.type == "cpu"
    result = score(spread, long_set, spec, target_length=600)
    assert result.ok and result.per_sample == pytest.approx(reference.per_sample, abs=TOL)
    assert result.per_sample_correct == reference.per_sample_correct


def test_patched_score_matches_transformers_own_yarn(model, long_set):
    """The independent reference: the same weights under transformers' own yarn rope_parameters."""
    s = 600 / WINDOW
    cfg = copy.deepcopy(model.config)
    cfg.rope_parameters = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": s, "original_max_position_embeddings": WINDOW}
    cfg.max_position_embeddings = 600
    hf = T.LlamaForCausalLM(cfg).eval()
    hf.load_state_dict(model.state_dict())
    ref, _ = _reference(hf, long_set)
    ours = score(model, long_set, "yarn", target_length=600)
    assert ours.per_sample == pytest.approx(ref, abs=1e-4)


def test_lambda_changes_the_score(model, long_set):
    g = model_geometry(model.config)
    base = score(model, long_set, "none", target_length=600).nll
    pi = score(model, long_set, "pi", target_length=600).nll
    bumped = Rescale(np.linspace(1.0, 3.0, g.n_freq), 1.0)
    other = score(model, long_set, bumped).nll
    assert abs(base - pi) > 1e-3 and abs(base - other) > 1e-3 and abs(pi - other) > 1e-3
    # the scorer leaves the model as it found it
    again = score(model, long_set, None).nll
    assert again == pytest.approx(base, abs=TOL)


def test_original_rope_inside_the_window_equals_the_unpatched_model(model, short_set):
    assert short_set.length <= WINDOW
    unpatched = _reference(model, short_set)[0]
    for spec in (None, "none", Rescale(np.ones(model_geometry(model.config).n_freq), 1.0)):
        result = score(model, short_set, spec, target_length=short_set.length)
        assert result.per_sample == pytest.approx(unpatched, abs=TOL)


def test_only_answer_positions_reach_the_lm_head(model, long_set):
    seen = []
    hook = model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    try:
        score(model, long_set, "yarn", batch_size=3)
    finally:
        hook.remove()
    n_answer = {s.answer_end - s.answer_start for s in long_set.samples}
    assert len(seen) == 1 and seen[0][0] == 3 and seen[0][1] <= max(n_answer) + 2 and seen[0][1] < 20


def test_accuracy_is_teacher_forced_greedy(model, tok):
    ns = build_needle_set(tok, 300, 2, template="passkey", seed=4)
    # make sample 0's answer the model's own greedy continuation: its accuracy must be 1
    s = ns.samples[0]
    ids = torch.from_numpy(s.input_ids.copy())
    with torch.no_grad():
        for j in range(s.answer_start, s.answer_end):
            ids[j] = model(ids[None, :j], use_cache=False).logits[0, -1].argmax()
    greedy = NeedleSample(ids.numpy(), s.answer_start, s.answer_end, dict(s.meta))
    forced = NeedleSet([greedy, ns.samples[1]], ns.length, ns.template, ns.seed, ns.tokenizer_name, ns.vocab_hash, ns.meta)
    result = score(model, forced, None)
    assert result.per_sample_correct == [True, _reference(model, forced)[1][1]]
    assert result.accuracy == pytest.approx(np.mean(result.per_sample_correct))


def test_non_finite_loss_is_inf_with_a_reason(long_set):
    broken = _llama()
    with torch.no_grad():
        broken.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    result = score(broken, long_set, None)
    assert math.isinf(result.nll) and result.nll > 0 and math.isinf(result.ppl)
    assert result.error and "non-finite" in result.error and not result.ok
    assert all(math.isinf(v) for v in result.per_sample)
    assert result.accuracy == 0.0
    d = result.to_dict()
    assert d["nll"] == "inf" and Score.from_dict(d).nll == math.inf


def test_refuses_another_tokenizer_or_length(model, tok, long_set):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    g = model_geometry(model.config)
    mine = LoadedModel(model, tok, g, "tiny", torch.device("cpu"), torch.float32)
    assert score(mine, long_set, None).per_sample == pytest.approx(_reference(model, long_set)[0], abs=TOL)
    with pytest.raises(NeedleError, match="tokenizer"):
        score(LoadedModel(model, other, g, "tiny", torch.device("cpu"), torch.float32), long_set, None)
    with pytest.raises(NeedleError, match="asked"):
        score(model, long_set, "yarn", target_length=1024)
    small = _llama(vocab_size=200)  # ids ≥ 200 cannot be embedded: refused, not an index error
    with pytest.raises(NeedleError, match="vocabulary"):
        score(small, long_set, None)


def test_softcapped_logits_follow_the_model(tok):
    """Gemma-2 soft-caps its final logits: going through logits_to_keep keeps that processing."""
    torch.manual_seed(0)
    cfg = T.Gemma2Config(
        vocab_size=260,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=WINDOW,
        sliding_window=64,
        final_logit_softcapping=2.0,
        attn_logit_softcapping=None,
    )
    gemma = T.Gemma2ForCausalLM(cfg).eval()
    ns = build_needle_set(tok, 300, 2, template="passkey", seed=5)
    ref = _reference(gemma, ns)[0]
    assert score(gemma, ns, "yarn", target_length=300).per_sample != pytest.approx(ref, abs=TOL)  # λ applies
    assert score(gemma, ns, None).per_sample == pytest.approx(ref, abs=TOL)


# ---------------------------------------------------------------- racing


def test_racing_stops_once_the_mean_cannot_end_below_the_bar(model, tok):
    ns = build_needle_set(tok, 600, 6, template="passkey", seed=3, depths="uniform")
    lm = LoadedModel(model, tok, model_geometry(model.config), "tiny", torch.device("cpu"), torch.float32)
    spec = rescale("pi", lm.geometry, 600)
    full = score(lm, ns, spec)
    assert not full.censored and full.n_scored == 6
    # a bar above the full mean: nothing to stop, the same score as without racing
    high = score(lm, ns, spec, stop_at=full.nll * 1.01)
    assert not high.censored and high.n_scored == 6 and high.nll == pytest.approx(full.nll, rel=1e-5)
    # a bar below the first document's share: stopped after the first chunk (600 tokens → 3 documents per chunk)
    first = full.per_sample[0]
    low = score(lm, ns, spec, stop_at=first / 6 / 2)
    assert low.censored and low.n_scored == 3
    assert low.nll == pytest.approx(sum(full.per_sample[:3]) / 6, rel=1e-5)  # the lower bound of the mean
    assert low.nll <= full.nll and low.nll >= first / 6 / 2
    # the bar between: it stops exactly where the running sum / n first reaches it
    bar = sum(full.per_sample[:4]) / 6 * 0.999
    mid = score(lm, ns, spec, stop_at=bar, batch_size=1)
    k = next(i for i in range(1, 7) if sum(full.per_sample[:i]) / 6 >= bar)
    assert mid.n_scored == k and mid.censored == (k < 6)
