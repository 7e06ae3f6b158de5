"""The Ray worker pool, through real Ray: scores equal to in-process scoring, dead workers replaced, faulty workers
retired, workers' warnings in the driver's log, tasks split over idle workers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from longsearch.errors import RunError  # noqa: E402
from longsearch.executors import ScoreTask  # noqa: E402
from longsearch.factors import RopeFactors  # noqa: E402
from longsearch.models import load_model  # noqa: E402
from longsearch.needles import build_needle_set  # noqa: E402
from longsearch.rope import Rescale  # noqa: E402
from longsearch.scoring import score  # noqa: E402
from longsearch.workers import WorkerPool  # noqa: E402

TARGET = 1024


@pytest.fixture(scope="module")
def model_dir(tiny_byte_llama_dir):
    return tiny_byte_llama_dir


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """One local Ray for the module (pools join it and leave it running)."""
    import tempfile

    temp = tempfile.mkdtemp(prefix="lsrt-", dir="/tmp")
    ray.init(
        num_cpus=3,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp,
        object_store_memory=128 * 1024 * 1024,
        logging_level="ERROR",
    )
    yield
    ray.shutdown()
    import shutil

    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def needles(model_dir):
    lm = load_model(model_dir, device="cpu", dtype="float32")
    return build_needle_set(lm.tokenizer, TARGET, 2, seed=0)


def _tasks(geometry_n: int, k: int, prefix: str = "t") -> list[ScoreTask]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(k):
        lam = np.sort(rng.uniform(1.0, 8.0, size=geometry_n))
        out.append(ScoreTask(f"{prefix}{i}", Rescale(lam, 1.0 + 0.01 * i)))
    return out


@pytest.fixture(scope="module")
def pool(ray_session, model_dir, needles):
    """Two CPU workers shared by the tests below (each actor start costs seconds here)."""
    p = WorkerPool(model_dir, TARGET, workers=2)
    p.set_needles("search", needles)
    yield p
    p.close()


def test_pool_scores_equal_in_process_scores(pool, model_dir, needles):
    tasks = [*_tasks(8, 4), ScoreTask("bad", Rescale(np.full(8, -1.0), 1.0))]  # λ ≤ 0: a failed evaluation, not a crash
    pool.reset_stats()
    outcomes = pool.score_all(tasks)
    stats = pool.stats()
    assert set(outcomes) == {t.ref for t in tasks}
    assert stats.workers == 2 and stats.completed == len(tasks) and 0 < stats.utilization <= 1.0
    assert {o.worker for o in outcomes.values()} <= {"w0", "w1"}
    bad = outcomes["bad"]
    assert bad.nll == math.inf and bad.error and "positive" in bad.error
    # the independent computation: the same factors scored here, in this process
    torch.set_num_threads(1)
    lm = load_model(model_dir, device="cpu", dtype="float32")
    g = lm.geometry
    for t in tasks[:4]:
        f = RopeFactors(np.array(t.rescale.lam), np.ones(g.n_freq), g.original_length, TARGET, g.base, g.rotary_dim, t.rescale.m)
        s = score(lm, needles, f, target_length=TARGET)
        o = outcomes[t.ref]
        assert o.nll == pytest.approx(s.nll, rel=1e-6) and math.isfinite(o.nll)
        assert o.per_sample == pytest.approx(s.per_sample, rel=1e-6)
        assert o.per_sample_correct == s.per_sample_correct


def test_killed_worker_is_replaced_and_its_task_rerun(pool):
    tasks = _tasks(8, 8)
    pool.reset_stats()
    seen = []
    for o in pool.map_unordered(tasks):
        if not seen:
            ray.kill(pool.actors[0], no_restart=True)  # w0 holds a task (or gets the next one)
        seen.append(o)
    stats = pool.stats()
    assert sorted(o.ref for o in seen) == sorted(t.ref for t in tasks)  # every task once
    assert all(math.isfinite(o.nll) and o.error is None for o in seen)
    assert stats.replacements == 1 and stats.failures == 0
    assert any(o.attempts == 2 for o in seen)
    # the replacement takes tasks once its model is loaded (the other worker goes on meanwhile): once loaded,
    # it works, with the needles it was given
    ray.wait([s.starting for s in pool._slots if s.starting is not None], timeout=120)
    more = list(pool.map_unordered(_tasks(8, 6, prefix="u")))
    assert all(math.isfinite(o.nll) and o.error is None for o in more)
    assert any(o.worker == "w0.1" for o in seen + more)


def test_task_that_exhausts_its_attempts_is_reported_inf(pool):
    tasks = _tasks(8, 4)
    pool.max_attempts = 1
    # the worker that gets the first task is dead before anything is sent: that task, and only it, fails
    first = next(s for s in pool._slots if s.starting is None)
    ray.kill(first.actor, no_restart=True)
    try:
        seen = list(pool.map_unordered(tasks))
    finally:
        pool.max_attempts = 3
    assert sorted(o.ref for o in seen) == ["t0", "t1", "t2", "t3"]
    failed = [o for o in seen if not math.isfinite(o.nll)]
    assert [o.ref for o in failed] == ["t0"] and "worker died 1 times" in failed[0].error and failed[0].attempts == 1
    assert all(math.isfinite(o.nll) and o.error is None for o in seen if o.ref != "t0")


def test_a_task_past_its_timeout_counts_as_a_dead_worker(pool):
    pool.task_timeout, pool.max_attempts = 1e-3, 1  # no evaluation finishes within a millisecond
    try:
        seen = list(pool.map_unordered(_tasks(8, 1)))
    finally:
        pool.task_timeout, pool.max_attempts = None, 3
    assert len(seen) == 1 and seen[0].nll == math.inf and "no result within" in seen[0].error
    assert all(math.isfinite(o.nll) for o in pool.map_unordered(_tasks(8, 2)))  # the replacement works


def test_a_model_that_cannot_load_fails_fast(ray_session, tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    (tmp_path / "config.json").write_text("{}")
    pool = WorkerPool(str(tmp_path), TARGET, workers=1, startup_timeout=120)
    with pytest.raises(RunError, match="could not load the model"):
        pool.start()
    pool.close()
    # no GPU in the cluster and device auto: CPU workers, said so
    assert any("the Ray cluster has no GPU: scoring on 1 CPU worker(s)" in r.getMessage() for r in caplog.records)


def test_too_many_workers_is_refused(ray_session, model_dir):
    from longsearch.errors import InputError

    with pytest.raises(InputError, match="--workers 5 needs 5 CPUs"):
        WorkerPool(model_dir, TARGET, workers=5).start()


# ---------------------------------------------------------------- workers' warnings (issue 18)


def test_a_worker_warning_reaches_the_driver_log(pool, caplog):
    """m = nan makes every answer loss non-finite: the scorer in the worker logs a warning, which the driver logs.
    Before the fix, Ray dropped it (log_to_driver=False)."""
    import logging

    caplog.set_level(logging.WARNING)
    (o,) = pool.map_unordered([ScoreTask("nan", Rescale(np.ones(8), float("nan")))])
    hits = [r for r in caplog.records if r.name == "longsearch.scoring" and "score is +inf" in r.getMessage()]
    assert len(hits) == 1 and hits[0].levelno == logging.WARNING and "[worker w" in hits[0].getMessage()
    assert o.failed and o.fault is None  # the candidate's failure, not the worker's


# ---------------------------------------------------------------- tasks in pieces (issue 18)


@pytest.fixture(scope="module")
def many_needles(model_dir):
    """10 documents: more than a piece holds, raced (2 per piece at 1k tokens) or not (8 per piece on a CPU)."""
    lm = load_model(model_dir, device="cpu", dtype="float32")
    return build_needle_set(lm.tokenizer, TARGET, 10, seed=1)


def test_a_task_split_over_the_workers_equals_it_scored_whole(pool, model_dir, many_needles):
    """One task, two workers: before the fix one worker scored it while the other idled; now both score pieces of
    it, and the merged outcome is the whole task's — the race included (the same documents, the same stop)."""
    from longsearch.executors import Scorer

    pool.set_needles("many", many_needles)
    whole = Scorer(model_dir, TARGET, device="cpu", dtype="float32", threads=1)
    whole.set_needles("many", many_needles)
    rescale = _tasks(8, 1)[0].rescale
    full = whole.score(ScoreTask(None, rescale, needles="many"))
    assert math.isfinite(full.nll) and full.n_scored == 10
    for bar in (math.inf, 3 * full.nll, full.nll * 0.3):  # no race, a race it wins, a race it loses early
        task = ScoreTask("one", rescale, needles="many", bar=bar)
        (o,) = pool.map_unordered([task])
        ref = whole.score(task.for_worker())
        if bar != full.nll * 0.3:
            assert len(set(o.worker.split(","))) == 2  # both workers scored pieces of it
        assert o.nll == pytest.approx(ref.nll, rel=1e-9) and o.censored == ref.censored and o.n_scored == ref.n_scored
        assert o.per_sample == pytest.approx(ref.per_sample, rel=1e-9) and o.per_sample_correct == ref.per_sample_correct
        assert o.n_total == 10 and o.accuracy == pytest.approx(ref.accuracy)
    assert ref.censored and ref.n_scored < 10  # the last race stopped early, split or not
