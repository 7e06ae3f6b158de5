"""longsearch_windowed: the logits of transformers' eager attention, with no length × length tensor on sliding layers."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from longsearch import windowed_attention as W
from longsearch.memory import AllocatorPeak

torch.set_num_threads(1)
WINDOW = 16


def _config(family: str, **extra):
    common = dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192
    )
    common.update(extra)
    window = common.pop("sliding_window", WINDOW)
    if family == "gemma3":
        return T.Gemma3TextConfig(
            **common,
            head_dim=8,
            num_hidden_layers=3,
            sliding_window=window,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        )
    if family == "gemma2":  # attention soft-capping on top of sliding layers
        return T.Gemma2Config(
            **common,
            head_dim=8,
            num_hidden_layers=2,
            sliding_window=window,
            attn_logit_softcapping=5.0,
            layer_types=["sliding_attention", "full_attention"],
        )
    if family == "mistral":  # every layer sliding, one RoPE
        return T.MistralConfig(**common, num_hidden_layers=2, sliding_window=window)
    return T.LlamaConfig(**common, num_hidden_layers=2)


def _model(family: str, implementation: str, **extra):
    torch.manual_seed(0)
    config = _config(family, **extra)
    model = T.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # sharper attention than the default init, so that the window matters
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(6.0)
    model.set_attn_implementation(W.resolve_attn_implementation(implementation, config))
    return model


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(W, "QUERY_BLOCK", 8)  # many blocks, windows crossing block edges


@pytest.mark.parametrize("family", ["gemma3", "gemma2", "mistral", "llama"])
def test_logits_equal_eager_attention(family):
    ids = torch.randint(0, 128, (2, 70), generator=torch.Generator().manual_seed(1))
    eager, ours = _model(family, "eager"), _model(family, "auto")
    expected = "sdpa" if family == "llama" else W.NAME
    assert ours.config._attn_implementation == expected
    with torch.no_grad():
        a, b = eager(ids).logits, ours(ids).logits
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    if family != "llama":  # the window changes the logits: a full causal attention would not match
        full = _model(family, "eager", sliding_window=4096)
        with torch.no_grad():
            assert (full(ids).logits - a).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["gemma3", "mistral"])
def test_padding_and_generation_with_a_cache_equal_eager_attention(family):
    eager, ours = _model(family, "eager"), _model(family, W.NAME)
    ids = torch.randint(1, 128, (2, 40), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding: the mask is materialised and plain SDPA runs
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids, attention_mask=mask).logits[1, 5:], eager(ids, attention_mask=mask).logits[1, 5:], rtol=1e-4, atol=1e-5
        )
        a = eager.generate(ids[:1], max_new_tokens=25, do_sample=False)  # beyond the window while decoding
        b = ours.generate(ids[:1], max_new_tokens=25, do_sample=False)
    assert torch.equal(a, b)


def test_a_sliding_layer_gets_no_length_by_length_tensor():
    """The sdpa path of transformers materialises a [1, 1, L, L] boolean mask for the sliding layers; longsearch_windowed's
    largest allocation is a block's, and its peak grows linearly with length. Measured with the allocator's records
    at 2048 and 4096 tokens, where L² dominates."""
    sdpa, ours = _model("gemma3", "sdpa"), _model("gemma3", "auto")
    W.QUERY_BLOCK = 256
    peaks = {}
    for n in (2048, 4096):
        ids = torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            with AllocatorPeak() as plain:
                a = sdpa(ids, logits_to_keep=1).logits
            with AllocatorPeak() as windowed:
                b = ours(ids, logits_to_keep=1).logits
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        assert plain.largest >= n * n  # the boolean mask the measurement sees in the sdpa path
        assert windowed.largest < n * n / 4
        peaks[n] = (plain.bytes, windowed.bytes)
    assert peaks[4096][0] / peaks[2048][0] > 3.5  # sdpa: quadratic
    assert peaks[4096][1] / peaks[2048][1] < 2.3  # longsearch_windowed: linear
    assert peaks[4096][1] < peaks[4096][0] / 4


def test_auto_picks_the_windowed_attention_only_for_sliding_models():
    assert W.resolve_attn_implementation("auto", _config("gemma3")) == W.NAME
    assert W.resolve_attn_implementation(None, _config("mistral")) == W.NAME
    assert W.resolve_attn_implementation("auto", _config("llama")) == "sdpa"
    assert W.resolve_attn_implementation("eager", _config("gemma3")) == "eager"


def test_eval_takes_the_attention_implementation(tmp_path, run_cli, capsys):
    import json

    from longsearch.tiny.tokenizer import build_tokenizer

    model_dir = tmp_path / "gemma3"
    _model("gemma3", "eager", vocab_size=259, max_position_embeddings=256).save_pretrained(model_dir)
    build_tokenizer().save_pretrained(model_dir)
    for asked, used in (("auto", W.NAME), ("eager", "eager")):
        out = tmp_path / f"eval-{asked}"
        args = ["eval", "--model", str(model_dir), "--lengths", "512", "--samples", "1", "--depths", "1", "--template", "passkey"]
        assert run_cli(*args, "--no-cost", "--segment", "32", "--attn-implementation", asked, "--out", str(out)) == 0
        assert json.loads((out / "eval.json").read_text())["settings"]["attn_implementation"] == used
    capsys.readouterr()
    out = tmp_path / "eval-bad"
    assert run_cli("eval", "--model", str(model_dir), "--lengths", "512", "--attn-implementation", "fast", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "unknown attention implementation 'fast'" in err and len(err.strip().splitlines()) == 1 and not out.exists()
