"""``longsearch evolve``: a search from its options to its result — the command that joins the rooms of the search.

>>> result = run_evolve(EvolveOptions(target=2048, budget="quick", out=Path("outputs/demo")))   # doctest: +SKIP
>>> result.best_score, result.paths["best"]                                                    # doctest: +SKIP

Reads top to bottom, each step a module of its own:

1. :mod:`longsearch.plan` checks every option a user can get wrong and resolves a new run (nothing written), and
   measures in the window which needle templates the model solves (:func:`~longsearch.plan.measure_signal`).
2. :mod:`longsearch.runstart` creates the run directory whole, or reopens one for ``--resume`` (every option that
   contradicts it, a damaged journal or checkpoint, a changed model refused before anything is written).
3. :mod:`longsearch.loop` runs the generations: ask, score on the workers, journal, tell, checkpoint.
4. :mod:`longsearch.heldout` scores the best factors and the baselines on needles the search never saw and writes
   final.json; this module then writes best.json and the plots.

The workers are any :class:`~longsearch.executors.Executor`: the Ray pool (:class:`~longsearch.workers.WorkerPool`,
made from the options) or one passed in (tests use :class:`~longsearch.executors.InProcessPool`). Library code never
prints: progress goes to an :class:`EvolveReporter` (the CLI passes a rich one, :class:`~longsearch.render.RichReporter`).
"""

from __future__ import annotations

import contextlib
import errno
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .executors import Executor, ScoreOutcome
from .factors import RopeFactors
from .heldout import HeldoutRow, failed_evaluations, heldout, spearman
from .lengths import format_length
from .loop import (
    BASELINE_METHODS,
    MAX_FAILED_ATTEMPTS,
    GenerationSummary,
    baseline_factors,
    chosen_factors,
    generation_of,
    retry_failures,
    search,
)
from .optimizers import Result
from .plan import EvolveOptions, Plan, check_options, default_out, load_model_info, measure_signal, plan, signal_templates
from .rope import critical_index
from .runs import BEST, FINAL, JournalRecord
from .runstart import PreparedRun, create_run, disk_full, open_resume
from .workers import WorkerPool


@dataclass
class EvolveResult:
    run_dir: Path
    best: RopeFactors | None
    best_score: float
    best_generation: int | None
    baselines: dict[str, float]
    heldout: list[HeldoutRow]
    history: list[dict[str, Any]]
    evaluations: int
    resumed: bool
    paths: dict[str, Path] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)  # final.json: rank agreement, failed evaluations


class EvolveReporter:
    """Receives progress; every method is optional. The CLI renders it (:class:`longsearch.render.RichReporter`)."""

    def run_started(self, run: PreparedRun) -> None: ...

    def pool_started(self, workers: int, device: str, seconds: float) -> None: ...

    def signal_checked(self, signal: dict[str, Any]) -> None: ...

    def generation_started(self, generation: int, generations: int | None, to_evaluate: int, reused: int) -> None:
        """``generations``: None for a cost budget (as many as its cost allows)."""

    def evaluated(self, record: JournalRecord) -> None: ...

    def retry_started(self, to_evaluate: int, reused: int) -> None:
        """A resume evaluates again ``to_evaluate`` failures of generations already told (``reused``: retried by an
        earlier resume that stopped before its checkpoint)."""

    def retry_finished(self, recovered: int, still_failed: int) -> None: ...

    def generation_finished(self, summary: GenerationSummary) -> None: ...

    def heldout_started(self, to_evaluate: int) -> None: ...

    def heldout_evaluated(self, name: str, outcome: ScoreOutcome) -> None: ...

    def finished(self, result: EvolveResult) -> None: ...

    def interrupted(self, run_dir: Path) -> None: ...


def signal_checked(p: Plan, pool: Executor, reporter: EvolveReporter) -> tuple[str, dict[str, Any]]:
    """Measure the in-window signal on the workers, report it, then choose the templates (or refuse, in one line)."""
    signal = measure_signal(p, pool)
    reporter.signal_checked(signal)
    return signal_templates(p, signal), signal


def prepare(opts: EvolveOptions, pool: Executor | None = None, reporter: EvolveReporter | None = None) -> PreparedRun:
    """Check everything, measure the signal (with ``pool``), then create the run directory — or reopen one
    (``opts.resume``). Nothing is written on bad input or an unusable signal."""
    if opts.resume is not None:
        return open_resume(opts)
    p = plan(opts)
    if opts.signal_check is not False and pool is not None:
        template, signal = signal_checked(p, pool, reporter or EvolveReporter())
    elif p.templates is None:
        raise InputError(
            "--template auto measures which templates the model solves on the workers: name a template "
            "(e.g. --template passkey) to prepare a run without them"
        )
    else:
        template, signal = "+".join(p.templates), None
    return create_run(p, template, signal)


