"""The generation loop: ask, score (re-using what the journal holds), journal, tell, checkpoint — until the budget
is spent.

>>> baselines, history = search(run, pool, reporter)       # doctest: +SKIP

Each generation (:func:`run_generation`): ``ask()`` a batch; take the scores the journal already holds (a resume);
race the rest against the optimizer's bar (with the baselines in generation 0, scored in full); journal each
outcome as it arrives; ``tell()``; checkpoint; best.json. A resumed run first finishes the generation it was stopped
in, then evaluates again the failures of the generations told (:func:`retry_failures`).

Tasks carry typed references: a :class:`~longsearch.optimizers.Candidate` or a :class:`Baseline`; the
:class:`Ledger` turns each outcome into a journal record and a result for the optimizer.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from . import __version__
from .errors import RunError
from .executors import Executor, ScoreOutcome, ScoreTask
from .factors import RopeFactors
from .mix import NeedleMix
from .optimizers import Candidate, Optimizer, Result
from .rope import RopeGeometry
from .runs import BASELINES, BEST, JournalRecord, RunStore
from .runstart import PreparedRun
from .space import Point

#: Baselines scored beside the search (in generation 0, on the search needles) and on the held-out set.
BASELINE_METHODS = ("none", "pi", "ntk", "yarn")
#: A failed evaluation is evaluated again when the run is resumed — in the generation it belongs to if that one
#: was interrupted, else at the first generation boundary the resume reaches (:func:`retry_failures`) — until it
#: has failed this many times in all; then its failure stands (never a parent nor the best, listed in final.json).
MAX_FAILED_ATTEMPTS = 3


@dataclass(frozen=True)
class Validation:
    """A candidate scored on the validation mix (a task's reference): the best candidate told in ``generation``."""

    candidate: Candidate
    generation: int


@dataclass(frozen=True)
class Baseline:
    """A baseline method scored beside the search: its name and factors (a task's reference)."""

    name: str
    factors: RopeFactors


def baseline_factors(geometry: RopeGeometry, target: int) -> dict[str, RopeFactors]:
    return {name: RopeFactors.from_method(name, geometry, target) for name in BASELINE_METHODS}


@dataclass
class GenerationSummary:
    """What one generation ended with; the reporter prints it as one line."""

    generation: int
    generations: int | None  # the budget's, generation 0 included; None for a cost budget (see ``max_cost``)
    best_score: float
    best_id: int | None
    best_origin: str | None
    best_d_rcd: int | None
    baseline_name: str | None
    baseline_score: float
    evaluated: int
    reused: int
    seconds: float
    race_bar: float = math.inf  # the bar this generation's candidates raced against
    spent: float = 0.0  # full evaluations' worth of scoring so far (the optimizer's count)
    token_forwards: int = 0  # documents × tokens run so far, baselines included
    best_m: float | None = None
    failed: int = 0  # results told failed in this generation, and baselines whose last outcome (in it) failed
    max_cost: float | None = None  # a cost budget (Nevals): full evaluations' worth it allows (``spent`` counts up to it)
    validation_score: float | None = None  # the best validation score so far (None: no validation)
    validation_id: int | None = None  # the candidate it belongs to: the factors best.json holds
    stopping: bool = False  # patience ran out: no better validation score for ``patience`` generations

    @property
    def evals_per_second(self) -> float:
        return self.evaluated / self.seconds if self.seconds > 0 else 0.0


class LoopReporter(Protocol):
    """What the loop reports (the command's :class:`~longsearch.evolve.EvolveReporter` implements it)."""

    def generation_started(self, generation: int, generations: int | None, to_evaluate: int, reused: int) -> None: ...

    def evaluated(self, record: JournalRecord) -> None: ...

    def retry_started(self, to_evaluate: int, reused: int) -> None: ...

    def retry_finished(self, recovered: int, still_failed: int) -> None: ...

    def generation_finished(self, summary: GenerationSummary) -> None: ...


def json_float(v: Any) -> Any:
    """+inf / nan as null (strict JSON); anything else as it is."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def best_factors(run: PreparedRun, result: Result, generation: int | None) -> RopeFactors:
    """The searched factors of ``result`` (best.json), with where they came from."""
    cfg, c = run.config, result.candidate
    provenance = {
        "method": f"longsearch:{cfg.optimizer}",
        "run": str(run.store.path),
        "model": cfg.model_name,
        "space": cfg.space,
        "seed": cfg.seed,
        "score": float(result.score),
        "candidate": c.id,
        "generation": generation,
        "params": c.params,
        "longsearch_version": __version__,
    }
    return RopeFactors.searched(run.geometry, cfg.target_length, c.rescale, provenance)


def journal_record(outcome: ScoreOutcome, length: int, generation: int) -> JournalRecord:
    """The journal line of an outcome whose reference is a :class:`Candidate`, a :class:`Baseline` or a
    :class:`Validation` (``length``: tokens per document, for an outcome that does not count its token-forwards)."""
    ref = outcome.ref
    docs = outcome.n_scored
    tokens = outcome.token_forwards if outcome.token_forwards is not None else (None if docs is None else int(docs) * int(length))
    common: dict[str, Any] = dict(
        score=outcome.nll,
        per_sample=list(outcome.per_sample),
        accuracy=outcome.accuracy,
        per_sample_correct=list(outcome.per_sample_correct),
        worker=outcome.worker,
        seconds=round(outcome.seconds, 4),
        attempts=outcome.attempts,
        error=outcome.error,
        censored=bool(outcome.censored),
        failed=outcome.failed,
        docs=docs,
        token_forwards=tokens,
    )
    if isinstance(ref, Baseline):
        f = ref.factors
        return JournalRecord(
            kind="baseline",
            name=ref.name,
            generation=generation,
            origin=f"baseline:{ref.name}",
            lam=[float(x) for x in f.long_factor],
            m=f.attention_factor,
            **common,
        )
    if isinstance(ref, Validation):
        c = ref.candidate
        return JournalRecord(
            kind="validation",
            id=c.id,
            generation=ref.generation,
            origin=c.origin,
            lam=[float(x) for x in c.lam],
            m=float(c.m),
            d_rcd=c.params.get("d_rcd"),
            params=c.params,
            **common,
        )
    if isinstance(ref, Candidate):
        return JournalRecord(
            kind="candidate",
            id=ref.id,
            generation=ref.generation,
            origin=ref.origin,
            lam=[float(x) for x in ref.lam],
            m=float(ref.m),
            d_rcd=ref.params.get("d_rcd"),
            params=ref.params,
            **common,
        )
    raise TypeError(f"the search journals candidates and baselines, not {type(ref).__name__}")


def result_of(c: Candidate, rec: JournalRecord, needles: NeedleMix) -> Result:
    """The optimizer's view of a journaled evaluation: its cost is the share of the mix's token-forwards it ran
    (the documents run are a prefix of the mix's, so the count gives the tokens back exactly)."""
    cost = 1.0 if rec.docs is None or not needles.samples else needles.token_cost(rec.docs)
    return Result(c, rec.score, cost, bool(rec.censored), bool(rec.failed))


class Ledger:
    """What :func:`search` keeps while it journals outcomes: the last record and the failure count of each candidate
    and baseline (the journal read at the start, then every outcome journaled since), baseline scores, the history,
    counters, and whether baselines.json is due."""

    def __init__(self, run: PreparedRun, reporter: LoopReporter, baselines: dict[str, RopeFactors]) -> None:
        self.run, self.reporter = run, reporter
        self.baselines = {name: Baseline(name, f) for name, f in baselines.items()}
        self.journal: dict[int, JournalRecord] = run.journal.candidates()
        self.baseline_records: dict[str, JournalRecord] = run.journal.baselines()
        self.validated: dict[int, JournalRecord] = run.journal.validations()
        self.failures: dict[tuple[str, Any], int] = run.journal.failures()
        self.history: list[dict[str, Any]] = list((run.checkpoint or {}).get("history", []))
        self.scores: dict[str, float] = {
            n: r.score
            for n, r in self.baseline_records.items()
            if n in baselines and (not r.failed or self.failures.get(("baseline", n), 0) >= MAX_FAILED_ATTEMPTS)
        }
        self.length = run.config.target_length
        self.token_forwards = sum(r.token_forwards or 0 for r in run.journal.records)
        self.evaluations = len(run.journal.records)
        self._dirty = False  # a baseline was scored since baselines.json was written
        self._compare = run.resumed  # a resume compares baselines.json once: its writer may have been stopped first

    @property
    def store(self) -> RunStore:
        return self.run.store

    def baseline_tasks(self) -> list[ScoreTask]:
        """The baselines without a standing score (never scored, or failed with attempts left): scored in full."""
        return [ScoreTask(b, b.factors.long) for n, b in self.baselines.items() if n not in self.scores]

    def failed_baselines(self, generation: int) -> int:
        """The baselines whose last outcome, journaled in ``generation``, failed."""
        return sum(1 for n, r in self.baseline_records.items() if n in self.baselines and r.generation == generation and r.failed)

    def take(self, outcome: ScoreOutcome, generation: int) -> Result | None:
        """Journal one outcome; a candidate's becomes the optimizer's :class:`Result`, a baseline's a score."""
        rec = journal_record(outcome, self.length, generation)
        self.store.append(rec)
        self.evaluations += 1
        self.token_forwards += rec.token_forwards or 0
        result: Result | None = None
        if isinstance(outcome.ref, Validation):
            self.validated[outcome.ref.candidate.id] = rec
            key: tuple[str, Any] = ("validation", outcome.ref.candidate.id)
        elif isinstance(outcome.ref, Baseline):
            name = outcome.ref.name
            self.scores[name] = rec.score
            self.baseline_records[name] = rec
            self._dirty = True
            key = ("baseline", name)
        else:
            c: Candidate = outcome.ref
            result = result_of(c, rec, self.run.needles)
            self.journal[c.id] = rec
            key = ("candidate", c.id)
        if rec.failed:
            self.failures[key] = self.failures.get(key, 0) + 1
        self.reporter.evaluated(rec)
        return result

    def reusable(self, c: Candidate) -> Result | None:
        """The journal's result for ``c`` (a resumed run re-evaluates nothing it scored), unless it failed with
        attempts left — a failed evaluation is a state, not a score: it is evaluated again, until it has failed
        :data:`MAX_FAILED_ATTEMPTS` times; then its failure stands (never a parent nor the best)."""
        rec = self.journal.get(c.id)
        if rec is None or (rec.failed and self.failures.get(("candidate", c.id), 0) < MAX_FAILED_ATTEMPTS):
            return None
        check_same(c, rec, self.store)
        return result_of(c, rec, self.run.needles)

    def write_baselines(self) -> None:
        """baselines.json once every baseline has an outcome, and again whenever one was scored again; on resume
        also when the file differs (the process that scored them was stopped before writing it)."""
        if len(self.scores) != len(self.baselines) or not (self._dirty or self._compare):
            return
        payload = {
            name: {
                "score": json_float(self.scores[name]),
                "lam": [float(x) for x in b.factors.long_factor],
                "m": b.factors.attention_factor,
            }
            for name, b in self.baselines.items()
        }
        if not self._dirty:
            self._compare = False
            try:
                if self.store.file(BASELINES).exists() and self.store.read_json(BASELINES) == payload:
                    return
            except RunError:  # damaged: written again
                pass
        self.store.write_json(BASELINES, payload)
        self._dirty = self._compare = False

    def checkpoint(self, generation: int) -> None:
        """The state after ``generation`` (atomically), then best.json."""
        opt = self.run.optimizer
        self.store.save_checkpoint(
            generation,
            {
                "optimizer": opt.state_dict(),
                "history": self.history,
                "baselines": {k: json_float(v) for k, v in self.scores.items()},
                "evaluations": self.evaluations,
            },
        )
        made = chosen_factors(self.run, self.journal, self.validated, self.history)
        if made is not None:
            made[0].save(self.store.file(BEST))


def check_same(c: Candidate, rec: JournalRecord, store: RunStore) -> None:
    same = np.allclose(np.asarray(rec.lam), c.lam, rtol=0, atol=1e-9) and abs(float(rec.m) - float(c.m)) < 1e-9
    if not same:
        raise RunError(
            f"{store.journal_path}: candidate {c.id} in the journal differs from the one the optimizer "
            "regenerates from the last checkpoint: the run cannot be resumed consistently; start a new run"
        )


def search(run: PreparedRun, pool: Executor, reporter: LoopReporter) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Run the remaining generations. Returns the baseline scores and the per-generation history.

    A resumed run first finishes the generation it was stopped in, if the journal holds any of its candidates
    (their λ are those the checkpoint's state asks again), and only then, at that generation's end, evaluates
    again the failures of the generations told (:func:`retry_failures`): the same point on every resume of the
    same journal, so a resume stopped and resumed again ends as one never stopped — and a run stopped in the
    middle of a generation ends as one stopped at that generation's end and resumed would."""
    run.begin_writing()
    opt = run.optimizer
    ledger = Ledger(run, reporter, baseline_factors(run.geometry, run.config.target_length))
    if not opt.done and any(r.generation >= opt.generation for r in ledger.journal.values()):
        run_generation(ledger, pool)  # the interrupted generation, as the stopped process asked it
    retry_failures(ledger, pool)
    while not opt.done and not stopped_early(ledger):
        run_generation(ledger, pool)
    ledger.write_baselines()  # unchanged unless a baseline was scored again since it was written
    return ledger.scores, ledger.history


def run_generation(ledger: Ledger, pool: Executor) -> None:
    """Ask, score (re-using what the journal holds), tell and checkpoint one generation."""
    run, opt, reporter = ledger.run, ledger.run.optimizer, ledger.reporter
    t0 = time.perf_counter()
    generation = opt.generation
    batch = opt.ask()
    bar = opt.race_bar() if run.config.racing else math.inf
    results: dict[int, Result] = {}
    tasks: list[ScoreTask] = []
    for c in batch:
        reused = ledger.reusable(c)
        if reused is not None:
            results[c.id] = reused
        else:
            tasks.append(ScoreTask(c, c.rescale, bar=bar))
    n_reused = len(results)
    if generation == 0:  # later, a baseline without a standing score is evaluated again by retry_failures
        tasks += ledger.baseline_tasks()
    reporter.generation_started(generation, generations_of(opt), len(tasks), n_reused)
    for outcome in pool.map_unordered(tasks):
        result = ledger.take(outcome, generation)
        if result is not None:
            results[result.candidate.id] = result
    ledger.write_baselines()
    told = [results[c.id] for c in batch]
    opt.tell(told)
    validate(ledger, pool, generation, told)
    failed = sum(1 for r in told if r.failed) + ledger.failed_baselines(generation)
    summary = _summary(opt, generation, ledger, len(tasks), n_reused, bar, time.perf_counter() - t0, failed)
    ledger.history.append({k: json_float(v) for k, v in asdict(summary).items() if k not in ("seconds",)})
    ledger.checkpoint(generation)
    reporter.generation_finished(summary)


def retry_failures(ledger: Ledger, pool: Executor) -> None:
    """Between generations of a resumed run (see :func:`search` for which boundary): evaluate again what failed in
    the generations told — the candidates the optimizer holds as failed (:meth:`Optimizer.failed`) and the
    baselines — if it failed fewer than :data:`MAX_FAILED_ATTEMPTS` times. Each is scored in full (no race) and
    journaled as it arrives; the successes go to the optimizer as late results (:meth:`Optimizer.tell_late`) and
    the last checkpoint is rewritten with that state (same generation), then best.json and baselines.json.

    Deterministic: a candidate the journal already holds a success for (an earlier resume retried it and was
    stopped before rewriting the checkpoint) is not evaluated again, and the late results are told together, in
    id order, after the last generation told — so an interrupted retry resumes to the state an uninterrupted one
    reaches."""
    opt, reporter = ledger.run.optimizer, ledger.reporter
    if opt.generation == 0:
        return  # nothing told yet: generation 0 (with the baselines) is still to come
    results: dict[int, Result] = {}
    tasks: list[ScoreTask] = []
    for c in opt.failed():
        rec = ledger.journal.get(c.id)
        if rec is not None and not rec.failed:
            check_same(c, rec, ledger.store)
            results[c.id] = result_of(c, rec, ledger.run.needles)
        elif ledger.failures.get(("candidate", c.id), 0) < MAX_FAILED_ATTEMPTS:
            tasks.append(ScoreTask(c, c.rescale))
    baseline_tasks = ledger.baseline_tasks()
    tasks += baseline_tasks
    if not tasks and not results:
        return
    reporter.retry_started(len(tasks), len(results))
    generation = opt.generation - 1
    for outcome in pool.map_unordered(tasks):
        result = ledger.take(outcome, generation)
        if result is not None:
            results[result.candidate.id] = result
    late = [results[k] for k in sorted(results)]
    recovered = sum(1 for r in late if not r.failed)
    opt.tell_late(late)
    if recovered:
        ledger.checkpoint(generation)
    ledger.write_baselines()
    failed_baselines = sum(1 for t in baseline_tasks if not math.isfinite(ledger.scores[t.ref.name]))
    reporter.retry_finished(recovered, len(late) - recovered + failed_baselines)


def validate(ledger: Ledger, pool: Executor, generation: int, told: list[Result]) -> None:
    """Score the best candidate told in ``generation`` (fully scored) on the validation mix, unless the journal holds
    it (a resume); the optimizer never sees this score — it chooses the final factors (:func:`chosen`) and may stop the
    search early (:func:`stopped_early`). One candidate per generation: the shortlist is each generation's best, not a
    set of near-copies of one."""
    run = ledger.run
    if run.validation is None:
        return
    scored = [r for r in told if not r.failed and not r.censored and math.isfinite(r.score)]
    if not scored:
        return
    c = min(scored, key=lambda r: (r.score, r.candidate.id)).candidate
    rec = ledger.validated.get(c.id)
    if rec is not None:
        check_same(c, rec, ledger.store)
        return
    for outcome in pool.map_unordered([ScoreTask(Validation(c, generation), c.rescale, needles="validation")]):
        ledger.take(outcome, generation)


def validation_scores(run: PreparedRun, validations: dict[int, JournalRecord]) -> list[JournalRecord]:
    """The validation records of the generations told so far, in generation order (failures left out)."""
    told = run.optimizer.generation
    out = [v for v in validations.values() if v.generation < told and not v.failed and math.isfinite(v.score)]
    return sorted(out, key=lambda r: (r.generation, r.id or 0))


def stopped_early(ledger: Ledger) -> bool:
    """Whether ``patience`` generations have passed since the best validation score (decided from the journal, so a
    resumed run stops where an uninterrupted one does)."""
    patience = ledger.run.config.patience
    if not patience or ledger.run.validation is None:
        return False
    vals = validation_scores(ledger.run, ledger.validated)
    if not vals:
        return False
    best = min(vals, key=lambda r: (r.score, r.generation))
    return (ledger.run.optimizer.generation - 1) - best.generation >= patience


def chosen(
    run: PreparedRun, candidates: dict[int, JournalRecord], validations: dict[int, JournalRecord]
) -> tuple[Result, JournalRecord | None] | None:
    """The final factors: with validation, the shortlisted candidate with the lowest validation score (ties: the earlier
    generation) and its validation record; without, the optimizer's best by search score."""
    if run.validation is not None:
        vals = validation_scores(run, validations)
        if vals:
            v = min(vals, key=lambda r: (r.score, r.generation, r.id or 0))
            rec = candidates.get(int(v.id or 0))
            if rec is not None:
                point = Point(np.asarray(rec.lam, dtype=float), float(rec.m), dict(rec.params))
                c = Candidate(int(v.id or 0), point, rec.generation, rec.origin)
                return Result(c, rec.score, 1.0, False, False), v
    best = run.optimizer.best()
    return None if best is None else (best, None)


def chosen_factors(
    run: PreparedRun, candidates: dict[int, JournalRecord], validations: dict[int, JournalRecord], history: list[dict[str, Any]]
) -> tuple[RopeFactors, Result] | None:
    """best.json: the factors of :func:`chosen` (with its validation score in the provenance), and its result."""
    choice = chosen(run, candidates, validations)
    if choice is None:
        return None
    best, v = choice
    factors = best_factors(run, best, generation_of(best, history))
    if v is not None:
        factors.provenance["validation_nll"] = float(v.score)
        factors.provenance["chosen_by"] = "validation"
    return factors, best


def generations_of(opt: Optimizer) -> int | None:
    """Generations the budget allows, generation 0 included; None for a cost budget (as many as the cost allows)."""
    return None if opt.budget.max_cost is not None else opt.budget.generations + 1


def best_baseline(scores: dict[str, float]) -> tuple[str | None, float]:
    finite = {k: v for k, v in scores.items() if k != "none" and math.isfinite(v)}
    if not finite:
        return None, math.inf
    name = min(finite, key=lambda k: (finite[k], k))
    return name, finite[name]


def _summary(
    opt: Optimizer, generation: int, ledger: Ledger, evaluated: int, reused: int, bar: float, seconds: float, failed: int
) -> GenerationSummary:
    best = opt.best()
    bname, bscore = best_baseline(ledger.scores)
    vals = validation_scores(ledger.run, ledger.validated) if ledger.run.validation is not None else []
    v = min(vals, key=lambda r: (r.score, r.generation)) if vals else None
    return GenerationSummary(
        generation=generation,
        generations=generations_of(opt),
        max_cost=opt.budget.max_cost,
        best_score=best.score if best else math.inf,
        best_id=best.candidate.id if best else None,
        best_origin=best.candidate.origin if best else None,
        best_d_rcd=best.candidate.params.get("d_rcd") if best else None,
        baseline_name=bname,
        baseline_score=bscore,
        evaluated=evaluated,
        reused=reused,
        seconds=seconds,
        race_bar=bar,
        spent=round(float(opt.spent), 6),
        token_forwards=int(ledger.token_forwards),
        best_m=float(best.candidate.m) if best else None,
        failed=failed,
        validation_score=None if v is None else float(v.score),
        validation_id=None if v is None else v.id,
        stopping=stopped_early(ledger),
    )


def generation_of(best: Result, history: list[dict[str, Any]]) -> int | None:
    """The generation after which ``best`` became the best (from the history), else the one it was asked in."""
    for h in history:
        if h.get("best_id") == best.candidate.id:
            return int(h["generation"])
    return int(best.candidate.generation)


__all__ = [
    "BASELINE_METHODS",
    "MAX_FAILED_ATTEMPTS",
    "Baseline",
    "GenerationSummary",
    "Ledger",
    "LoopReporter",
    "Validation",
    "baseline_factors",
    "best_factors",
    "chosen",
    "chosen_factors",
    "generation_of",
    "generations_of",
    "journal_record",
    "retry_failures",
    "run_generation",
    "search",
    "stopped_early",
    "validate",
    "validation_scores",
]
