"""`longsearch evolve` end to end through real Ray: files of a run, SIGKILL + resume == uninterrupted,
a worker killed mid-run, and every refusal (one line, exit 2, nothing in the run directory changed)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import evolve_args

ray = pytest.importorskip("ray")

from longsearch.cli import main  # noqa: E402
from longsearch.factors import load_factors  # noqa: E402
from longsearch.runs import JournalRecord, RunStore  # noqa: E402

QUICK = 20  # candidates of the quick budget: 8 + 3 × 4
BASELINES = 4  # none, pi, ntk, yarn


@pytest.fixture(scope="module")
def model_dir(tiny_byte_llama_dir):
    return tiny_byte_llama_dir


def _popen(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, COLUMNS="120")
    return subprocess.Popen(
        [sys.executable, "-m", "longsearch.cli", *args], stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, env=env
    )


def _run_cli_subprocess(args: list[str], log: Path, timeout: float = 300) -> int:
    p = _popen(args, log)
    try:
        return p.wait(timeout=timeout)
    finally:
        _kill_group(p)


def _kill_group(p: subprocess.Popen) -> None:
    """SIGKILL the command and everything it started (its Ray processes share its process group)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in this process (for refusals, which never start Ray)."""
    old = sys.argv
    sys.argv = ["longsearch", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def _tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def _comparable(run: Path) -> list[dict]:
    records = RunStore(run).read_journal().records
    return sorted((r.comparable() for r in records), key=lambda d: (d["kind"], d["id"] if d["id"] is not None else -1, d["name"] or ""))


@pytest.fixture(scope="module")
def finished_run(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    rc = _run_cli_subprocess(evolve_args(model_dir, out), out.with_suffix(".log"))
    assert rc == 0, out.with_suffix(".log").read_text()[-3000:]
    return out


# ---------------------------------------------------------------- a whole run


def test_a_finished_run_has_every_file(finished_run):
    run = finished_run
    for name in ("config.json", "space.json", "journal.jsonl", "best.json", "baselines.json", "final.json", "needles/mix.json"):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    for n in cfg["serve_lengths"]:  # one needle set per served length, for the search and for validation
        assert (run / f"needles/L{n}/manifest.json").is_file()
        assert (run / f"needles-validation/L{n}/manifest.json").is_file()
    for name in ("progress.png", "factors.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == [f"gen-{g:04d}.json" for g in range(4)]
    records = RunStore(run).read_journal().records
    cands = [r for r in records if r.kind == "candidate"]
    bases = [r for r in records if r.kind == "baseline"]
    assert sorted(r.id for r in cands) == list(range(QUICK))  # each candidate evaluated exactly once
    assert sorted(r.name for r in bases) == ["none", "ntk", "pi", "yarn"] and all(r.generation == 0 for r in bases)
    assert len({(tuple(r.lam), r.m) for r in cands}) == QUICK
    assert all(math.isfinite(r.score) and r.worker for r in records)
    # every record says how much it ran: all 6 documents, or fewer when the race stopped it (then its score is
    # the lower bound sum/6, at least the bar that generation raced against)
    from longsearch.mix import load_needle_mix

    search_mix, validation_mix = load_needle_mix(run / "needles"), load_needle_mix(run / "needles-validation")
    assert search_mix.lengths[-1] == 1024 and search_mix.lengths == validation_mix.lengths
    for r in records:  # documents run are a prefix of the mix (shortest first): they give back the token-forwards
        mix = validation_mix if r.kind == "validation" else search_mix
        assert r.docs == len(r.per_sample) and r.token_forwards == mix.token_forwards(r.docs)
        assert (r.docs < len(mix.samples)) == r.censored
        # the score is the weighted mean of the sets' means (a lower bound when the race stopped it: the documents
        # not run count 0), recomputed here from the per-document values
        assert r.score == pytest.approx(_weighted(mix, r.per_sample), rel=1e-12)
        if r.censored:
            assert r.kind == "candidate" and r.generation > 0
    assert all(not r.censored for r in bases) and all(r.docs == len(search_mix.samples) for r in bases)
    # the validation mix scored each generation's best fully scored candidate (never told to the optimizer), and
    # best.json holds the one with the lowest validation score
    vals = [r for r in records if r.kind == "validation"]
    assert sorted(r.generation for r in vals) == list(range(4))
    for v in vals:
        told = [r for r in cands if r.generation == v.generation and not r.censored]
        assert v.id == min(told, key=lambda r: (r.score, r.id)).id
    choice = min(vals, key=lambda r: (r.score, r.generation, r.id))
    best = load_factors(run)
    top = next(r for r in cands if r.id == choice.id)
    assert best.long_factor.tolist() == top.lam and best.provenance["score"] == top.score
    assert best.provenance["validation_nll"] == choice.score and best.provenance["chosen_by"] == "validation"
    assert best.provenance["method"] == "longsearch:ga" and best.target_length == 1024
    assert best.attention_factor == top.m  # the default space searches m
    final = json.loads((run / "final.json").read_text())
    assert [r["name"] for r in final["rows"]] == ["longsearch", "none", "pi", "ntk", "yarn"]
    assert final["needles"]["seed"] == 1000 and all(r["nll"] is not None for r in final["rows"])
    assert final["needles"]["template"] == "passkey" and final["needles"]["depths"] == "spread"
    ra = final["rank_agreement"]  # the best, pi, ntk, yarn and the next best candidates, scored on both sets
    assert ra["n"] >= 8 and len(ra["names"]) == ra["n"] and -1 <= ra["spearman"] <= 1 and final["failed"] == []
    baselines = json.loads((run / "baselines.json").read_text())
    assert {k: v["score"] for k, v in baselines.items()} == {r.name: r.score for r in bases}


def _weighted(mix, per_sample):
    total, i = 0.0, 0
    for part, w in zip(mix.parts, mix.weights, strict=True):
        xs = per_sample[i : i + len(part.samples)]
        total += w * sum(xs) / len(part.samples)
        i += len(part.samples)
    return total


def test_resuming_a_finished_run_changes_nothing(finished_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    before = _tree_digest(run)
    code, _out, err = cli(["evolve", "--resume", str(run)], capsys)
    assert code == 0, err
    after = _tree_digest(run)
    for name in ("journal.jsonl", "final.json", "config.json", *tuple(k for k in before if k.startswith("checkpoints/"))):
        assert after[name] == before[name], name


def test_resume_refuses_a_model_that_changed(finished_run, model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model_fingerprint"]["weights"]
    cfg["model"] = str(model)
    (run / "config.json").write_text(json.dumps(cfg))
    code, _, err = cli(["evolve", "--resume", str(run)], capsys)
    assert code == 0, err  # the same files at another path: the same model
    net = AutoModelForCausalLM.from_pretrained(model)
    with torch.no_grad():
        next(net.parameters()).mul_(1.01)
    net.save_pretrained(model)  # new weights at the same path
    capsys.readouterr()  # transformers' own loading progress is not the CLI's output
    before = _tree_digest(run)
    code, _, err = cli(["evolve", "--resume", str(run)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "changed since" in err and "model.safetensors (size or content)" in err and "--accept-model-change" in err
    assert _tree_digest(run) == before
    code, _, err = cli(["evolve", "--resume", str(run), "--accept-model-change"], capsys)
    assert code == 0, err


def test_a_failed_evaluation_is_retried_on_resume_not_reused(finished_run, tmp_path):
    # a candidate of the last generation failed (a worker lost in an outage), and the run stopped before the
    # checkpoint: on resume it is evaluated again, and the run ends as if it had never failed
    run = tmp_path / "outage"
    shutil.copytree(finished_run, run)
    lines = (run / "journal.jsonl").read_text().splitlines()
    last_gen = max(json.loads(x)["generation"] for x in lines)
    idx = max(i for i, x in enumerate(lines) if json.loads(x)["kind"] == "candidate" and json.loads(x)["generation"] == last_gen)
    rec = json.loads(lines[idx])
    failed = dict(
        rec,
        score="inf",
        per_sample=[],
        accuracy=None,
        per_sample_correct=[],
        failed=True,
        censored=False,
        docs=None,
        token_forwards=None,
        error="worker died 3 times evaluating it (last: node lost)",
    )
    lines[idx] = json.dumps(failed)
    (run / "journal.jsonl").write_text("\n".join(lines) + "\n")
    (run / "checkpoints" / f"gen-{last_gen:04d}.json").unlink()
    for name in ("final.json", "best.json"):
        (run / name).unlink()
    rc = _run_cli_subprocess(["evolve", "--resume", str(run)], tmp_path / "outage.log")
    assert rc == 0, (tmp_path / "outage.log").read_text()[-3000:]
    records = RunStore(run).read_journal().records
    mine = [r for r in records if r.kind == "candidate" and r.id == rec["id"]]
    assert [r.failed for r in mine] == [True, False]  # journaled with its reason, then retried once
    assert len(records) == len(lines) + 1  # nothing else was evaluated again
    assert _comparable_last(run) == _comparable_last(finished_run)
    assert load_factors(run).provenance["candidate"] == load_factors(finished_run).provenance["candidate"]


def _comparable_last(run: Path) -> list[dict]:
    """The journal with only each candidate's last record (a retried failure leaves two)."""
    contents = RunStore(run).read_journal()
    last = list(contents.candidates().values()) + list(contents.baselines().values())
    return sorted((r.comparable() for r in last), key=lambda d: (d["kind"], d["id"] if d["id"] is not None else -1, d["name"] or ""))


