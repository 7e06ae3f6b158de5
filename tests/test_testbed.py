"""Issue 4: the embedded testbed model — its tokenizer, the shipped weights, its in-window retrieval, the recipe.

The in-window check uses the project's own needle sets (held-out prose, a seed training never used) and
scorer; the recipe runs end to end on a reduced configuration and must be deterministic given its seed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from longsearch.errors import LongsearchError, RunError
from longsearch.models import TESTBED_DIR
from longsearch.tiny import tokenizer as T
from longsearch.tiny.card import TABLE_BEGIN, TABLE_END, CardCell, CardTable, render_table, write_card
from longsearch.tiny.train import DataMixer, TrainConfig, curriculum, make_batch, train

torch.set_num_threads(1)

SHIPPED = (TESTBED_DIR / "config.json").exists() and (TESTBED_DIR / "model.safetensors").exists()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason=f"the shipped testbed model is absent from {TESTBED_DIR}")

TEXTS = ["", "Hello, world.", "naïve café — 東京 🙂\n\ttabs  and  spaces ", "\x00\x01 control bytes \x7f"]


# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_is_bytes_and_round_trips(text, tmp_path):
    from transformers import AutoTokenizer

    T.save_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    ids = tok(text)["input_ids"]
    assert ids[0] == T.BOS_ID
    assert ids[1:] == list(text.encode("utf-8"))  # id b is byte b
    assert ids[1:] == T.encode_bytes(text).tolist()
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert T.decode_bytes(ids) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (T.BOS_ID, T.EOS_ID, T.PAD_ID)


# ---------------------------------------------------------------- the shipped model


@needs_shipped
def test_shipped_model_loads_offline(monkeypatch):
    from longsearch.models import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    lm = load_model(None, device="cpu")
    g = lm.geometry
    assert (g.rotary_dim, g.base, g.original_length) == (64, 10000.0, 256)
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    n = sum(p.numel() for p in lm.model.parameters())
    assert 1_000_000 < n < 10_000_000
    assert lm.tokenizer("The pass key is 12345")["input_ids"][1:] == list(b"The pass key is 12345")
    size = sum(f.stat().st_size for f in TESTBED_DIR.iterdir() if f.is_file())
    assert size < 30 * 2**20  # a few MB shipped in the package


@needs_shipped
def test_shipped_model_retrieves_needles_in_window():
    """Held-out prose, a seed never used in training, the project's passkey set and scorer: ≥ 90 % exact."""
    from longsearch.models import load_model
    from longsearch.needles import build_needle_set
    from longsearch.scoring import score

    lm = load_model(None, device="cpu")
    nset = build_needle_set(lm.tokenizer, 256, 20, template="passkey", seed=4321, depths="uniform", haystack="heldout")
    result = score(lm, nset, "none")
    assert result.accuracy >= 0.9, f"in-window needle accuracy {result.accuracy:.2f} < 0.9"
    # and the answer is really read from the needle: with the needle's value replaced, the model follows it
    s = nset.samples[result.per_sample_correct.index(True)]
    ids = torch.from_numpy(s.input_ids.copy())[None]
    answer = s.input_ids[s.answer_start : s.answer_end]
    other = np.array([ord(c) for c in "".join(str((int(chr(a)) + 3) % 10) for a in answer)])
    needle = s.input_ids[s.meta["needle_start"] : s.meta["needle_end"]]
    swapped = needle.copy()
    for k in range(len(needle) - len(answer) + 1):  # every occurrence of the value inside the needle
        if (needle[k : k + len(answer)] == answer).all():
            swapped[k : k + len(answer)] = other
    ids[0, s.meta["needle_start"] : s.meta["needle_end"]] = torch.from_numpy(swapped)
    ids[0, s.answer_start : s.answer_end] = torch.from_numpy(other)
    with torch.no_grad():
        pred = lm.model(ids).logits[0].argmax(-1).numpy()
    assert (pred[s.answer_start - 1 : s.answer_end - 1] == other).all()


# ---------------------------------------------------------------- training data


def _mixer(seed: int = 0) -> DataMixer:
    from longsearch.needles import load_haystack_text

    return DataMixer(load_haystack_text("train")[:200_000], np.random.default_rng(seed))


def test_training_prose_is_disjoint_from_heldout():
    from longsearch.needles import load_haystack_text

    train_text, heldout = load_haystack_text("train"), load_haystack_text("heldout")
    assert len(heldout) > 0.1 * len(train_text)
    probe = heldout[1000:1200]
    assert probe not in train_text


