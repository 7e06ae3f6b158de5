"""Acceptance test of issue 2: in-place RoPE patching equals transformers' own longrope, per model family.

Every model is a tiny random one built from a config (never downloaded). The independent reference is
transformers itself: the same weights loaded under ``config_with_factors`` (rope_type ``longrope``) or
under its own ``yarn`` / ``linear`` / ``llama3`` types.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers as T

from longsearch import models as M
from longsearch.errors import FactorsError, InputError, ModelError
from longsearch.factors import RopeFactors
from longsearch.models import (
    LongsearchRotaryEmbedding,
    apply_rope,
    config_with_factors,
    find_rotary_embeddings,
    keep_rope_fp32,
    load_config,
    load_model,
    longrope_rope_parameters,
    model_geometry,
    patched,
    restore_rope,
)
from longsearch.rope import Rescale, RopeGeometry, StaticSchedule

torch.set_num_threads(1)

L0 = 64  # the tiny models' original window
SHORT, LONG = 40, 100  # one length within, one beyond it
VOCAB = 97
TOL = 1e-5

BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=L0,
    initializer_range=0.1,  # sharper attention than the default 0.02, so RoPE changes show in the logits
)

FAMILIES = {
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, {}),
    "llama-head_dim": (T.LlamaConfig, T.LlamaForCausalLM, {"head_dim": 24}),  # head_dim ≠ hidden/heads (16)
    "mistral": (T.MistralConfig, T.MistralForCausalLM, {"sliding_window": 32}),
    "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, {"rope_theta": 1_000_000.0}),
    "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, {"head_dim": 24}),
    "phi3-partial": (
        T.Phi3Config,
        T.Phi3ForCausalLM,
        {"partial_rotary_factor": 0.5, "original_max_position_embeddings": L0, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
    ),
    "gemma": (T.GemmaConfig, T.GemmaForCausalLM, {"head_dim": 16}),
    "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM, {"head_dim": 16, "sliding_window": 32}),
    "gemma3": (
        T.Gemma3TextConfig,
        T.Gemma3ForCausalLM,
        {"head_dim": 16, "sliding_window": 32, "layer_types": ["sliding_attention", "full_attention"]},
    ),
}


def build(family: str, seed: int = 0, **overrides):
    config_cls, model_cls, extra = FAMILIES[family]
    kwargs = dict(BASE, **extra, **overrides)
    config = config_cls(**kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return model_cls(config).eval()


def twin(model, config):
    """The same weights under another config (transformers computes the RoPE)."""
    other = type(model)(config).eval()
    other.load_state_dict(model.state_dict())
    return other


def nontrivial_factors(g: RopeGeometry, seed: int = 1, m: float = 1.37) -> RopeFactors:
    rng = np.random.default_rng(seed)
    n = g.n_freq
    return RopeFactors(
        long_factor=np.sort(1.0 + 5.0 * rng.random(n)),  # random-ish, ≥ 1
        short_factor=0.7 + 0.6 * rng.random(n),  # not ones
        original_length=g.original_length,
        target_length=4 * g.original_length,
        base=g.base,
        rotary_dim=g.rotary_dim,
        attention_factor=m,  # not the default √(1 + ln s / ln L)
        provenance={"test": seed},
    )


def ids(length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (2, length), generator=g)


@torch.no_grad()
def logits(model, x: torch.Tensor) -> torch.Tensor:
    return model(x).logits


# ---------------------------------------------------------------- the acceptance test


@pytest.mark.parametrize("family", list(FAMILIES))
def test_patch_equals_transformers_longrope(family):
    model = build(family)
    g = model_geometry(model.config)
    factors = nontrivial_factors(g)
    reference = twin(model, config_with_factors(model.config, factors))
    assert reference.config.rope_parameters is not model.config.rope_parameters
    for length in (SHORT, LONG):
        x = ids(length)
        before = logits(model, x)
        expected = logits(reference, x)
        apply_rope(model, factors)
        got = logits(model, x)
        restore_rope(model)
        after = logits(model, x)
        torch.testing.assert_close(got, expected, rtol=0, atol=TOL)
        assert (got - before).abs().max() > 1e-4, f"{family} at {length}: the patch did not change the logits"
        assert torch.equal(after, before), f"{family} at {length}: restore_rope did not give the original logits back"
    assert not any(isinstance(m, LongsearchRotaryEmbedding) for m in model.modules())


def test_geometry_of_the_families():
    assert model_geometry(build("llama-head_dim").config) == RopeGeometry(24, 10000.0, L0)
    assert model_geometry(build("phi3-partial").config) == RopeGeometry(8, 10000.0, L0)  # 16 × 0.5
    assert model_geometry(build("qwen2").config) == RopeGeometry(16, 1_000_000.0, L0)
    gemma3 = model_geometry(build("gemma3").config)
    assert gemma3.base == 1_000_000.0 and gemma3.original_length == L0  # full attention; not sliding_window 32


def test_gemma3_sliding_layers_keep_their_local_rope():
    model = build("gemma3")
    factors = nontrivial_factors(model_geometry(model.config))
    rotary = model.model.rotary_emb
    x = torch.zeros(1, LONG, 16)
    pos = torch.arange(LONG)[None]
    local_before = rotary(x, pos, "sliding_attention")
    full_before = rotary(x, pos, "full_attention")
    apply_rope(model, factors)
    patched_rotary = model.model.rotary_emb
    assert isinstance(patched_rotary, LongsearchRotaryEmbedding) and patched_rotary.patched_type == "full_attention"
    local_after = patched_rotary(x, pos, "sliding_attention")
    full_after = patched_rotary(x, pos, "full_attention")
    assert all(torch.equal(a, b) for a, b in zip(local_after, local_before, strict=True))
    assert not torch.equal(full_after[0], full_before[0])


# ---------------------------------------------------------------- re-applying, contexts, spec kinds


def test_reapply_is_cheap_and_exact():
    model = build("llama")
    g = model_geometry(model.config)
    f1, f2 = nontrivial_factors(g, seed=1), nontrivial_factors(g, seed=2, m=1.1)
    x = ids(LONG)
    apply_rope(model, f1)
    module = model.model.rotary_emb
    out1 = logits(model, x)
    apply_rope(model, f2)
    assert model.model.rotary_emb is module  # same module, new schedule: nothing rebuilt
    assert len(find_rotary_embeddings(model)) == 1
    out2 = logits(model, x)
    torch.testing.assert_close(out2, logits(twin(model, config_with_factors(model.config, f2)), x), rtol=0, atol=TOL)
    assert (out2 - out1).abs().max() > 1e-4
    apply_rope(model, f1)
    assert torch.equal(logits(model, x), out1)  # cached inv_freq gives the same result
    restore_rope(model)
    restore_rope(model)  # restoring an unpatched model is a no-op
    assert not isinstance(model.model.rotary_emb, LongsearchRotaryEmbedding)


def test_patched_context_restores_and_nests():
    model = build("qwen2")
    g = model_geometry(model.config)
    f1, f2 = nontrivial_factors(g, seed=3), nontrivial_factors(g, seed=4)
    x = ids(LONG)
    base = logits(model, x)
    with patched(model, f1):
        inner1 = logits(model, x)
        with patched(model, f2):
            assert not torch.equal(logits(model, x), inner1)
        assert torch.equal(logits(model, x), inner1)  # back to f1, not to the original
    assert torch.equal(logits(model, x), base)
    apply_rope(model, f1)
    with patched(model, None):  # the model as loaded, inside a patched model
        assert torch.equal(logits(model, x), base)
    assert torch.equal(logits(model, x), inner1)
    restore_rope(model)
    with pytest.raises(RuntimeError), patched(model, f1):
        raise RuntimeError("boom")
    assert torch.equal(logits(model, x), base)  # restored on error too


def test_rescale_and_callable_schedules():
    model = build("llama")
    g = model_geometry(model.config)
    f = nontrivial_factors(g, seed=5)
    x_short, x_long = ids(SHORT), ids(LONG)
    # a Rescale is applied at every length: equals longrope with long = short = λ
    r = Rescale(f.long_factor, 1.25)
    same = RopeFactors(f.long_factor, f.long_factor, g.original_length, f.target_length, g.base, g.rotary_dim, 1.25)
    ref = twin(model, config_with_factors(model.config, same))
    with patched(model, r):
        torch.testing.assert_close(logits(model, x_short), logits(ref, x_short), rtol=0, atol=TOL)
    # an arbitrary callable (the host-side path) agrees with the SwitchSchedule path
    switch = f.schedule()
    with patched(model, f):
        want_short, want_long = logits(model, x_short), logits(model, x_long)
    with patched(model, lambda n: switch(n)):
        assert torch.equal(logits(model, x_short), want_short)
        assert torch.equal(logits(model, x_long), want_long)

    # any schedule that states its switch (the SwitchingSchedule protocol) takes the device-side path
    class MySwitch:
        def __call__(self, n: int) -> Rescale:
            raise AssertionError("a switching schedule is not asked per length")

        def switch(self):
            long, short, split = switch.switch()
            return long, short, split

    with patched(model, MySwitch()):
        assert torch.equal(logits(model, x_short), want_short)
        assert torch.equal(logits(model, x_long), want_long)
    # None means "as loaded"
    base = logits(model, x_long)
    apply_rope(model, f)
    apply_rope(model, None)
    assert torch.equal(logits(model, x_long), base)
    # λ = 1, m = 1 is the original RoPE
    with patched(model, "none", target_length=4 * L0):
        torch.testing.assert_close(logits(model, x_long), base, rtol=0, atol=TOL)


@pytest.mark.parametrize(
    "method,rope_parameters",
    [
        ("yarn", {"rope_type": "yarn", "factor": 4.0}),
        ("pi", {"rope_type": "linear", "factor": 4.0}),
        ("llama3", {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
        ("dynamic-ntk", {"rope_type": "dynamic", "factor": 4.0}),  # a length-dependent schedule
    ],
)
def test_method_names_match_transformers_rope_types(method, rope_parameters):
    """rope.py's λ for a named method, patched in, equals transformers' own implementation of that type."""
    model = build("llama", rope_theta=500000.0)
    params = dict(rope_parameters, rope_theta=500000.0)
    config = copy.deepcopy(model.config)
    if method == "dynamic-ntk":  # transformers' dynamic type takes L from max_position_embeddings
        config.max_position_embeddings = L0
    else:
        params["original_max_position_embeddings"] = L0
        config.max_position_embeddings = 4 * L0
    config.rope_parameters = params
    reference = twin(model, config)
    assert reference.model.rotary_emb.rope_type == params["rope_type"]
    for length in (LONG, SHORT, LONG + 20):
        x = ids(length)
        with patched(model, method, target_length=4 * L0):
            got = logits(model, x)
        torch.testing.assert_close(got, logits(reference, x), rtol=0, atol=TOL)


def test_generation_with_cache_matches_transformers():
    model = build("llama")
    f = nontrivial_factors(model_geometry(model.config), seed=6)
    reference = twin(model, config_with_factors(model.config, f))
    prompt = ids(L0 - 4)[:1]  # decoding crosses the original window
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with patched(model, f):
        got = model.generate(prompt, **kwargs)
    want = reference.generate(prompt, **kwargs)
    assert torch.equal(got, want)


def test_spec_errors():
    model = build("llama")
    g = model_geometry(model.config)
    with pytest.raises(InputError, match="target"):
        apply_rope(model, "yarn")
    with pytest.raises(InputError, match="rotary frequencies"):
        apply_rope(model, Rescale(np.ones(g.n_freq + 1)))
    other = RopeFactors.from_method("yarn", RopeGeometry(32, 10000.0, L0), 4 * L0)
    with pytest.raises(FactorsError):
        apply_rope(model, other)
    with pytest.raises(FactorsError):
        config_with_factors(model.config, other)
    with pytest.raises(InputError):
        apply_rope(model, 3.0)
    assert not isinstance(model.model.rotary_emb, LongsearchRotaryEmbedding)


def test_differently_configured_rotary_module_is_refused():
    model = build("llama")
    other = copy.deepcopy(model.config)
    other.rope_parameters = {"rope_type": "default", "rope_theta": 1234.0}
    model.model.rotary_emb = type(model.model.rotary_emb)(other)
    with pytest.raises(ModelError, match="its own RoPE settings"):
        apply_rope(model, "yarn", target_length=4 * L0)


def test_llama_with_partial_rotary_factor_is_refused():
    """transformers' Llama rotates the whole head whatever partial_rotary_factor says; patching it would break."""
    model = build("llama", partial_rotary_factor=0.5)
    with pytest.raises(ModelError, match="rotates 16 dimensions"):
        apply_rope(model, "yarn", target_length=4 * L0)


