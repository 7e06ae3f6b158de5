"""The worker pool on a Ray cluster that has a GPU (declared: Ray places by its count, no CUDA is used): GPUs asked
for are never silently replaced by CPU workers, a late start says whether a worker is not placed or still loading,
CPU workers where asked for; a faulty worker retired; the pool options of ``evolve``."""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from longsearch.errors import InputError, RunError  # noqa: E402
from longsearch.executors import Scorer, ScoreTask  # noqa: E402
from longsearch.models import load_model  # noqa: E402
from longsearch.needles import build_needle_set  # noqa: E402
from longsearch.rope import Rescale  # noqa: E402
from longsearch.workers import WorkerPool  # noqa: E402

TARGET = 1024


@pytest.fixture(scope="module")
def model_dir(tiny_byte_llama_dir):
    return tiny_byte_llama_dir


@pytest.fixture(scope="module")
def gpu_cluster():
    """A local Ray with 4 CPUs and 1 GPU (declared), on 127.0.0.1."""
    import shutil
    import tempfile

    temp = tempfile.mkdtemp(prefix="lsrp-", dir="/tmp")
    ray.init(
        num_cpus=4,
        num_gpus=1,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp,
        object_store_memory=128 * 1024 * 1024,
        logging_level="ERROR",
    )
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(autouse=True)
def all_free(gpu_cluster):
    """Each test starts on the whole cluster: the actors of the test before it are killed (asynchronously)."""
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.fixture(scope="module")
def needles(model_dir):
    lm = load_model(model_dir, device="cpu", dtype="float32")
    return build_needle_set(lm.tokenizer, TARGET, 2, seed=0)


def _tasks(k: int) -> list[ScoreTask]:
    rng = np.random.default_rng(0)
    return [ScoreTask(f"t{i}", Rescale(np.sort(rng.uniform(1.0, 8.0, size=8)), 1.0)) for i in range(k)]


# ---------------------------------------------------------------- no silent CPU fall-back


def test_gpus_the_cluster_does_not_have_are_refused(gpu_cluster, model_dir):
    """2 GPUs per worker on a 1-GPU cluster: refused in one line. Before the fix: one CPU worker, announced only
    by "workers 1 on cpu"."""
    pool = WorkerPool(model_dir, TARGET, workers=1, gpus_per_worker=2)
    with pytest.raises(InputError, match=r"each worker needs 2 GPU\(s\) \(the cluster has GPUs\) but the Ray cluster has 1 in all"):
        pool.start()
    assert pool.workers == 0


def test_busy_gpus_are_waited_for_then_refused_naming_what_is_missing(gpu_cluster, model_dir):
    """The GPU is held by another job: the pool waits for it up to the start-up limit, then says what is missing.
    Before the fix: CPU workers at once."""
    from ray.util.placement_group import placement_group, remove_placement_group

    held = placement_group([{"GPU": 1}])
    ray.get(held.ready(), timeout=60)
    try:
        pool = WorkerPool(model_dir, TARGET, workers=1, startup_timeout=2)
        with pytest.raises(InputError, match=r"1 worker\(s\) not placed: each needs 1 GPU \+ 1 CPU, 1 GPU missing \(1 needed, 0 free\)"):
            pool.start()
    finally:
        remove_placement_group(held)


class _SlowToLoad(Scorer):
    """A worker whose model takes long to load (a first download)."""

    def load(self) -> list:
        time.sleep(60)
        return []


def test_a_worker_placed_but_still_loading_is_told_apart(gpu_cluster, model_dir):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    pool = WorkerPool(model_dir, TARGET, workers=1, device="cpu", startup_timeout=3, scorer_cls=_SlowToLoad)
    with pytest.raises(RunError, match=r"1 worker\(s\) placed but still loading the model \(\d+ s so far.*--worker-startup-timeout"):
        pool.start()


# ---------------------------------------------------------------- CPU workers where asked; a faulty worker


