"""Does the search find better factors than PI, NTK and YaRN, and which optimizer finds them?

On the testbed model (or ``--model``) at 8× and 16× its window (``--scales``): ``longsearch evolve``
with each optimizer (``--optimizers``, default the GA, nevergrad TwoPointsDE and optuna TPE) at the
same budget (``--budget``: ``paper`` = LongRoPE2's 40 generations, 1,344 evaluations; ``quick``; or a
number of generations), then the best factors and PI / NTK / YaRN / none scored on a held-out needle set
(another seed, same length). Reported per scale: held-out needle NLL and accuracy, the NLL on the search
needles, and the evaluations spent.

Each search is an ordinary run directory under ``--runs`` (default outputs/bench-search/), so an
interrupted benchmark continues where it stopped: run the same command again.

    python bench/search_quality.py                                  # paper budget (hours on a 2-core CPU)
    python bench/search_quality.py --budget 4 --samples 4           # 4 generations: a smaller budget
    python bench/search_quality.py --scales 8 --optimizers ga --budget quick
    python bench/search_quality.py --spaces longrope2,longrope --optimizers ga --budget 1

Prints a table and writes it to bench/results/search_quality.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from longsearch.lengths import format_length  # noqa: E402

from _report import emit_table  # noqa: E402


def run_one(model: str | None, target: int, space: str, optimizer: str, budget: str, samples: int, seed: int,
            workers: int | None, runs: Path):
    from longsearch.evolve import EvolveOptions, default_out, run_evolve

    out = runs / default_out(model, target, space, optimizer, seed).name / f"b{budget}-n{samples}"
    opts = EvolveOptions(model=model, target=target, space=space, budget=budget, optimizer=optimizer,
                         samples=samples, seed=seed, workers=workers, out=out)
    if (out / "config.json").exists():
        opts = EvolveOptions(resume=out, workers=workers)
    t0 = time.perf_counter()
    result = run_evolve(opts)
    return result, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory or hub id (default: the testbed)")
    ap.add_argument("--scales", default="8,16", help="comma-separated extension ratios (target = ratio × window)")
    ap.add_argument("--optimizers", default="ga,nevergrad:TwoPointsDE,optuna:TPE")
    ap.add_argument("--spaces", default="longrope2", help="comma-separated search spaces (presets or YAML files)")
    ap.add_argument("--budget", default="paper", help="paper (default), quick, or a number of generations")
    ap.add_argument("--samples", type=int, default=8, help="needle documents per evaluation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--runs", default="outputs/bench-search", help="where the run directories go")
    ap.add_argument("--out", default=str(HERE / "results" / "search_quality.md"))
    args = ap.parse_args()

    import ray
    from rich.console import Console

    from longsearch.evolve import load_model_info

    console = Console()
    geometry, _ = load_model_info(args.model)
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    scales = [int(s) for s in args.scales.split(",") if s.strip()]
    spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
    runs = Path(args.runs)
    temp = tempfile.mkdtemp(prefix="lsbench-", dir="/tmp")
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False, _temp_dir=temp,
             object_store_memory=256 * 1024 * 1024, logging_level="ERROR")  # one Ray for every search
    rows: list[list[str]] = []
    try:
        for scale in scales:
            target = geometry.original_length * scale
            baselines_done = False
            for space, opt in [(sp, o) for sp in spaces for o in optimizers]:
                console.print(f"{format_length(target)} ({scale}×): {space} space, {opt}, budget {args.budget} …")
                result, seconds = run_one(args.model, target, space, opt, args.budget, args.samples, args.seed,
                                          args.workers, runs)
                for r in result.heldout:
                    if r.name == "longsearch":
                        name = f"longsearch {space} {opt}"
                        evals = str(sum(1 for _ in _candidates(result.run_dir)))
                    elif baselines_done:
                        continue
                    else:
                        name, evals = r.name, "-"
                    rows.append([f"{scale}× ({format_length(target)})", name, _f(r.nll), _pct(r.accuracy), _f(r.search_nll),
                                 evals, f"{seconds / 60:.1f}" if r.name == "longsearch" else "-"])
                baselines_done = True
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)

    headers = ["scale", "method", "held-out NLL", "held-out accuracy", "search NLL", "evaluations", "minutes"]
    emit_table(
        console, f"search quality: {args.model or 'testbed'}, budget {args.budget}, {args.samples} needles", headers, rows,
        [f"Machine: {platform.machine()}, {os.cpu_count()} cores; model: {args.model or 'testbed'} (window "
         f"{geometry.original_length}, rotary dim {geometry.rotary_dim}, base {geometry.base:g}); budget {args.budget}; "
         f"{args.samples} needle documents per evaluation (search seed {args.seed}, held-out seed {args.seed + 1000})."],
        ["held-out NLL / accuracy: mean answer-token NLL and exact-answer accuracy on a needle set built with another "
         "seed; search NLL: the same on the search needles. Every optimizer gets the same number of evaluations."],
        args.out, left=("method",),
    )


def _candidates(run_dir: Path):
    from longsearch.runs import RunStore

    return (r for r in RunStore(run_dir).read_journal().records if r.kind == "candidate")


def _f(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4f}"


def _pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"


if __name__ == "__main__":
    main()