# ---------------------------------------------------------------- geometry from configs


def test_original_window_sources():
    phi3 = T.Phi3Config(
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        sliding_window=2047,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    assert model_geometry(phi3).original_length == 4096  # top level; never sliding_window
    llama31 = T.LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "original_max_position_embeddings": 8192,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
        },
    )
    assert model_geometry(llama31) == RopeGeometry(128, 500000.0, 8192)  # nested
    mistral = T.MistralConfig(max_position_embeddings=32768, sliding_window=4096)
    assert model_geometry(mistral).original_length == 32768  # max_position_embeddings, not sliding_window
    gemma2 = T.Gemma2Config(max_position_embeddings=8192, sliding_window=4096)
    assert model_geometry(gemma2).original_length == 8192
    phi3_mini = T.Phi3Config(
        hidden_size=3072, num_attention_heads=32, max_position_embeddings=4096, original_max_position_embeddings=4096, sliding_window=2047
    )
    g = model_geometry(phi3_mini)
    assert g == RopeGeometry(96, 10000.0, 4096)


def test_no_rotary_embedding_is_a_model_error():
    config = T.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB)
    with pytest.raises(ModelError, match="no rotary"):
        model_geometry(config)
    gpt2 = T.GPT2LMHeadModel(config).eval()
    with pytest.raises(ModelError, match="no rotary"):
        find_rotary_embeddings(gpt2)
    with pytest.raises(ModelError):
        apply_rope(gpt2, "yarn", target_length=1024)
    with pytest.raises(ModelError, match="no rotary"):
        model_geometry(T.BertConfig(num_hidden_layers=1))


