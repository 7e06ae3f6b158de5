"""How busy does the Ray worker pool keep its workers?

For 1 and 2 workers (``--workers``): a local Ray, one actor per worker holding a model replica, the
needle set sent once; then ``--tasks`` random longrope2 candidates scored through
:meth:`WorkerPool.map_unordered` after one warm-up task per worker (not counted). Reported:

* evaluations/s over the wall time of the batch;
* utilization = busy time / (workers × wall time), busy = from dispatch of a task to its result seen by
  the driver (what the pool controls: idle gaps between tasks and the tail of the batch count against it);
* compute share = time spent inside ``score`` in the workers / (workers × wall time) (also charges Ray's
  transfer and scheduling overhead).

Target: utilization ≥ 0.9. On CPU each worker gets cores // workers threads, so 2 workers on a 2-core
machine do not score faster than 1 with 2 threads unless the model is too small to use two threads well.

    python bench/workers.py                          # the testbed model (or --model DIR), 2k tokens
    python bench/workers.py --model DIR --target 1k --tasks 24 --workers 1,2

Prints a table and writes it to bench/results/workers.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _report import emit_table

from longsearch.lengths import format_length, parse_length


def measure(model: str | None, target: int, samples: int, tasks: int, workers: int, seed: int) -> dict:
    import ray

    from longsearch.executors import ScoreTask
    from longsearch.needles import build_needle_set
    from longsearch.plan import load_model_info  # geometry + tokenizer, no weights
    from longsearch.rope import Rescale
    from longsearch.space import SearchSpace
    from longsearch.workers import WorkerPool

    geometry, tokenizer = load_model_info(model)
    space = SearchSpace.load("longrope2", geometry, target)
    needles = build_needle_set(tokenizer, target, samples, seed=seed)
    rng = np.random.default_rng(seed)
    lams = [space.sample_point(rng).lam for _ in range(tasks + workers)]
    warm = [ScoreTask(f"warm{i}", Rescale(lams[i], space.attention)) for i in range(workers)]
    batch = [ScoreTask(f"t{i}", Rescale(lam, space.attention)) for i, lam in enumerate(lams[workers:])]
    temp = tempfile.mkdtemp(prefix="lsbench-", dir="/tmp")
    cores = os.cpu_count() or 1
    ray.init(
        num_cpus=max(cores, workers),
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp,
        object_store_memory=256 * 1024 * 1024,
        logging_level="ERROR",
    )
    try:
        t0 = time.perf_counter()
        with WorkerPool(model, target, workers=workers) as pool:
            pool.set_needles("search", needles)
            pool.start()
            startup = time.perf_counter() - t0
            pool.score_all(warm)
            pool.reset_stats()
            outcomes = pool.score_all(batch)
            stats = pool.stats()
            device = pool.device
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    compute = sum(o.seconds for o in outcomes.values())
    failed = sum(1 for o in outcomes.values() if not np.isfinite(o.nll))
    return {
        "workers": workers,
        "device": device,
        "threads": max(1, cores // workers) if device == "cpu" else None,
        "tasks": len(batch),
        "failed": failed,
        "startup_s": startup,
        "wall_s": stats.wall_seconds,
        "evals_per_s": stats.evals_per_second,
        "utilization": stats.utilization,
        "compute_share": compute / (workers * stats.wall_seconds),
        "median_eval_s": statistics.median(o.seconds for o in outcomes.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory or hub id (default: the testbed)")
    ap.add_argument("--target", default="2k", help="needle document length (default 2k)")
    ap.add_argument("--samples", type=int, default=4, help="needle documents per evaluation")
    ap.add_argument("--tasks", type=int, default=24, help="evaluations measured per worker count")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "workers.md"))
    args = ap.parse_args()

    from rich.console import Console

    console = Console()
    target = parse_length(args.target)
    rows = []
    for w in [int(x) for x in args.workers.split(",") if x.strip()]:
        console.print(f"measuring {w} worker(s) …")
        rows.append(measure(args.model, target, args.samples, args.tasks, w, args.seed))

    headers = ["workers", "device", "threads/worker", "tasks", "evals/s", "utilization", "compute share", "median eval s", "startup s"]
    cells = [
        [
            str(r["workers"]),
            r["device"],
            str(r["threads"] or "-"),
            str(r["tasks"]),
            f"{r['evals_per_s']:.2f}",
            f"{r['utilization']:.3f}",
            f"{r['compute_share']:.3f}",
            f"{r['median_eval_s']:.3f}",
            f"{r['startup_s']:.1f}",
        ]
        for r in rows
    ]
    emit_table(
        console,
        f"worker pool: {args.model or 'testbed'}, {format_length(target)} tokens × {args.samples} documents",
        headers,
        cells,
        [
            f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs while measured), "
            f"Python {platform.python_version()}; model: {args.model or 'testbed'}; {format_length(target)} tokens × "
            f"{args.samples} needle documents per evaluation; {args.tasks} evaluations after one warm-up per worker."
        ],
        [
            "utilization = busy time (dispatch → result seen by the driver) / (workers × wall time); compute share = time "
            "inside `score` in the workers / (workers × wall time). Target: utilization ≥ 0.9."
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