# ---------------------------------------------------------------- SIGKILL in the middle of a generation


def test_sigkill_mid_generation_then_resume_equals_uninterrupted(model_dir, finished_run, tmp_path):
    run = tmp_path / "killed"
    p = _popen(evolve_args(model_dir, run), tmp_path / "killed.log")
    journal = run / "journal.jsonl"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and p.poll() is None:
            if journal.exists() and b'"generation":1,' in journal.read_bytes():
                break
            time.sleep(0.005)
    finally:
        _kill_group(p)  # SIGKILL: no handler runs, no cleanup
    lines = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
    gens = [d["generation"] for d in lines if d["kind"] == "candidate"]
    assert max(gens) >= 1 and len(lines) < QUICK + BASELINES, "the kill came too late to test anything"
    last = max(gens)
    assert gens.count(last) < 4, "killed between generations, not in the middle of one"
    assert not (run / "final.json").exists()
    # and the last write was cut off mid-line (the journal must drop it and re-run that candidate)
    with open(journal, "ab") as f:
        f.write(b'{"kind":"candidate","id":13,"generation":2,"origin":"muta')

    rc = _run_cli_subprocess(["evolve", "--resume", str(run)], tmp_path / "resumed.log")
    assert rc == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert "truncated" in (tmp_path / "resumed.log").read_text()

    assert _comparable(run) == _comparable(finished_run)  # same journal up to timing and worker fields
    a, b = load_factors(run), load_factors(finished_run)
    assert np.array_equal(a.long_factor, b.long_factor) and a.attention_factor == b.attention_factor
    assert a.provenance["score"] == b.provenance["score"] and a.provenance["candidate"] == b.provenance["candidate"]
    fa = json.loads((run / "final.json").read_text())
    fb = json.loads((finished_run / "final.json").read_text())
    assert fa["rows"] == fb["rows"]


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(model_dir, tmp_path):
    run = tmp_path / "interrupted"
    log = tmp_path / "interrupted.log"
    env = dict(os.environ, COLUMNS="200")
    p = subprocess.Popen(
        [sys.executable, "-m", "longsearch.cli", *evolve_args(model_dir, run)],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    journal = run / "journal.jsonl"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and p.poll() is None:
            if journal.exists() and journal.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.01)
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        rc = p.wait(timeout=120)
    finally:
        _kill_group(p)
    text = log.read_text()
    assert rc == 130, text[-2000:]
    assert f"--resume {run}" in text.replace("\n", "")
    contents = RunStore(run).read_journal()
    assert contents.truncated_bytes == 0 and len(contents.records) >= 3  # only whole lines
    assert not (run / "final.json").exists()