def test_find_rotary_embeddings_is_model_level():
    model = build("gemma2")
    found = find_rotary_embeddings(model)
    assert [name for name, _ in found] == ["model.rotary_emb"]
    apply_rope(model, "yarn", target_length=4 * L0)
    found = find_rotary_embeddings(model)  # the kept original inside the patch is not counted twice
    assert [name for name, _ in found] == ["model.rotary_emb"] and isinstance(found[0][1], LongsearchRotaryEmbedding)


# ---------------------------------------------------------------- transformers equivalents


def test_longrope_rope_parameters_and_config_with_factors():
    model = build("phi3-partial")
    g = model_geometry(model.config)
    f = nontrivial_factors(g)
    params = longrope_rope_parameters(f, model.config)
    assert params["rope_type"] == "longrope" and params["partial_rotary_factor"] == 0.5
    assert params["original_max_position_embeddings"] == L0 and params["factor"] == 4.0
    assert params["attention_factor"] == f.attention_factor and params["rope_theta"] == g.base
    assert params["long_factor"] == [float(v) for v in f.long_factor]
    assert "partial_rotary_factor" not in longrope_rope_parameters(f)
    original = copy.deepcopy(model.config.to_dict())
    new = config_with_factors(model.config, f)
    assert model.config.to_dict() == original  # a copy; the input is untouched
    assert new.max_position_embeddings == 4 * L0 and new.original_max_position_embeddings == L0
    assert model_geometry(new) == g
    # Phi-3's top-level original window overrides the nested one: config_with_factors sets both
    phi3 = T.Phi3Config(
        **dict(BASE, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=L0, original_max_position_embeddings=L0)
    )
    other = RopeFactors.from_method("yarn", RopeGeometry(16, 10000.0, L0), 8 * L0)
    assert config_with_factors(phi3, other).rope_parameters["original_max_position_embeddings"] == L0
    # Gemma3: only the full-attention entry changes
    gemma3 = build("gemma3").config
    new3 = config_with_factors(gemma3, nontrivial_factors(model_geometry(gemma3)))
    assert new3.rope_parameters["full_attention"]["rope_type"] == "longrope"
    assert new3.rope_parameters["sliding_attention"] == gemma3.rope_parameters["sliding_attention"]


