"""RULER-style tasks in eval (``eval --suite ruler`` / ``--tasks``) and as search signals (``evolve --template TASK``),
on the shipped testbed: the report's tables and means, the files, refusals in one line, the in-window check of a
task template, and task sets read by the search's scorer."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from longsearch.errors import InputError
from longsearch.mix import load_needle_mix
from longsearch.models import load_model
from longsearch.needles import load_needle_set
from longsearch.rope import Rescale
from longsearch.ruler import NOT_BUILT, TASKS, build_task_set, is_task_set, score_task
from longsearch.ruler.signal import NOT_SIGNALS, build_signal_set, signal_template_names
from longsearch.scoring import score
from longsearch.task_result import TaskCell, TaskSuite


@pytest.fixture(scope="module")
def testbed():
    return load_model(None, device="cpu")


def _one_line_refusal(run_cli, capsys, *args: str) -> str:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- the table and its means (no model)


def _suite() -> TaskSuite:
    fam = {"niah-single-1": "retrieval", "vt": "multi-hop", "cwe": "aggregation"}
    nan = math.nan
    cells = [
        TaskCell("none", "niah-single-1", "retrieval", 256, 1.0, 0.1, 2, "teacher-forced", 0.1),
        TaskCell("none", "vt", "multi-hop", 256, nan, nan, 0, "generate", 0.0, fits=False, error="256 tokens cannot hold the vt task"),
        TaskCell("none", "cwe", "aggregation", 256, 0.5, 2.0, 2, "generate", 0.1, outputs=["a, b"]),
        TaskCell("none", "niah-single-1", "retrieval", 512, 0.5, 0.3, 2, "teacher-forced", 0.1),
        TaskCell("none", "vt", "multi-hop", 512, 0.2, 1.0, 2, "generate", 0.1),
        TaskCell("none", "cwe", "aggregation", 512, 0.0, 2.5, 2, "generate", 0.1),
        TaskCell("yarn", "niah-single-1", "retrieval", 256, 1.0, 0.1, 2, "teacher-forced", 0.1),
        TaskCell("yarn", "vt", "multi-hop", 256, nan, nan, 0, "generate", 0.0, fits=False, error="256 tokens cannot hold the vt task"),
        TaskCell("yarn", "cwe", "aggregation", 256, nan, nan, 2, "generate", 0.0, error="out of memory"),
        TaskCell("yarn", "niah-single-1", "retrieval", 512, 1.0, 0.1, 2, "teacher-forced", 0.1),
        TaskCell("yarn", "vt", "multi-hop", 512, 0.6, 0.5, 2, "generate", 0.1),
        TaskCell("yarn", "cwe", "aggregation", 512, 0.2, 2.0, 2, "generate", 0.1),
    ]
    settings = {"samples": 2, "seed": 777, "haystack": "heldout", "scoring": {t: TASKS[t].scoring for t in fam}}
    return TaskSuite(list(fam), fam, [256, 512], cells, settings, dict(NOT_BUILT))


def test_the_ruler_average_counts_the_tasks_that_fit_and_did_not_fail():
    s = _suite()
    assert s.average("none", 256) == (0.75, 2)  # vt does not fit 256
    assert s.average("none", 512) == (pytest.approx(0.7 / 3), 3)
    assert s.average("yarn", 256) == (1.0, 1)  # cwe failed there
    assert s.average("yarn", 512) == (pytest.approx(1.8 / 3), 3)
    assert s.average("yarn", 512, ["vt", "cwe"]) == (pytest.approx(0.4), 2)
    assert math.isnan(s.average("none", 1024)[0]) and s.average("none", 1024)[1] == 0
    d = s.to_dict(["none", "yarn"])
    assert {(r["method"], r["length"]): (r["average"], r["tasks_counted"]) for r in d["summary"]}[("none", 256)] == (0.75, 2)
    assert d["not_built"] == NOT_BUILT and d["cells"][1]["score"] is None and d["cells"][1]["fits"] is False
    json.dumps(d, allow_nan=False)  # no NaN in eval.json
    rows = s.csv_rows(["none", "yarn"])
    means = {(r[1], r[2]): (r[6], r[7]) for r in rows if r[0] == "task-mean"}
    assert means[("none", 256)] == ("0.75", 2) and means[("yarn", 256)] == ("1.0", 1)
    assert [r[9] for r in rows if r[0] == "task" and r[10] == "vt" and r[2] == 256] == ["256 tokens cannot hold the vt task"] * 2
    md = s.render_markdown(["none", "yarn"])
    assert "| none | 0.75 (2/3) | 0.23 |" in md
    assert "| vt | multi-hop | generate | does not fit | 0.20 |" in md
    assert "| cwe | aggregation | generate | failed | 0.20 |" in md
    assert "- yarn, cwe at 256: out of memory" in md and "Does not fit: vt at 256" in md
    assert "Not built: qa_1" in md


# ---------------------------------------------------------------- eval --suite ruler on the testbed


def test_cli_eval_suite_ruler_on_the_testbed(run_cli, capsys, tmp_path, testbed):
    out = tmp_path / "ev"
    args = ["--lengths", "256,512", "--samples", "1", "--depths", "1", "--template", "passkey", "--no-cost", "--device", "cpu"]
    assert run_cli("eval", "--suite", "ruler", *args, "--baselines", "yarn", "--task-samples", "2", "--out", str(out)) == 0
    data = json.loads((out / "eval.json").read_text())
    tasks = data["tasks"]
    assert tasks["tasks"] == list(TASKS) and set(tasks["not_built"]) == set(NOT_BUILT)
    cells = tasks["cells"]
    assert len(cells) == 2 * len(TASKS) * 2  # none and yarn × every task × two lengths
    by = {(c["method"], c["task"], c["length"]): c for c in cells}
    # a task the 256-token byte window cannot hold is reported, not dropped; at 512 it fits
    assert by[("none", "vt", 256)]["fits"] is False and "cannot hold" in by[("none", "vt", 256)]["error"]
    assert by[("none", "vt", 512)]["fits"] is True and by[("none", "vt", 512)]["score"] is not None
    for row in tasks["summary"]:  # the RULER-style average: the mean over the cells that fit
        got = [c["score"] for c in cells if c["method"] == row["method"] and c["length"] == row["length"] and c["fits"] and not c["error"]]
        assert row["tasks_counted"] == len(got) and row["average"] == pytest.approx(float(np.mean(got)))
    # each cell is the task's own scoring: the same numbers as ruler.score_task on the same set
    for task in ("niah-single-1", "fwe"):
        ts = build_task_set(testbed.tokenizer, task, 256, 2, seed=777)
        ref = score_task(testbed, ts, None)
        c = by[("none", task, 256)]
        assert c["mode"] == ref.mode and c["score"] == pytest.approx(ref.score) and c["per_sample"] == pytest.approx(ref.per_sample)
        assert c["nll"] == pytest.approx(ref.nll, rel=1e-5)
        if ref.mode == "generate":
            assert c["outputs"] == ref.outputs[:2]
    report = (out / "report.md").read_text()
    assert "## RULER-style tasks" in report and "### none: task × length" in report and "does not fit" in report
    assert "Not built: qa_1" in report
    for family in ("retrieval", "multi-hop", "aggregation"):
        assert (out / f"tasks_{family}.png").stat().st_size > 0 and f"(tasks_{family}.png)" in report
    rows = list(csv.DictReader(io.StringIO((out / "eval.csv").read_text())))
    assert sum(r["kind"] == "task" for r in rows) == len(cells) and sum(r["kind"] == "task-mean" for r in rows) == 4
    assert "RULER-style average" in capsys.readouterr().out


def test_cli_eval_single_tasks_by_name(run_cli, capsys, tmp_path):
    out = tmp_path / "ev"
    args = ["--lengths", "512", "--samples", "1", "--depths", "1", "--template", "passkey", "--no-cost", "--device", "cpu"]
    assert run_cli("eval", "--tasks", "niah_single_1,vt", *args, "--task-samples", "1", "--out", str(out)) == 0
    tasks = json.loads((out / "eval.json").read_text())["tasks"]
    assert tasks["tasks"] == ["niah-single-1", "vt"] and set(tasks["families"].values()) == {"retrieval", "multi-hop"}
    assert len(tasks["cells"]) == 2


def test_a_method_that_does_not_generate_gets_failed_cells_and_the_rest_goes_on(testbed):
    from longsearch.evaluate import build_methods
    from longsearch.ruler.suite import run_tasks

    methods = build_methods(testbed.geometry, ["nbce"], [], 1024)
    suite = run_tasks(testbed, methods, ["niah-single-1", "fwe"], [256], samples=1)
    nbce = methods[1].label
    single, listed = suite.cell(nbce, "niah-single-1", 256), suite.cell(nbce, "fwe", 256)
    assert single.ok and single.mode == "teacher-forced"  # scored through NBCE's own needle scorer
    assert not listed.ok and "does not generate" in (listed.error or "") and math.isfinite(listed.nll)
    assert suite.average(nbce, 256) == (single.score, 1) and suite.cell("none", "fwe", 256).ok
    assert f"- {nbce}, fwe at 256: {nbce} does not generate" in suite.render_markdown([m.label for m in methods])


def test_eval_refuses_an_unknown_task_or_suite_in_one_line(run_cli, capsys, tmp_path):
    out = tmp_path / "never"
    common = ["--lengths", "256", "--out", str(out)]
    assert "unknown task 'niah-single-9'" in _one_line_refusal(run_cli, capsys, "eval", "--tasks", "niah-single-9", *common)
    assert "unknown suite 'rulr'" in _one_line_refusal(run_cli, capsys, "eval", "--suite", "rulr", *common)
    assert "SQuAD" in _one_line_refusal(run_cli, capsys, "eval", "--tasks", "qa_1", *common)
    assert "--task-samples" in _one_line_refusal(run_cli, capsys, "eval", "--suite", "ruler", "--task-samples", "0", *common)
    assert not out.exists()


# ---------------------------------------------------------------- tasks as search signals


def test_signal_template_names():
    assert signal_template_names("niah_multikey_2") == ["niah-multikey-2"]
    assert signal_template_names("passkey,multi-needle") == ["passkey", "multi-needle"]
    with pytest.raises(InputError, match="on its own"):
        signal_template_names("passkey+vt")
    with pytest.raises(InputError, match="cannot be a search signal"):
        signal_template_names("cwe")
    with pytest.raises(InputError, match="unknown needle template 'limerick'"):
        signal_template_names("limerick")
    from longsearch.runs import template_key

    assert template_key("NIAH_single_1") == "niah-single-1"  # a resumed run compares its template this way


@pytest.mark.parametrize(("task", "length"), [("niah-single-1", 256), ("niah-multivalue", 512), ("vt", 512), ("fwe", 256)])
def test_a_task_search_set_is_the_generators_and_the_scorer_reads_it(testbed, tmp_path, task, length):
    ns = build_signal_set(testbed.tokenizer, length, 3, task, seed=5, depths="spread")
    same = build_task_set(testbed.tokenizer, task, length, 3, seed=5, depths="spread")
    assert is_task_set(ns) and ns.template == task
    assert all(np.array_equal(a.input_ids, b.input_ids) for a, b in zip(ns.samples, same.samples, strict=True))
    plain = Rescale(np.ones(testbed.geometry.n_freq), 1.0)
    s = score(testbed, ns, plain, target_length=length)  # what a search worker runs
    assert math.isfinite(s.nll) and len(s.per_sample) == 3 and s.error is None
    ns.save(tmp_path / "needles")  # a run keeps its needles; a resume loads them
    back = load_needle_set(tmp_path / "needles", tokenizer=testbed.tokenizer, length=length)
    assert is_task_set(back) and score(testbed, back, plain, target_length=length).nll == pytest.approx(s.nll)
    raced = score(testbed, ns, plain, target_length=length, stop_at=0.0)  # raced against a bar no set can beat
    assert raced.nll >= 0.0 and (raced.censored or raced.nll == pytest.approx(s.nll))


@pytest.fixture(scope="module")
def pool():
    from longsearch.executors import InProcessPool

    p = InProcessPool(None, 512, device="cpu", threads=1)
    yield p
    p.close()


def test_a_task_template_is_checked_in_the_window(pool, tmp_path):
    from longsearch.evolve import EvolveOptions, prepare

    # the testbed solves niah-single-1 inside its 256-token window: a search on it is written
    out = tmp_path / "run"
    run = prepare(EvolveOptions(target=512, template="niah-single-1", samples=2, out=out), pool)
    # the served lengths (the window and the target), one task set each; the validation mix is task sets too
    mix = run.needles
    assert run.config.template == "niah-single-1" and mix.lengths == [256, 512] and all(is_task_set(p) for p in mix.parts)
    assert run.validation is not None and all(is_task_set(p) for p in run.validation.parts)
    measured = run.config.signal["templates"]["niah-single-1"]
    assert measured["accuracy"] >= 0.75 and measured["length"] == 256
    expected = build_task_set(run.tokenizer, "niah-single-1", 512, 2, seed=run.config.seed + 7919, depths="spread")
    assert [s.input_ids.tolist() for s in mix.parts[-1].samples] == [s.input_ids.tolist() for s in expected.samples]
    loaded = load_needle_mix(out / "needles", tokenizer=run.tokenizer, length=512)
    assert loaded.lengths == [256, 512] and all(is_task_set(p) for p in loaded.parts)
    run.store.close()
    # not fwe (0.00 in its window): refused in one line with the measured score, nothing written
    refused = tmp_path / "refused"
    with pytest.raises(InputError) as e:
        prepare(EvolveOptions(target=512, template="fwe", samples=2, out=refused), pool)
    msg = str(e.value)
    assert "does not solve the 'fwe' RULER-style task inside its window (accuracy 0.00 at 256 tokens" in msg
    assert "solved: passkey" in msg and len(msg.splitlines()) == 1
    assert not refused.exists()


def test_template_auto_still_chooses_among_the_needle_templates(pool, tmp_path):
    from longsearch.needles import TEMPLATES
    from longsearch.plan import EvolveOptions, measure_signal, plan, signal_templates

    p = plan(EvolveOptions(target=512, samples=2, out=tmp_path / "auto"))
    signal = measure_signal(p, pool)
    assert list(signal["templates"]) == list(TEMPLATES)
    assert signal_templates(p, signal) == "passkey+passkey-recall"  # never a task, never passkey-find
    assert not (tmp_path / "auto").exists()


def test_evolve_refuses_cwe_as_a_signal_in_one_line(run_cli, capsys, tmp_path):
    out = tmp_path / "run"
    err = _one_line_refusal(run_cli, capsys, "evolve", "--target", "512", "--template", "cwe", "--out", str(out))
    assert "cannot be a search signal" in err and "alphabetically" in err and "cwe" in NOT_SIGNALS
    err = _one_line_refusal(run_cli, capsys, "evolve", "--target", "512", "--template", "passkey,vt", "--out", str(out))
    assert "on its own" in err
    assert not out.exists()


def test_the_docs_table_names_every_task():
    text = (Path(__file__).resolve().parents[1] / "docs" / "ruler.md").read_text()
    for task in TASKS:
        assert f"| {task} |" in text
