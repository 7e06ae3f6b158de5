"""The Ray worker pool, through real Ray: scores equal to in-process scoring, dead workers replaced."""

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


def test_a_model_that_cannot_load_fails_fast(ray_session, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    pool = WorkerPool(str(tmp_path), TARGET, workers=1, startup_timeout=120)
    with pytest.raises(RunError, match="could not load the model"):
        pool.start()
    pool.close()


def test_too_many_workers_is_refused(ray_session, model_dir):
    from longsearch.errors import InputError

    with pytest.raises(InputError, match="--workers 5 needs 5 CPUs"):
        WorkerPool(model_dir, TARGET, workers=5).start()