# ---------------------------------------------------------------- a worker killed during a search


def test_worker_killed_mid_run_the_search_finishes_with_every_candidate(model_dir, tmp_path):
    import tempfile

    from longsearch.evolve import EvolveOptions, EvolveReporter, prepare, search
    from longsearch.workers import WorkerPool

    class Killer(EvolveReporter):
        def __init__(self) -> None:
            self.pool: WorkerPool | None = None
            self.count = 0
            self.summaries = []

        def evaluated(self, record: JournalRecord) -> None:
            self.count += 1
            if self.count == 3:
                ray.kill(self.pool.actors[0], no_restart=True)

        def generation_finished(self, summary) -> None:
            self.summaries.append(summary)

    temp = tempfile.mkdtemp(prefix="lsre-", dir="/tmp")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp,
        object_store_memory=128 * 1024 * 1024,
        logging_level="ERROR",
    )
    try:
        run = prepare(
            EvolveOptions(model=model_dir, target=1024, samples=2, budget="quick", workers=2, out=tmp_path / "run", template="passkey")
        )
        reporter = Killer()
        with WorkerPool(model_dir, 1024, workers=2) as pool:
            reporter.pool = pool
            pool.set_needles("search", run.needles)
            pool.set_needles("validation", run.validation)
            baselines, history = search(run, pool, reporter)
            assert pool.stats().replacements == 1
        run.store.close()
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    records = RunStore(tmp_path / "run").read_journal().records
    cands = [r for r in records if r.kind == "candidate"]
    assert sorted(r.id for r in cands) == list(range(QUICK))  # the optimizer never saw the failure
    assert all(math.isfinite(r.score) and r.error is None for r in records)
    assert any(r.attempts == 2 for r in records)
    assert set(baselines) == {"none", "pi", "ntk", "yarn"} and all(math.isfinite(v) for v in baselines.values())
    assert [s.generation for s in reporter.summaries] == [0, 1, 2, 3] and len(history) == 4
    assert reporter.summaries[0].evaluated == 8 + BASELINES
    scores = [s.best_score for s in reporter.summaries]
    assert scores == sorted(scores, reverse=True)  # elitist: the best never gets worse


# ---------------------------------------------------------------- refusals: one line, exit 2, nothing changed


