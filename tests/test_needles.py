"""Needle sets: haystack splits, exact-length documents for several tokenizers, determinism, refusal, CLI."""

from __future__ import annotations

import gzip
import json
import pickle
import re

import numpy as np
import pytest

from longsearch import needles as N
from longsearch.errors import InputError, NeedleError
from longsearch.needles import (
    TEMPLATES,
    build_needle_set,
    load_haystack,
    load_haystack_text,
    load_needle_set,
    tokenizer_fingerprint,
)
from longsearch.tiny.tokenizer import build_tokenizer

# ---------------------------------------------------------------- tokenizers built offline


def _bpe_tokenizer(kind: str, vocab_size: int = 700):
    """A real BPE tokenizer trained here: GPT-style byte-level or SentencePiece-style metaspace (dummy prefix)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    text = load_haystack_text("train")[:150_000]
    core = Tokenizer(models.BPE(unk_token=None if kind == "bytelevel" else "<unk>"))
    if kind == "bytelevel":
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        alphabet = sorted(set(text) | set("0123456789-:.?"))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<unk>"], initial_alphabet=alphabet, show_progress=False
    )
    core.train_from_iterator([text[i : i + 2000] for i in range(0, len(text), 2000)], trainer)
    bos = core.token_to_id("<s>")
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=1 << 30)


@pytest.fixture(scope="module")
def byte_tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def gpt_tok():
    return _bpe_tokenizer("bytelevel")


@pytest.fixture(scope="module")
def sp_tok():
    return _bpe_tokenizer("metaspace")


def _decode(tok, ids) -> str:
    return tok.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------- haystacks


def test_haystack_splits_partition_the_kjv_and_hold_out_the_dictionary():
    train, held, everything = load_haystack_text("train"), load_haystack_text("heldout"), load_haystack_text("all")
    kjv = gzip.open(N.HAYSTACK_DIR / "kjv-bible.txt.gz", "rt", encoding="utf-8").read().strip("\n")
    assert kjv.startswith(train) and 0.88 < len(train) / len(kjv) <= 0.9
    assert kjv[len(train) :].startswith("\n\n")  # cut at a paragraph boundary
    assert kjv.endswith(held[: held.index("The Devil's Dictionary")].strip("\n"))
    assert "ZOOLOGY, n." in held and "ZOOLOGY, n." not in train
    assert held[:2000] not in train
    assert "abcdefghijklmnopqrstuvwxyz" not in everything  # the stray alphabet line is gone
    assert len(everything) > 4_400_000
    with pytest.raises(InputError):
        load_haystack_text("test")


def test_user_haystack_files(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("Alpha text. More alpha.\n", encoding="utf-8")
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"text": "Beta one."}) + "\n\n" + json.dumps({"text": "Beta two.", "id": 3}) + "\n", encoding="utf-8")
    text, meta = load_haystack([txt, jl])
    assert text == "Alpha text. More alpha.\n\nBeta one.\n\nBeta two."
    assert [f["name"] for f in meta["files"]] == ["a.txt", "b.jsonl"]
    mixed, meta = load_haystack([str(txt), "heldout"])
    assert mixed == "Alpha text. More alpha.\n\n" + load_haystack_text("heldout")
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(NeedleError, match="text"):
        load_haystack([bad])
    with pytest.raises(NeedleError, match="does not exist"):
        load_haystack([tmp_path / "missing.txt"])
    other = tmp_path / "d.csv"
    other.write_text("x", encoding="utf-8")
    with pytest.raises(NeedleError, match="txt"):
        load_haystack(str(other))


# ---------------------------------------------------------------- building


@pytest.mark.parametrize("tok_name", ["byte_tok", "gpt_tok", "sp_tok"])
@pytest.mark.parametrize("template", list(TEMPLATES))
def test_documents_have_exact_length_and_a_decodable_answer(request, tok_name, template):
    tok = request.getfixturevalue(tok_name)
    length = 700
    ns = build_needle_set(tok, length, 3, template=template, seed=1)
    assert ns.length == length and len(ns) == 3 and ns.template == template
    bos = tok("a")["input_ids"][0]
    for s in ns.samples:
        assert s.input_ids.dtype == np.int64 and s.input_ids.shape == (length,)
        assert s.input_ids[0] == bos
        assert s.answer_end == length  # the answer closes the document
        m = s.meta
        value = m["answer"]
        assert len(value) == TEMPLATES[template].value_digits and value.isdigit()
        answer = _decode(tok, s.input_ids[s.answer_start : s.answer_end])
        assert answer.strip() == value
        needle = _decode(tok, s.input_ids[m["needle_start"] : m["needle_end"]]).strip()
        assert needle == TEMPLATES[template].needle.format(key=m["key"], value=value)
        question = _decode(tok, s.input_ids[m["question_start"] : s.answer_start])
        assert TEMPLATES[template].question.format(key=m["key"]).strip() in question
        # the answer is tokenized as it is in context: re-tokenizing the question + answer gives the same ids
        tail = _decode(tok, s.input_ids[m["question_start"] : length])
        assert tok(tail, add_special_tokens=False)["input_ids"][-(s.answer_end - s.answer_start) :] == list(
            s.input_ids[s.answer_start : s.answer_end]
        )
        n_needles = TEMPLATES[template].n_needles
        assert len(m["distractors"]) == n_needles - 1
        keys = [m["key"]] + [d["key"] for d in m["distractors"]]
        values = [value] + [d["value"] for d in m["distractors"]]
        assert len(set(values)) == n_needles and (template == "passkey" or len(set(keys)) == n_needles)
        for d in m["distractors"]:
            text = _decode(tok, s.input_ids[d["needle_start"] : d["needle_end"]]).strip()
            assert text == TEMPLATES[template].needle.format(key=d["key"], value=d["value"])


def _word_tokenizer(template: str | None):
    """A word-level tokenizer whose post-processor is ``template`` (None: it adds nothing)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<x>": 1, "</s>": 2, "<unk>": 3, "a": 4, "b": 5}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if template is not None:
        core.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(t, vocab[t]) for t in ("<s>", "<x>", "</s>")])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_special_prefix_is_what_the_tokenizer_puts_before_a_text(byte_tok, sp_tok):
    assert N.special_prefix(byte_tok) == [byte_tok.bos_token_id]
    assert N.special_prefix(sp_tok) == [sp_tok.bos_token_id]  # "▁a" after <s>: the same piece as without it
    assert N.special_prefix(_word_tokenizer(None)) == []
    assert N.special_prefix(_word_tokenizer("$A </s>")) == []  # what comes after the text is no prefix
    assert N.special_prefix(_word_tokenizer("<s> <x> $A </s>")) == [0, 1]
    ns = build_needle_set(byte_tok, 600, 2, seed=0)
    assert ns.meta["special_prefix"] == N.special_prefix(byte_tok)
    assert all(s.input_ids[:1].tolist() == N.special_prefix(byte_tok) for s in ns.samples)