def write_plots(
    run: PreparedRun, history: list[dict[str, Any]], baseline_scores: dict[str, float], chosen: Result | None = None
) -> dict[str, Path]:
    """progress.png (the best search NLL per generation; with validation, each generation's best on the validation
    needles and the one chosen) and factors.png (``chosen``'s λ — best.json's —, else the optimizer's best)."""
    from .plots import factors_plot, progress_plot

    paths: dict[str, Path] = {}
    best = chosen if chosen is not None else run.optimizer.best()
    gens = [int(h["generation"]) for h in history]
    bests = [math.inf if h.get("best_score") is None else float(h["best_score"]) for h in history]
    validation = None
    if run.validation is not None:
        validation = [math.inf if h.get("validation_score") is None else float(h["validation_score"]) for h in history]
    p = run.store.file("progress.png")
    progress_plot(p, gens, bests, {k: v for k, v in baseline_scores.items()}, title=_title(run), validation_scores=validation)
    paths["progress"] = p
    if best is not None:
        base = {n: f.long_factor for n, f in baseline_factors(run.geometry, run.config.target_length).items() if n != "none"}
        p = run.store.file("factors.png")
        factors_plot(
            p,
            np.asarray(best.candidate.lam),
            base,
            d_tcd=critical_index(run.geometry),
            d_rcd=best.candidate.params.get("d_rcd"),
            title=_title(run),
            label=f"longsearch (#{best.candidate.id}, {'chosen by validation' if chosen is not None and run.validation is not None else 'best'})",
        )
        paths["factors"] = p
    return paths


def _title(run: PreparedRun) -> str:
    c = run.config
    return f"{c.model_name} → {format_length(c.target_length)}, {c.space}, {c.optimizer}, seed {c.seed}"


# ---------------------------------------------------------------- the command


def run_evolve(opts: EvolveOptions, reporter: EvolveReporter | None = None, pool: Executor | None = None) -> EvolveResult:
    """Start or resume a search and run it to the end. Ctrl-C leaves a resumable run (KeyboardInterrupt re-raised).

    ``pool``: an executor to score with (left open) instead of the Ray pool made from the options and closed at the end."""
    reporter = reporter or EvolveReporter()
    run: PreparedRun | None = None
    if opts.resume is not None:  # both check every option first (check_options), before anything is read or written
        run = open_resume(opts)
        cfg = run.config
    else:
        p = plan(opts)  # every option checked; nothing written yet
        cfg = p.config
    own = pool is None
    try:
        if pool is None:
            pool = WorkerPool(
                cfg.model,
                cfg.target_length,
                workers=cfg.workers,
                address=cfg.address,
                gpus_per_worker=opts.gpus_per_worker,
                device=opts.device,
                attn_implementation=cfg.attn_implementation,
                max_attempts=opts.max_attempts,
                task_timeout=opts.task_timeout,
                startup_timeout=cfg.worker_startup_timeout,
            )
    except BaseException:
        if run is not None:
            run.store.abandon()
        raise
    with contextlib.closing(pool) if own else contextlib.nullcontext(pool):
        if run is None:  # a new run: measure the signal on the workers, then write the run directory
            t0 = time.perf_counter()
            pool.start()
            reporter.pool_started(pool.workers, pool.device, time.perf_counter() - t0)
            if opts.signal_check is not False:
                template, signal = signal_checked(p, pool, reporter)
            else:  # plan() made sure a template is named
                template, signal = "+".join(p.templates or []), None
            run = create_run(p, template, signal)
        return _run(run, pool, opts, reporter)


def _run(run: PreparedRun, pool: Executor, opts: EvolveOptions, reporter: EvolveReporter) -> EvolveResult:
    try:
        reporter.run_started(run)
        pool.set_needles("search", run.needles)
        if run.validation is not None:
            pool.set_needles("validation", run.validation)
        if not run.optimizer.done and not pool.workers:  # a resumed run starts its workers here
            t0 = time.perf_counter()
            pool.start()
            reporter.pool_started(pool.workers, pool.device, time.perf_counter() - t0)
        baseline_scores, history = search(run, pool, reporter)
        rows = heldout(run, pool, reporter, baseline_scores) if opts.heldout else []
        paths = {"run": run.store.path, "journal": run.store.journal_path}
        journal = run.store.read_journal()
        made = chosen_factors(run, journal.candidates(), journal.validations(), history)
        factors, best = made if made is not None else (None, None)
        if factors is not None:
            factors.save(run.store.file(BEST))
            paths["best"] = run.store.file(BEST)
        if rows:
            paths["final"] = run.store.file(FINAL)
        paths.update(write_plots(run, history, baseline_scores, best))
        result = EvolveResult(
            run_dir=run.store.path,
            best=factors,
            best_score=best.score if best else math.inf,
            best_generation=generation_of(best, history) if best else None,
            baselines=baseline_scores,
            heldout=rows,
            history=history,
            evaluations=len(journal.records),
            resumed=run.resumed,
            paths=paths,
            final=run.store.read_json(FINAL) if rows else {},
        )
        reporter.finished(result)
        return result
    except KeyboardInterrupt:
        reporter.interrupted(run.store.path)
        raise
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise disk_full(e, f"then continue with `longsearch evolve --resume {run.store.path}`") from None
    finally:
        if run.writing:
            run.store.close()
        else:  # refused or failed before its first write (the workers did not start): the run is as it was
            run.store.abandon()


__all__ = [
    "BASELINE_METHODS",
    "MAX_FAILED_ATTEMPTS",
    "EvolveOptions",
    "EvolveReporter",
    "EvolveResult",
    "GenerationSummary",
    "HeldoutRow",
    "PreparedRun",
    "baseline_factors",
    "check_options",
    "default_out",
    "failed_evaluations",
    "heldout",
    "load_model_info",
    "prepare",
    "retry_failures",
    "run_evolve",
    "search",
    "spearman",
    "write_plots",
]