# ---------------------------------------------------------------- loading


def _save_tiny(tmp_path, family="llama"):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    model = build(family)
    directory = tmp_path / family
    model.save_pretrained(directory)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    words = [
        "the",
        "grass",
        "is",
        "green",
        "the",
        "sky",
        "is",
        "blue",
        "the",
        "sun",
        "is",
        "yellow",
        "here",
        "we",
        "go",
        "there",
        "and",
        "back",
        "again",
    ]
    tok.train_from_iterator([" ".join(words)] * 3, trainers.WordLevelTrainer(vocab_size=VOCAB, special_tokens=["[UNK]", "<s>", "</s>"]))
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(directory)
    return model, directory


def test_load_model_from_local_directory(tmp_path):
    original, directory = _save_tiny(tmp_path)
    lm = load_model(str(directory), device="cpu", dtype="auto", attn_implementation="eager")
    assert isinstance(lm, M.LoadedModel)
    assert lm.device == torch.device("cpu") and lm.dtype == torch.float32 and lm.name == str(directory)
    assert lm.geometry == model_geometry(original.config) == model_geometry(load_config(str(directory)))
    assert not lm.model.training
    enc = lm.tokenizer("the sky is blue")["input_ids"]
    assert len(enc) == 4 and lm.tokenizer.unk_token_id not in enc
    x = ids(LONG)
    torch.testing.assert_close(logits(lm.model, x), logits(original, x), rtol=0, atol=TOL)
    # bf16 weights, float32 frequencies
    lm16 = load_model(directory, device="cpu", dtype="bf16")
    assert lm16.dtype == torch.bfloat16 and next(lm16.model.parameters()).dtype == torch.bfloat16
    rotary = lm16.model.model.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32
    assert torch.equal(rotary.inv_freq, original.model.rotary_emb.inv_freq)