def test_a_worker_with_a_device_error_is_replaced_and_oom_stays_the_candidates(gpu_cluster, model_dir, needles, monkeypatch):
    """``--device cpu`` on a cluster with a GPU: CPU workers. w1 raises a CUDA-style error on every scoring (a
    sticky device error), w0 runs out of memory once: w1 is replaced after its first task (which runs again
    elsewhere); the out-of-memory task is a failed result and w0 goes on. Before the fix, w1 stayed and failed
    every task it took (31 of 32 measured)."""
    monkeypatch.setenv("LONGSEARCH_FAULT", "score@w0:1:before:oom,score@w1:1:from:device")
    with WorkerPool(model_dir, TARGET, workers=2, device="cpu") as pool:
        pool.set_needles("search", needles)
        outcomes = list(pool.map_unordered(_tasks(8)))
        stats = pool.stats()
        assert pool.device == "cpu"
    assert sorted(o.ref for o in outcomes) == [f"t{i}" for i in range(8)]
    oom = [o for o in outcomes if o.failed]
    assert len(oom) == 1 and "out of memory" in oom[0].error and oom[0].worker == "w0" and oom[0].fault is None
    assert all(math.isfinite(o.nll) for o in outcomes if o not in oom)
    assert stats.replacements == 1 and stats.failures == 0
    assert sum(o.attempts - 1 for o in outcomes) == 1  # the faulty worker took one task, run again elsewhere
    assert not any(o.worker == "w1" for o in outcomes)


def test_a_task_failing_on_every_worker_is_reported_failed(gpu_cluster, model_dir, needles, monkeypatch):
    """Every worker has a device error: the task is tried on max_attempts workers (each replaced), then failed."""
    monkeypatch.setenv("LONGSEARCH_FAULT", "score:1:from:device")
    with WorkerPool(model_dir, TARGET, workers=1, device="cpu", max_attempts=2) as pool:
        pool.set_needles("search", needles)
        out = list(pool.map_unordered(_tasks(1)))
    assert len(out) == 1 and out[0].failed and "2 workers failed on it" in out[0].error and "CUDA error" in out[0].error


def test_every_worker_gets_the_attention_implementation(gpu_cluster, model_dir):
    from longsearch.executors import InProcessPool

    with WorkerPool(model_dir, TARGET, workers=2, device="cpu", attn_implementation="eager") as pool:
        pool.start()
        assert ray.get([a.attention.remote() for a in pool.actors]) == ["eager", "eager"]
    with InProcessPool(model_dir, TARGET, device="cpu", attn_implementation="eager") as local:
        local.start()
        assert local._scorer is not None and local._scorer.attention() == "eager"


# ---------------------------------------------------------------- evolve's pool options


def test_evolve_stores_the_pool_options_and_reads_runs_without_them(tmp_path):
    from longsearch.plan import EvolveOptions, plan
    from longsearch.runs import RunConfig

    p = plan(EvolveOptions(target=2048, out=tmp_path / "run", worker_startup_timeout=1800, attn_implementation="eager"))
    assert p.config.worker_startup_timeout == 1800 and p.config.attn_implementation == "eager"
    old = {k: v for k, v in p.config.to_dict().items() if k not in ("worker_startup_timeout", "attn_implementation")}
    cfg = RunConfig.from_dict(json.loads(json.dumps(old)))  # a run written before these options
    assert cfg.worker_startup_timeout is None and cfg.attn_implementation is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--worker-startup-timeout", "0"], "--worker-startup-timeout must be a number of seconds above 0"),
        (["--attn-implementation", "nope"], "unknown attention implementation 'nope'"),
        (["--device", "gpu"], "--device must be one of auto, cpu, cuda"),
    ],
)
def test_evolve_refuses_bad_pool_options_in_one_line(run_cli, capsys, tmp_path, args, message):
    out = tmp_path / "run"
    assert run_cli("evolve", "--target", "2k", "--out", str(out), *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()