def test_whole_document_reads_naturally_with_a_sentencepiece_style_tokenizer(sp_tok):
    ns = build_needle_set(sp_tok, 600, 2, seed=3)
    for s in ns.samples:
        text = _decode(sp_tok, s.input_ids)
        body = text.replace("<s>", "")
        assert "  " not in body and " \n" not in body  # no doubled spaces at piece joins
        assert f"is: {s.meta['answer']}." in text
        assert text.endswith(f"provided text is {s.meta['answer']}")


def test_same_seed_same_bytes_other_seed_other_set(tmp_path, gpt_tok):
    a = build_needle_set(gpt_tok, 512, 3, seed=7, depths="uniform")
    b = build_needle_set(gpt_tok, 512, 3, seed=7, depths="uniform")
    c = build_needle_set(gpt_tok, 512, 3, seed=8, depths="uniform")
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    c.save(tmp_path / "c")
    for f in ("input_ids.npy", "samples.jsonl", "manifest.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / "input_ids.npy").read_bytes() != (tmp_path / "c" / "input_ids.npy").read_bytes()
    # documents of one set take different passages
    starts = {s.meta["haystack_char_offset"] for s in a.samples}
    assert len(starts) == 3


def test_save_load_round_trip_and_refusals(tmp_path, byte_tok, gpt_tok):
    ns = build_needle_set(byte_tok, 400, 2, template="passkey", seed=0)
    ns.save(tmp_path / "set")
    back = load_needle_set(tmp_path / "set", tokenizer=byte_tok, length=400)
    assert back.length == 400 and back.template == "passkey" and back.seed == 0
    assert back.vocab_hash == tokenizer_fingerprint(byte_tok)[1]
    for x, y in zip(ns.samples, back.samples, strict=True):
        assert np.array_equal(x.input_ids, y.input_ids) and x.input_ids.dtype == y.input_ids.dtype
        assert (x.answer_start, x.answer_end, x.meta) == (y.answer_start, y.answer_end, y.meta)
    assert back == ns
    assert pickle.loads(pickle.dumps(back)) == back  # how worker processes receive it
    assert back != build_needle_set(byte_tok, 400, 2, template="passkey", seed=1)
    assert load_needle_set(tmp_path / "set" / "manifest.json").length == 400
    with pytest.raises(NeedleError, match="tokenizer"):
        load_needle_set(tmp_path / "set", tokenizer=gpt_tok)
    with pytest.raises(NeedleError, match="512"):
        load_needle_set(tmp_path / "set", length=512)
    with pytest.raises(NeedleError, match="manifest"):
        load_needle_set(tmp_path)
    (tmp_path / "set" / "samples.jsonl").write_text("{}\n", encoding="utf-8")
    with pytest.raises(NeedleError, match="does not match"):
        load_needle_set(tmp_path / "set")


def test_depths(byte_tok):
    default = build_needle_set(byte_tok, 1200, 4, seed=2)
    for s in default.samples:
        assert 0.0 <= s.meta["depth"] <= 0.1
        assert s.meta["needle_start"] < 0.3 * 1200  # near the start, far from the question
    ends = build_needle_set(byte_tok, 1200, 2, seed=2, depths=[0.0, 1.0])
    first, last = ends.samples
    assert first.meta["depth_actual"] == 0.0 and last.meta["depth_actual"] == 1.0
    assert last.meta["needle_end"] == last.meta["question_start"]  # depth 1: right before the question
    mid = build_needle_set(byte_tok, 1200, 3, seed=2, depths="0.5")
    for s in mid.samples:
        assert abs(s.meta["depth_actual"] - 0.5) < 0.2
        text = _decode(byte_tok, s.input_ids[s.meta["needle_start"] - 3 : s.meta["needle_start"]])
        assert re.search(r"[.!?]['\"]? ?$", text), text  # placed between sentences
    uni = build_needle_set(byte_tok, 1200, 6, seed=2, depths="uniform")
    assert max(s.meta["depth"] for s in uni.samples) > 0.1
    with pytest.raises(InputError):
        build_needle_set(byte_tok, 600, 1, depths=[1.5])
    with pytest.raises(InputError):
        build_needle_set(byte_tok, 600, 1, depths="deep")


def test_no_passage_repeats_and_too_short_haystack_is_refused(tmp_path, byte_tok):
    sentences = [f"Sentence number {i} tells of the {['red', 'green', 'blue'][i % 3]} hill and {i * 7} sheep." for i in range(60)]
    hay = tmp_path / "small.txt"
    hay.write_text(" ".join(sentences), encoding="utf-8")  # about 3,800 characters = bytes = tokens
    ns = build_needle_set(byte_tok, 2500, 3, seed=0, haystack=[str(hay)])
    for s in ns.samples:
        text = _decode(byte_tok, s.input_ids)
        for sent in sentences:
            assert text.count(sent) <= 1  # wrapped around the text at most once: no passage twice
    with pytest.raises(NeedleError, match="too short"):
        build_needle_set(byte_tok, 6000, 1, seed=0, haystack=[str(hay)])


def test_bad_arguments(byte_tok):
    with pytest.raises(InputError, match="template"):
        build_needle_set(byte_tok, 512, 1, template="haystack")
    with pytest.raises(InputError):
        build_needle_set(byte_tok, 512, 0)
    with pytest.raises(NeedleError, match="longer length"):
        build_needle_set(byte_tok, 200, 1, template="multi-needle")


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, gpt_tok):
    from transformers import LlamaConfig

    d = tmp_path_factory.mktemp("gptmodel")
    gpt_tok.save_pretrained(str(d))
    LlamaConfig(vocab_size=len(gpt_tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        str(d)
    )
    return d


def test_cli_build_and_show(tmp_path, model_dir):
    from typer.testing import CliRunner

    from longsearch.cli import app

    runner = CliRunner()
    out = tmp_path / "built"
    args = [
        "needles",
        "build",
        "--model",
        str(model_dir),
        "--length",
        "1k",
        "--samples",
        "2",
        "--template",
        "multi-needle",
        "--depth",
        "0.2,0.8",
        "--out",
        str(out),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    ns = load_needle_set(out, length=1024)
    assert ns.template == "multi-needle" and [s.meta["depth"] for s in ns.samples] == [0.2, 0.8]
    before = (out / "input_ids.npy").read_bytes()
    r = runner.invoke(app, [*args[:-2], "--seed", "5", "--out", str(out)])
    assert r.exit_code != 0 and isinstance(r.exception, NeedleError)  # non-empty --out refused, nothing changed
    assert (out / "input_ids.npy").read_bytes() == before
    r = runner.invoke(app, [*args[:-2], "--seed", "5", "--out", str(out), "--force"])
    assert r.exit_code == 0 and load_needle_set(out).seed == 5
    r = runner.invoke(app, ["needles", "show", str(out), "--sample", "1"])
    assert r.exit_code == 0, r.output
    s = load_needle_set(out).samples[1]
    assert s.meta["answer"] in r.output and s.meta["key"] in r.output and "tokens" in r.output
    r = runner.invoke(app, ["needles", "show", str(out), "--sample", "9"])
    assert r.exit_code != 0 and isinstance(r.exception, InputError)


def test_cli_main_turns_errors_into_one_line(tmp_path, model_dir):
    import subprocess
    import sys

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "from longsearch.cli import main; main()",
            "needles",
            "build",
            "--model",
            str(model_dir),
            "--length",
            "1k",
            "--out",
            str(tmp_path / "full"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_mixed_templates_and_spread_depths(tmp_path):
    from longsearch.needles import build_needle_set, load_needle_set
    from longsearch.tiny.tokenizer import build_tokenizer

    tok = build_tokenizer()
    ns = build_needle_set(tok, 1024, 6, template="passkey,multi-needle", seed=3, depths="spread")
    assert ns.template == "passkey+multi-needle"
    assert [s.meta["template"] for s in ns.samples] == ["passkey", "multi-needle"] * 3
    # spread: one depth in each sixth of the document
    assert sorted(int(s.meta["depth"] * 6) for s in ns.samples) == list(range(6))
    again = build_needle_set(tok, 1024, 6, template=["passkey", "multi-needle"], seed=3, depths="spread")
    assert again.samples == ns.samples  # the same seed gives the same documents
    ns.save(tmp_path / "mixed")
    back = load_needle_set(tmp_path / "mixed", tokenizer=tok, length=1024)
    assert back.samples == ns.samples and back.template == ns.template
    for s in ns.samples:
        assert tok.decode(s.input_ids[s.answer_start : s.answer_end].tolist()) == s.meta["answer"]