def test_bad_input_for_a_new_run(model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "new"
    code, _, err = cli([*evolve_args(model_dir, out)[:3], "--target", "256", "--out", str(out)], capsys)
    assert code == 2 and "not above" in err and len(err.strip().splitlines()) == 1
    bad_space = tmp_path / "mine.yaml"
    bad_space.write_text("kind: longrope2\nstep: 0.01\nbogus_key: 3\n")
    code, _, err = cli(evolve_args(model_dir, out, "--space", str(bad_space)), capsys)
    assert code == 2 and "bogus_key" in err
    code, _, err = cli(evolve_args(model_dir, out, "--optimizer", "hillclimb"), capsys)
    assert code == 2 and "unknown optimizer" in err
    code, _, err = cli(evolve_args(model_dir, out, "--budget", "lots"), capsys)
    assert code == 2 and "budget" in err
    code, _, err = cli(evolve_args(str(tmp_path / "no-such-model"), out), capsys)
    assert code == 2 and "no-such-model" in err
    assert not out.exists()  # nothing was created
    code, _, err = cli(["evolve", "--resume", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no run directory" in err
    for extra, needle in (
        (["--workers", "0"], "--workers"),
        (["--depths", "deep"], "depths"),
        (["--template", "limerick"], "unknown needle template"),
        (["--task-timeout", "0"], "--task-timeout must be a number of seconds above 0"),
        (["--gpus-per-worker", "-1"], "--gpus-per-worker must be 0"),
        (["--gpus-per-worker", "1.5"], "whole number of GPUs"),
    ):
        code, _, err = cli(evolve_args(model_dir, out, *extra), capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not out.exists()  # a rejected command leaves the file system as it found it
    # refused up front, not once Ray and the workers are up
    args = evolve_args(model_dir, out)
    i = args.index("--template")
    code, _, err = cli(args[:i] + args[i + 2 :], capsys)
    assert code == 2 and "--no-signal-check needs a named --template" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("LONGSEARCH_FAULT", "journal.jsonl:three:after:kill")
    code, _, err = cli(evolve_args(model_dir, out), capsys)
    assert code == 2 and "LONGSEARCH_FAULT" in err and "FILE:N:WHEN:ACTION" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not ray.is_initialized()


def test_a_needle_task_the_model_cannot_do_is_refused_before_anything_is_written(tmp_path):
    # the shipped testbed solves the pass key inside its 256-token window, not the magic number (which does not
    # even fit it); the random tiny model solves nothing. Measured on real Ray workers.
    out = tmp_path / "run"
    log = tmp_path / "refused.log"
    rc = _run_cli_subprocess(
        ["evolve", "--target", "512", "--template", "magic-number", "--samples", "2", "--workers", "1", "--out", str(out)], log
    )
    text = log.read_text()
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
    assert rc == 2 and "does not solve the 'magic-number' needle task" in last and "solved: passkey" in last, text[-2000:]
    assert "passkey 1.00 at 256" in text  # the check's own line: the pass key at the window, solved
    assert not out.exists()


def test_spearman_against_hand_computed_values():
    from longsearch.heldout import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take the average rank: a = 1, 2.5, 2.5, 4; b = 1, 2, 3, 4 → ρ = 4.5 / √(4.5 · 5)
    assert spearman([0.1, 0.5, 0.5, 0.9], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_refusals_leave_the_run_directory_untouched(finished_run, model_dir, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    before = _tree_digest(run)
    cases = [
        (["evolve", "--resume", str(run), "--target", "2k"], "target length"),
        (["evolve", "--resume", str(run), "--space", "longrope"], "space"),
        (["evolve", "--resume", str(run), "--seed", "5"], "seed"),
        (["evolve", "--resume", str(run), "--model", str(tmp_path)], "model"),
        (evolve_args(model_dir, run), "--resume"),  # a new run into an existing one
    ]
    for args, needle in cases:
        code, _, err = cli(args, capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)
        assert _tree_digest(run) == before, args
    # a corrupted checkpoint is refused by name
    ck = run / "checkpoints" / "gen-0003.json"
    ck.write_text(ck.read_text()[:100])
    before = _tree_digest(run)
    code, _, err = cli(["evolve", "--resume", str(run)], capsys)
    assert code == 2 and "gen-0003.json" in err and "corrupted" in err
    assert _tree_digest(run) == before
    # valid JSON, but not an optimizer state this optimizer can load
    ck.write_text(json.dumps({"kind": "longsearch.checkpoint", "schema_version": 1, "generation": 3, "optimizer": {"x": 1}}))
    before = _tree_digest(run)
    code, _, err = cli(["evolve", "--resume", str(run)], capsys)
    assert code == 2 and "gen-0003.json" in err and len(err.strip().splitlines()) == 1
    assert _tree_digest(run) == before
    # a journal damaged in the middle is refused (only a cut-off last line is recovered)
    ck.unlink()
    j = run / "journal.jsonl"
    lines = j.read_text().splitlines(keepends=True)
    j.write_text("".join(lines[:3]) + "not json\n" + "".join(lines[3:]))
    before = _tree_digest(run)
    code, _, err = cli(["evolve", "--resume", str(run)], capsys)
    assert code == 2 and "journal.jsonl line 4" in err
    assert _tree_digest(run) == before


def test_a_refused_resume_changes_nothing_not_even_a_half_written_journal_line(finished_run, model_dir, tmp_path, capsys, monkeypatch):
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    journal = run / "journal.jsonl"
    whole = journal.read_bytes()
    with open(journal, "ab") as f:  # a kill in the middle of an append, and of an atomic write
        f.write(b'{"kind":"candidate","id":20,"generation":4,"origin":"muta')
    (run / ".best.json.k1ll3d.tmp").write_text("{")
    (run / ".lock").unlink()  # as in a directory copied without it: locking must not leave one behind either
    before = _tree_digest(run)
    cases = [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--task-timeout", "-5"], "--task-timeout"),
        (["--gpus-per-worker", "-1"], "--gpus-per-worker"),
        (["--template", "multi-needle"], "made with template passkey, not multi-needle"),
        (["--template", "auto"], "made with template passkey, not auto"),  # the run named its template
        (["--depths", "uniform"], "made with depths spread, not uniform"),
        (["--signal-check"], "made with --no-signal-check, not --signal-check"),
        (["--force"], "--force starts a run over"),
    ]
    for extra, needle in cases:
        code, _, err = cli(["evolve", "--resume", str(run), *extra], capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert _tree_digest(run) == before, extra
    monkeypatch.setenv("LONGSEARCH_FAULT", "best.json")
    code, _, err = cli(["evolve", "--resume", str(run)], capsys)
    assert code == 2 and "LONGSEARCH_FAULT" in err and _tree_digest(run) == before
    monkeypatch.delenv("LONGSEARCH_FAULT")
    # refused after the run is locked and read (its needles changed): nothing written either, no lock file left
    samples = sorted((run / "needles").glob("*/samples.jsonl"))[-1]  # the target's set of the search mix
    original = samples.read_bytes()
    samples.write_bytes(original.replace(b"a", b"b", 1))
    before = _tree_digest(run)
    code, _, err = cli(["evolve", "--resume", str(run)], capsys)
    assert code == 2 and "needles" in err and _tree_digest(run) == before
    samples.write_bytes(original)
    # the same options as the run's are no conflict; the accepted resume is the one that repairs
    code, _, err = cli(["evolve", "--resume", str(run), "--template", "passkey", "--depths", "spread", "--no-signal-check"], capsys)
    assert code == 0, err
    assert journal.read_bytes() == whole and not (run / ".best.json.k1ll3d.tmp").exists()


def test_a_full_disk_while_a_run_is_created_says_so_and_leaves_nothing(model_dir, tmp_path, monkeypatch):
    from longsearch import faults
    from longsearch.errors import RunError
    from longsearch.plan import EvolveOptions, plan
    from longsearch.runstart import create_run

    out = tmp_path / "outputs" / "run"
    p = plan(EvolveOptions(model=model_dir, target=1024, samples=2, out=out, template="passkey", signal_check=False))
    monkeypatch.setattr(faults, "_COUNTS", {})
    monkeypatch.setenv("LONGSEARCH_FAULT", "manifest.json:1:before:enospc")  # the search needles' last file
    with pytest.raises(RunError) as e:
        create_run(p, "passkey", None)
    msg = str(e.value)
    assert "disk is full" in msg and "manifest.json" in msg and "start the run again" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # no run, no temporary, no outputs/ made for it


def test_a_retried_baseline_rewrites_baselines_json_and_one_failed_for_good_is_in_final_json(finished_run, tmp_path, capsys):
    # an outage failed two baselines: yarn once (a resume scores it again), ntk three times (its failure stands)
    run = tmp_path / "outage"
    shutil.copytree(finished_run, run)
    lines = (run / "journal.jsonl").read_text().splitlines()
    failed = dict(score="inf", per_sample=[], accuracy=None, per_sample_correct=[], failed=True, docs=None, token_forwards=None)
    out = []
    for x in lines:
        d = json.loads(x)
        if d["kind"] == "baseline" and d["name"] in ("yarn", "ntk"):
            bad = dict(d, **failed, error=f"worker died 3 times evaluating it (last: node lost {d['name']})")
            out += [json.dumps(bad)] * (3 if d["name"] == "ntk" else 1)
        else:
            out.append(x)
    (run / "journal.jsonl").write_text("\n".join(out) + "\n")
    baselines = json.loads((run / "baselines.json").read_text())
    written = json.loads((run / "baselines.json").read_text())
    written["yarn"]["score"] = written["ntk"]["score"] = None  # as the outage run wrote it
    (run / "baselines.json").write_text(json.dumps(written))
    code, _, err = cli(["evolve", "--resume", str(run)], capsys)
    assert code == 0, err
    records = RunStore(run).read_journal().records
    yarn = [r for r in records if r.kind == "baseline" and r.name == "yarn"]
    assert [r.failed for r in yarn] == [True, False]  # retried once; ntk is not retried (3 failures)
    assert len(records) == len(out) + 1
    now = json.loads((run / "baselines.json").read_text())
    assert now["yarn"]["score"] == baselines["yarn"]["score"] and now["ntk"]["score"] is None
    final = json.loads((run / "final.json").read_text())
    assert [(f["kind"], f["name"], f["attempts"], f["retried_on_resume"]) for f in final["failed"]] == [("baseline", "ntk", 3, False)]
    assert "node lost ntk" in final["failed"][0]["error"]


def test_a_failure_is_retried_on_resume_until_it_fails_for_good_then_reported(model_dir, tmp_path):
    """Real worker deaths (the pool tries each task once here), in a checkpointed generation: resumes evaluate the
    candidate again — a success is told to the optimizer late, deterministically across an interruption — until it
    has failed 3 times; then the final table and final.json give it with its reason."""
    import io
    import tempfile

    from rich.console import Console

    from longsearch.evolve import EvolveOptions, run_evolve
    from longsearch.render import RichReporter
    from longsearch.workers import WorkerPool

    class Reporter(RichReporter):
        """Renders to a string; kills the pool's one worker just before a chosen round is sent (its first task then
        fails), and stops (Ctrl-C) after a chosen number of journal records."""

        def __init__(self, pool, kill_generation=None, kill_retry=False, stop_after=None):
            self.out = io.StringIO()
            super().__init__(Console(file=self.out, width=300))
            self.pool, self.kill_generation, self.kill_retry, self.stop_after = pool, kill_generation, kill_retry, stop_after

        def _kill(self):
            ray.wait([s.starting for s in self.pool._slots if s.starting is not None], timeout=120)  # a replacement: up first
            ray.kill(self.pool.actors[0], no_restart=True)

        def generation_started(self, generation, *a):
            super().generation_started(generation, *a)
            if generation == self.kill_generation:
                self._kill()

        def retry_started(self, *a):
            super().retry_started(*a)
            if self.kill_retry:
                self._kill()

        def evaluated(self, record):
            super().evaluated(record)
            if self.stop_after is not None:
                self.stop_after -= 1
                if self.stop_after == 0:
                    raise KeyboardInterrupt

    def evolve(reporter, **kw):
        with reporter:
            return run_evolve(EvolveOptions(heldout=False, **kw), reporter, pool=pool)

    def state(path):
        return json.loads((path / "checkpoints" / "gen-0003.json").read_text())

    def attempts(path, cid=8):
        return [r.failed for r in RunStore(path).read_journal().records if r.kind == "candidate" and r.id == cid]

    temp = tempfile.mkdtemp(prefix="lsrf-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp, object_store_memory=128 * 1024 * 1024)
    pool = WorkerPool(model_dir, 1024, workers=1, max_attempts=1)
    try:
        run = tmp_path / "run"
        first = Reporter(pool, kill_generation=1)
        evolve(first, model=model_dir, target=1024, samples=2, budget="quick", out=run, template="passkey", signal_check=False)
        assert attempts(run) == [True]  # candidate 8, the first of generation 1, lost with its worker
        records = RunStore(run).read_journal().records
        assert all(math.isfinite(r.score) for r in records if not (r.kind == "candidate" and r.id == 8))
        gen1 = next(ln for ln in first.out.getvalue().splitlines() if ln.startswith("gen   1/3"))
        assert "1 failed" in gen1 and all("0 failed" in ln for ln in first.out.getvalue().splitlines() if ln.startswith("gen   2/3"))
        assert [c["id"] for c in state(run)["optimizer"]["failed"]] == [8]
        # a resume evaluates it again: the success reaches the optimizer late, and the checkpoint says so
        recovered, interrupted = tmp_path / "recovered", tmp_path / "interrupted"
        shutil.copytree(run, recovered)
        shutil.copytree(run, interrupted)
        r = Reporter(pool)
        evolve(r, resume=recovered)
        assert attempts(recovered) == [True, False] and len(RunStore(recovered).read_journal().records) == len(records) + 1
        assert state(recovered)["optimizer"]["failed"] == [] and "1 recovered" in r.out.getvalue()
        last = RunStore(recovered).read_journal().candidates().values()
        top = min((x for x in last if not x.censored and not x.failed), key=lambda x: (x.score, x.id))
        assert load_factors(recovered).provenance["candidate"] == top.id  # the late result counts for the best
        # stopped right after the retry is journaled, before the checkpoint: resumed, it is not evaluated again and
        # the state is the one the uninterrupted resume reached
        with pytest.raises(KeyboardInterrupt):
            evolve(Reporter(pool, stop_after=1), resume=interrupted)
        evolve(Reporter(pool), resume=interrupted)
        assert attempts(interrupted) == [True, False]
        assert state(interrupted) == state(recovered) and _comparable(interrupted) == _comparable(recovered)
        # in the original: two more resumes lose it again; then its failure stands
        for n in (2, 3):
            evolve(Reporter(pool, kill_retry=True), resume=run)
            assert attempts(run) == [True] * n
        final = Reporter(pool)
        with final:
            result = run_evolve(EvolveOptions(resume=run), final, pool=pool)  # with the held-out table
        assert attempts(run) == [True] * 3  # not evaluated a fourth time
        assert [c["id"] for c in state(run)["optimizer"]["failed"]] == [8]
        (entry,) = result.final["failed"]
        assert entry["kind"] == "candidate" and entry["id"] == 8 and entry["attempts"] == 3 and not entry["retried_on_resume"]
        assert "worker died 1 times" in entry["error"]
        table = final.out.getvalue()
        row = next(ln for ln in table.splitlines() if "candidate 8" in ln)
        assert "failed 3× (for good)" in row and "worker died 1 times" in row
        assert table.index("candidate 8") < table.index("rank agreement")  # in the table, not under it
    finally:
        pool.close()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


# ---------------------------------------------------------------- resume logic, with the workers stood in for


def _key(ref) -> str:
    """A task reference as these tests name it: ``c{id}`` for a candidate, ``b:{name}`` for a baseline, ``h:{name}``
    for a held-out row, ``v{id}`` for a candidate on the validation mix."""
    from longsearch.heldout import HeldoutEntry
    from longsearch.loop import Baseline, Validation

    if isinstance(ref, HeldoutEntry):
        return f"h:{ref.name}"
    if isinstance(ref, Validation):
        return f"v{ref.candidate.id}"
    return f"b:{ref.name}" if isinstance(ref, Baseline) else f"c{ref.id}"


def _InProcessPool(scorer, lose=()):
    """The executor without Ray (what is under test is the search's resume logic, not the pool): the real
    :class:`~longsearch.executors.Scorer` of the tiny model, in this process; a task named in ``lose`` (``c{id}``,
    ``b:{name}``) comes back as the Ray pool reports a task that lost its worker."""
    from longsearch.executors import InProcessPool, ScoreOutcome

    class Losing(InProcessPool):
        def map_unordered(self, tasks):
            for t in tasks:
                if _key(t.ref) in lose:
                    yield ScoreOutcome.failure("worker died 1 times evaluating it (last: node lost)", ref=t.ref, worker="w0")
                else:
                    yield from super().map_unordered([t])

    pool = Losing.around(scorer)
    pool.start()
    return pool


@pytest.fixture(scope="module")
def scorer(model_dir):
    from longsearch.executors import Scorer

    return Scorer(model_dir, 1024, device="cpu", threads=1)


def _stopper(after=None, end_of=None):
    """A reporter that stops the process (Ctrl-C: what is journaled is on disk, nothing after it) once ``after(record,
    n)`` holds for the n-th record journaled, or once generation ``end_of`` is checkpointed."""
    from longsearch.evolve import EvolveReporter

    class Stop(EvolveReporter):
        n = 0

        def evaluated(self, record):
            self.n += 1
            if after is not None and after(record, self.n):
                raise KeyboardInterrupt

        def generation_finished(self, summary):
            if summary.generation == end_of:
                raise KeyboardInterrupt

    return Stop()


def _evolve(out, pool, reporter=None, stopped=False, **kw):
    from longsearch.evolve import EvolveOptions, EvolveReporter, run_evolve

    opts = EvolveOptions(resume=out, **kw) if "target" not in kw else EvolveOptions(out=out, **kw)
    if stopped:
        with pytest.raises(KeyboardInterrupt):
            run_evolve(opts, reporter, pool=pool)
        return None
    return run_evolve(opts, reporter or EvolveReporter(), pool=pool)


def _new_run(model_dir):
    return dict(model=model_dir, target=1024, samples=2, budget="quick", template="passkey", signal_check=False)


def _checkpoints(run: Path) -> dict[str, dict]:
    """Every checkpoint, its history without what one process did (evaluated here, reused from the journal)."""
    out = {}
    for p in sorted((run / "checkpoints").iterdir()):
        d = json.loads(p.read_text())
        d["history"] = [{k: v for k, v in h.items() if k not in ("evaluated", "reused")} for h in d["history"]]
        out[p.name] = d
    return out


def _same_result(a: Path, b: Path) -> None:
    assert _comparable(a) == _comparable(b)  # the journal, sorted (a retried candidate's records in their order)
    assert _checkpoints(a) == _checkpoints(b)
    fa, fb = load_factors(a), load_factors(b)
    assert fa.long_factor.tolist() == fb.long_factor.tolist() and fa.attention_factor == fb.attention_factor
    assert {k: v for k, v in fa.provenance.items() if k != "run"} == {k: v for k, v in fb.provenance.items() if k != "run"}
    for name in ("final.json", "baselines.json"):
        assert json.loads((a / name).read_text()) == json.loads((b / name).read_text()), name


def test_a_run_stopped_mid_generation_after_a_failure_resumes_as_if_stopped_at_that_generation_end(model_dir, scorer, tmp_path):
    """Candidate 10, the best of generation 1, is lost with its worker; the run is stopped in the middle of generation
    2. A resume evaluates the failure again, and its success changes the GA's parents — so it must come after
    generation 2 is finished as the stopped process asked it (the checkpoint's state), not before (then the
    journal's generation-2 candidates are not the ones asked again, and no resume of the run was possible).

    What the resume must equal: not the run never stopped (no resume, so no retry: candidate 10 stays failed), but
    the run stopped at the end of generation 2 and resumed — a stop in the middle of a generation is invisible,
    and so is a second stop during the resume."""
    lost = _InProcessPool(scorer, lose={"c10"})

    def gen2(n):  # the n-th record of generation 2
        count = 0

        def after(rec, _):
            nonlocal count
            count += rec.kind == "candidate" and rec.generation == 2
            return count == n

        return after

    ref, mid, twice = tmp_path / "ref", tmp_path / "mid", tmp_path / "twice"
    _evolve(ref, lost, _stopper(end_of=2), stopped=True, **_new_run(model_dir))
    _evolve(mid, lost, _stopper(after=gen2(2)), stopped=True, **_new_run(model_dir))
    shutil.copytree(mid, twice)
    stopped = RunStore(mid).read_journal().records
    assert [r.id for r in stopped if r.kind == "candidate" and r.generation == 2] == [12, 13]
    assert not (mid / "checkpoints" / "gen-0002.json").exists()

    _evolve(ref, _InProcessPool(scorer))
    state = json.loads((ref / "checkpoints" / "gen-0002.json").read_text())["optimizer"]
    assert 10 in [p["id"] for p in state["parents"]] and state["failed"] == []  # the late success is a parent now

    _evolve(mid, _InProcessPool(scorer))  # before the fix: "cannot be resumed consistently"
    records = RunStore(mid).read_journal().records
    assert records[: len(stopped)] == stopped  # nothing the stopped process journaled was evaluated again
    cands = [r for r in records if r.kind == "candidate"]
    assert sorted(r.id for r in cands) == [*range(11), 10, *range(11, 20)]  # candidate 10 twice, all others once
    last_of_gen2 = max(i for i, r in enumerate(cands) if r.generation == 2)
    retry = next(i for i, r in enumerate(cands) if r.id == 10 and not r.failed)
    assert last_of_gen2 < retry < min(i for i, r in enumerate(cands) if r.generation == 3)
    _same_result(mid, ref)

    # stopped again during the resume, just after the retry's result is journaled (before the checkpoint says so)
    _evolve(twice, _InProcessPool(scorer), _stopper(after=lambda rec, _: rec.id == 10), stopped=True)
    _evolve(twice, _InProcessPool(scorer))
    _same_result(twice, ref)


def test_failures_per_generation_are_counted_from_the_data_across_resumes(model_dir, scorer, tmp_path, monkeypatch):
    """With one attempt allowed, a failure is never evaluated again, so a run stopped and resumed must be the run
    never stopped, history included: baseline ntk lost in generation 0, candidate 9 in generation 1, each journaled
    by one process and told by the next (which counted only its own failures)."""
    from longsearch import heldout, loop

    monkeypatch.setattr(loop, "MAX_FAILED_ATTEMPTS", 1)
    monkeypatch.setattr(heldout, "MAX_FAILED_ATTEMPTS", 1)
    lost = _InProcessPool(scorer, lose={"b:ntk", "c9"})
    ref, run = tmp_path / "ref", tmp_path / "run"
    _evolve(ref, lost, **_new_run(model_dir))
    _evolve(run, lost, _stopper(after=lambda rec, _: rec.name == "ntk"), stopped=True, **_new_run(model_dir))
    _evolve(run, lost, _stopper(after=lambda rec, _: rec.id == 10), stopped=True)
    _evolve(run, lost)
    history = json.loads((ref / "checkpoints" / "gen-0003.json").read_text())["history"]
    assert [h["failed"] for h in history] == [1, 1, 0, 0]
    _same_result(run, ref)
    final = json.loads((run / "final.json").read_text())
    assert [(f["kind"], f.get("id", f.get("name")), f["attempts"], f["retried_on_resume"]) for f in final["failed"]] == [
        ("candidate", 9, 1, False),
        ("baseline", "ntk", 1, False),
    ]


def test_a_resume_checks_baselines_json_once_and_rewrites_it_when_its_writer_was_stopped(model_dir, scorer, tmp_path, monkeypatch):
    from longsearch import runstart

    run = tmp_path / "run"
    _evolve(run, _InProcessPool(scorer), _stopper(end_of=0), stopped=True, **_new_run(model_dir))
    written = (run / "baselines.json").read_bytes()
    (run / "baselines.json").unlink()  # as if stopped after the baselines were journaled, before the file
    reads, checks = [], []
    read_json = RunStore.read_json
    monkeypatch.setattr(RunStore, "read_json", lambda self, name: reads.append(name) or read_json(self, name))
    check = runstart.check_options
    monkeypatch.setattr(runstart, "check_options", lambda opts: checks.append(opts) or check(opts))
    _evolve(run, _InProcessPool(scorer), heldout=False)  # generations 1 to 3
    assert (run / "baselines.json").read_bytes() == written
    assert reads.count("baselines.json") == 0  # its one check found it missing; not read back after each generation
    assert len(checks) == 1  # every option checked once
    reads.clear()
    _evolve(run, _InProcessPool(scorer), heldout=False)  # a finished run: baselines.json compared once, not rewritten
    assert reads.count("baselines.json") == 1 and (run / "baselines.json").read_bytes() == written


def test_resume_with_template_auto_says_what_auto_was_given_as(model_dir, tmp_path):
    from longsearch.errors import RunError
    from longsearch.plan import EvolveOptions, plan
    from longsearch.runstart import create_run, open_resume

    out = tmp_path / "run"
    p = plan(EvolveOptions(out=out, **_new_run(model_dir)))
    create_run(p, "passkey", {"threshold": 0.75, "templates": {}, "solved": ["magic-number", "passkey"]}).store.close()
    with pytest.raises(RunError) as e:
        open_resume(EvolveOptions(resume=out, template="auto"))
    msg = str(e.value)
    assert "made with template passkey, not auto (the templates its signal check found solved: magic-number+passkey)" in msg


def test_a_cost_budget_is_shown_in_evals_worth_not_in_generations():
    import io

    from rich.console import Console

    from longsearch.loop import GenerationSummary, generations_of
    from longsearch.optimizers import make_optimizer
    from longsearch.render import RichReporter
    from longsearch.rope import RopeGeometry
    from longsearch.space import SearchSpace

    space = SearchSpace.load("longrope2", RopeGeometry(16, 10000.0, 256), 1024)
    assert generations_of(make_optimizer("ga", space, "64evals", 0)) is None
    assert generations_of(make_optimizer("ga", space, "quick", 0)) == 4
    out = io.StringIO()
    reporter = RichReporter(Console(file=out, width=200))
    with reporter:
        reporter.generation_started(2, None, 8, 0)
        assert reporter.progress.tasks[-1].description == "generation 2"
        reporter.generation_started(2, 4, 8, 0)
        assert reporter.progress.tasks[-1].description == "generation 2/3"
        s = GenerationSummary(2, None, 5.5, 3, "mutation", None, "yarn", 5.6, 8, 0, 1.0, spent=40.0, max_cost=64.0)
        reporter.generation_finished(s)
    assert "gen   2 (40/64 evals' worth)" in out.getvalue()


def test_export_says_how_each_engine_serves_the_factors_with_the_runs_per_length_accuracy(finished_run, model_dir, tmp_path):
    """vLLM and llama.cpp apply the long factors to every prompt once the context exceeds the window: the export of a
    run says so, with the held-out accuracy of the long factors at each served length from final.json."""
    from longsearch.export import export
    from longsearch.lengths import format_length

    final = json.loads((finished_run / "final.json").read_text())
    row = next(r for r in final["rows"] if r["name"] == "longsearch")
    assert [p["length"] for p in row["per_length"]] == json.loads((finished_run / "config.json").read_text())["serve_lengths"]
    measured = ", ".join(f"{format_length(p['length'])} {p['accuracy']:.2f}" for p in row["per_length"])
    vllm = export(finished_run, "vllm", tmp_path / "v", model_dir=str(model_dir))
    hf = export(finished_run / "best.json", "hf", tmp_path / "h", model_dir=str(model_dir))
    vnote = next(n for n in vllm.notes if n.startswith("vLLM chooses once"))
    hnote = next(n for n in hf.notes if n.startswith("transformers switches per forward"))
    assert measured in vnote and measured in hnote and "--max-model-len: above 256" in vnote
    # factors that are not this run's best (another candidate): no measurement is claimed for them
    other = load_factors(finished_run)
    other.provenance["candidate"] = -1
    other.save(tmp_path / "best.json")
    shutil.copy(finished_run / "final.json", tmp_path / "final.json")
    alone = export(tmp_path / "best.json", "vllm", tmp_path / "v2", model_dir=str(model_dir))
    assert not any(measured in n for n in alone.notes)
    assert any("--serving long-everywhere" in n for n in alone.notes)