def test_keep_rope_fp32_undoes_the_bf16_cast():
    model = build("llama", rope_theta=500000.0)
    want = model.model.rotary_emb.inv_freq.clone()
    model.to(torch.bfloat16)
    assert model.model.rotary_emb.inv_freq.dtype == torch.bfloat16  # the trap
    keep_rope_fp32(model)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(model.model.rotary_emb.inv_freq, want)  # recomputed, not upcast from bf16
    assert torch.equal(model.model.rotary_emb.original_inv_freq, want)


def test_bf16_patched_matches_bf16_longrope():
    model = build("qwen3")
    f = nontrivial_factors(model_geometry(model.config), seed=7)
    reference = twin(model, config_with_factors(model.config, f)).to(torch.bfloat16)
    model.to(torch.bfloat16)
    keep_rope_fp32(model)
    keep_rope_fp32(reference)
    x = ids(LONG)
    with patched(model, f):
        assert torch.equal(logits(model, x), logits(reference, x))


def test_load_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="no model directory"):
        load_model(str(tmp_path / "does-not-exist"))
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a model directory"):
        load_config(str(tmp_path / "file.bin"))
    gpt2_dir = tmp_path / "gpt2"
    T.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB).save_pretrained(gpt2_dir)
    with pytest.raises(ModelError, match="no rotary"):
        load_model(str(gpt2_dir))
    with pytest.raises(InputError, match="dtype"):
        M.resolve_dtype("int3", torch.device("cpu"))
    with pytest.raises(InputError, match="device"):
        M.resolve_device("toaster")
    monkeypatch.setattr(M, "TESTBED_DIR", tmp_path / "missing")
    with pytest.raises(ModelError, match="testbed model is missing"):
        load_model(None)
    with pytest.raises(ModelError, match="testbed model is missing"):
        load_config(None)


def test_error_messages_are_one_line(tmp_path):
    for call in (lambda: load_model(str(tmp_path / "nope")), lambda: model_geometry(T.GPT2Config(n_layer=1))):
        with pytest.raises(ModelError) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.skipif(not (M.TESTBED_DIR / "config.json").exists(), reason="the testbed model is not shipped yet")
def test_testbed_loads_and_patches():
    lm = load_model(None, device="cpu")
    x = torch.tensor([lm.tokenizer("The grass is green.")["input_ids"]])
    base = logits(lm.model, x)
    with patched(lm.model, "yarn", target_length=4 * lm.geometry.original_length):
        assert logits(lm.model, x).shape == base.shape
    assert torch.equal(logits(lm.model, x), base)


def test_inference_mode_then_no_grad():
    """inv_freq cached under torch.inference_mode (as the scorer runs) is reusable outside it."""
    model = build("llama")
    f = nontrivial_factors(model_geometry(model.config), seed=8)
    x = ids(LONG)
    apply_rope(model, f)
    with torch.inference_mode():
        first = logits(model, x)
    again = logits(model, x)
    assert torch.equal(first, again)
    restore_rope(model)


def test_static_schedule_is_used_without_sync():
    """A StaticSchedule never asks for the length (no host sync); the switch path never calls the schedule."""
    model = build("llama")
    g = model_geometry(model.config)
    calls = []

    class Counting(StaticSchedule):
        def __call__(self, seq_len):
            calls.append(seq_len)
            return super().__call__(seq_len)

    with patched(model, Counting(Rescale(np.full(g.n_freq, 2.0), 1.1))):
        logits(model, ids(SHORT))
    assert calls == []
    with patched(model, lambda n: calls.append(n) or Rescale(np.ones(g.n_freq), 1.0)):
        logits(model, ids(SHORT))
    assert calls == [SHORT]