def test_needle_rows_hold_their_answer_and_vary():
    mixer = _mixer()
    ends, lengths_of_answers = set(), set()
    for length in (96, 160, 256):
        for _ in range(30):
            r = mixer.needle_row(length)
            if r is None:
                continue
            assert r.ids.shape == (length,) and r.ids[0] == T.BOS_ID
            answer = bytes(r.ids[r.answer].astype(np.uint8)).decode()
            assert answer.isdigit()
            before = bytes(r.ids[1 : r.answer.start].astype(np.uint8)).decode()
            assert answer in before  # retrievable from the context
            assert (r.weight[r.answer] > 1).all() and r.weight[0] == 0
            ends.add(r.answer.stop)
            lengths_of_answers.add(len(answer))
    assert len(ends) > 10 and len(lengths_of_answers) >= 4  # the answer is not always at one place / one size


def test_curriculum_starts_short_and_reaches_the_window():
    cfg = TrainConfig()
    first, mix0 = curriculum(cfg, 0)
    last, mix1 = curriculum(cfg, cfg.steps - 1)
    assert first < cfg.window and last == cfg.window
    assert mix0[0] > mix1[0]  # copying dominates early
    ids, w = make_batch(cfg, _mixer(), 0)
    assert ids.shape[0] == cfg.batch_size and ids.shape[1] <= first and w.shape == ids.shape


# ---------------------------------------------------------------- the recipe


def test_recipe_runs_end_to_end_and_is_deterministic(tmp_path):
    from safetensors.numpy import load_file

    from longsearch.models import load_model

    cfg = TrainConfig.quick(seed=3)
    r1 = train(cfg, tmp_path / "a")
    r2 = train(cfg, tmp_path / "b")
    train(TrainConfig.quick(seed=4), tmp_path / "c")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "loss_curve.png"):
        assert (tmp_path / "a" / name).is_file(), name
    assert (tmp_path / "a" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    w1, w2, w3 = (load_file(str(tmp_path / d / "model.safetensors")) for d in "abc")
    assert w1.keys() == w2.keys()
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)  # same seed, same weights
    assert not all(np.array_equal(w1[k], w3[k]) for k in w1)  # another seed, other weights
    assert r1.losses == r2.losses and len(r1.losses) == cfg.steps
    log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert log["n_params"] == r1.n_params
    lm = load_model(str(tmp_path / "a"), device="cpu")  # loadable through the project's loader
    assert lm.geometry.original_length == cfg.window
    assert lm.tokenizer("ab")["input_ids"] == [T.BOS_ID, 97, 98]
    with pytest.raises(RunError):
        train(cfg, tmp_path / "a")  # an existing model is never overwritten silently
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "a" / "model.safetensors").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind


def test_loss_curve_smoothing_is_a_trailing_mean_without_nans():
    from longsearch.plots import trailing_mean

    xs = [1.0, float("nan"), 3.0, 5.0, float("nan"), float("nan")]
    got = trailing_mean(xs, k=2)
    # windows [1], [1, nan], [nan, 3], [3, 5], [5, nan], [nan, nan]
    np.testing.assert_array_equal(got[:5], [1.0, 1.0, 3.0, 4.0, 5.0])
    assert np.isnan(got[5])


def test_cli_train_quick_and_refusal(tmp_path):
    from typer.testing import CliRunner

    from longsearch.cli import app

    runner = CliRunner()
    out = tmp_path / "m"
    res = runner.invoke(app, ["testbed", "train", "--out", str(out), "--quick", "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").is_file() and (out / "loss_curve.png").is_file()
    res = runner.invoke(app, ["testbed", "train", "--out", str(out), "--quick"])
    assert isinstance(res.exception, LongsearchError)  # main() turns it into one line and exit code 2


# ---------------------------------------------------------------- the card


def test_card_regions_are_replaced_and_hand_text_kept(tmp_path):
    model_dir = tmp_path / "model"
    train(TrainConfig.quick(seed=0), model_dir)
    table = CardTable("x", 128, 1234, "passkey", "heldout", 5)
    for m in ("none", "yarn"):
        for s in (1, 2):
            table.cells.append(CardCell(m, s, 128 * s, 0.5 * s, 1.0 / s, 5, 0.1))
    card = tmp_path / "MODEL_CARD.md"
    card.write_text(f"# Hand title\n\nnotes before\n\n{TABLE_BEGIN}\nold\n{TABLE_END}\n\nnotes after\n")
    write_card(card, model_dir, table)
    text = card.read_text()
    assert "notes before" in text and "notes after" in text and "old" not in text
    assert "| YaRN | 1.00 · 0.50 | 0.50 · 1.00 |" in text
    assert render_table(table) in text
    assert json.loads((model_dir / "card_table.json").read_text())["cells"][0]["method"] == "none"
    assert "parameters" in text  # the facts region was appended
