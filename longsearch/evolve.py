"""``longsearch evolve``: the loop that joins the optimizer, the Ray worker pool and the run store.

>>> result = run_evolve(EvolveOptions(target=2048, budget="quick", out=Path("outputs/demo")))   # doctest: +SKIP
>>> result.best_score, result.paths["best"]                                                    # doctest: +SKIP

Reads top to bottom:

1. :func:`prepare` checks everything a user can get wrong (every option, model, target, space, optimizer,
   an existing or foreign run directory, options that contradict the run being resumed, a damaged journal
   or checkpoint) *before* anything is written, then creates (or reopens) the run directory. A new run
   directory appears whole or not at all (:meth:`RunStore.creating`); a resumed one is first written —
   its truncated journal line dropped, stale temporaries removed — once the workers are up.
2. :func:`search` runs generations: ``ask()`` a batch, re-use scores already in the journal (resume), send
   the rest to the workers (with the baselines PI / NTK / YaRN / none in generation 0), append each result
   to the journal as it arrives, ``tell()`` the batch, checkpoint, write best.json. A resume first finishes
   the generation it was stopped in, then evaluates again the failures of the generations told
   (:func:`retry_failures`).
3. :func:`heldout` scores the best factors and the baselines on a held-out needle set (another
   seed), writes final.json and the plots.

Library code never prints: progress goes to an :class:`EvolveReporter` (the CLI passes a rich one,
:class:`~longsearch.render.RichReporter`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, faults
from .errors import InputError, LongsearchError, NeedleError, RunError
from .factors import RopeFactors
from .lengths import format_length
from .rope import RopeGeometry, critical_index
from .runs import (
    BASELINES,
    BEST,
    FINAL,
    SPACE,
    JournalContents,
    JournalRecord,
    RunConfig,
    RunStore,
    check_resume_options,
)
from .workers import ScoreOutcome, ScoreTask, WorkerPool, check_pool_options

log = logging.getLogger(__name__)

#: Baselines scored beside the search (in generation 0, on the search needles) and on the held-out set.
BASELINE_METHODS = ("none", "pi", "ntk", "yarn")
DEFAULTS: dict[str, Any] = {
    "space": "hybrid",
    "budget": "quick",
    "optimizer": "ga",
    "samples": 16,
    "seed": 0,
    "template": "auto",
    "depths": "spread",
}
#: A needle template is a usable signal when plain RoPE answers at least this share of its documents inside the
#: model's own window: a perplexity the model cannot lower in-window cannot guide a search beyond it.
SIGNAL_THRESHOLD = 0.75
SIGNAL_SAMPLES = 8
SIGNAL_SEED_OFFSET = 2000
#: Held-out scoring re-scores this many of the best distinct candidates, to measure how well the search's score
#: ranks candidates the way the held-out score does.
RANK_CANDIDATES = 8
HELDOUT_SEED_OFFSET = 1000
#: A failed evaluation is evaluated again when the run is resumed — in the generation it belongs to if that one
#: was interrupted, else at the first generation boundary the resume reaches (:func:`retry_failures`) — until it
#: has failed this many times in all; then its failure stands (never a parent nor the best, listed in final.json).
MAX_FAILED_ATTEMPTS = 3


# ---------------------------------------------------------------- options and records


@dataclass
class EvolveOptions:
    """What the command line asks for. None means "not given" (a default, or the run's config on resume)."""

    model: str | None = None
    target: int | None = None
    space: str | None = None
    budget: str | None = None
    optimizer: str | None = None
    samples: int | None = None
    seed: int | None = None
    workers: int | None = None
    address: str | None = None
    out: Path | None = None
    resume: Path | None = None
    force: bool = False
    gpus_per_worker: float = 1.0
    max_attempts: int = 3
    task_timeout: float | None = None
    heldout: bool = True
    racing: bool | None = None  # None: the default (on), or the run's own setting on resume
    template: str | None = None  # needle template(s) of the search: auto (default), a name, or a comma list
    depths: str | None = None  # needle depths: spread (default), uniform, start, or a list
    signal_check: bool | None = None  # measure in-window which templates the model solves (None: on; on resume, the run's)
    accept_model_change: bool = False  # resume although the model's files changed since the run started


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

    @property
    def evals_per_second(self) -> float:
        return self.evaluated / self.seconds if self.seconds > 0 else 0.0


@dataclass
class HeldoutRow:
    name: str
    nll: float
    accuracy: float | None
    search_nll: float | None
    error: str | None = None


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


# ---------------------------------------------------------------- preparing a run


@dataclass
class PreparedRun:
    store: RunStore
    config: RunConfig
    geometry: RopeGeometry
    space: Any  # SearchSpace
    optimizer: Any  # Optimizer
    needles: Any  # NeedleSet
    tokenizer: Any
    journal: JournalContents
    checkpoint: dict[str, Any] | None
    resumed: bool
    dropped_bytes: int = 0  # a truncated last journal line (dropped at the first write)
    writing: bool = False  # the run has been written by this process (a new run: from its creation)

    def begin_writing(self) -> None:
        """Before the first write of a resumed run: drop a truncated last journal line and remove temporaries
        left by a killed write. Deferred to here so that a refused or failed start leaves the run as it was."""
        if self.writing:
            return
        self.store.sweep_temporaries()
        self.store.repair_journal(self.journal)
        self.writing = True


def model_short_name(model: str | None) -> str:
    """``None`` → ``testbed``; ``org/name`` → ``name``; a path → its last part."""
    if not model:
        return "testbed"
    return Path(str(model).rstrip("/")).name or "model"


def default_out(model: str | None, target: int, space: str, optimizer: str, seed: int) -> Path:
    """outputs/<model>-<target>-<space>[-<optimizer>]-s<seed>."""
    space_name = Path(space).stem if space.lower().endswith((".yaml", ".yml")) else space
    opt = "" if optimizer == "ga" else "-" + optimizer.replace(":", "-").lower()
    return Path("outputs") / f"{model_short_name(model)}-{format_length(target)}-{space_name}{opt}-s{seed}"


def load_model_info(model: str | None) -> tuple[RopeGeometry, Any]:
    """Geometry and tokenizer without loading weights in the driver (the workers load the model)."""
    from .models import load_config, load_tokenizer, model_geometry

    return model_geometry(load_config(model)), load_tokenizer(model)


def _normalize_model(model: str | None) -> str | None:
    """A local model directory is stored as an absolute path (so a resume from elsewhere finds it)."""
    if model is None or str(model).strip() in ("", "testbed"):
        return None
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else str(model)


def _fingerprint_dir(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _build_needles(tokenizer: Any, length: int, samples: int, seed: int, template: str, depths: str | None) -> Any:
    from .needles import build_needle_set

    return build_needle_set(tokenizer, length, samples, template=template, seed=seed, depths=depths)


@dataclass
class Plan:
    """A new run, checked and resolved; nothing written yet (:func:`create_run` writes it)."""

    config: RunConfig
    geometry: RopeGeometry
    space: Any
    optimizer: Any
    tokenizer: Any
    out: Path
    force: bool
    templates: list[str] | None  # None: auto
    depths: str


def plan(opts: EvolveOptions) -> Plan:
    """Check every option of a new run and resolve it, without writing anything."""
    from .needles import template_names
    from .optimizers import make_optimizer, resolve_budget
    from .space import SearchSpace

    check_options(opts)
    if opts.target is None:
        raise InputError("--target is required (e.g. --target 4k), or pass --resume RUN to continue a run")
    model = _normalize_model(opts.model)
    space_name = opts.space or DEFAULTS["space"]
    budget = str(opts.budget or DEFAULTS["budget"])
    optimizer_spec = opts.optimizer or DEFAULTS["optimizer"]
    samples = int(opts.samples if opts.samples is not None else DEFAULTS["samples"])
    seed = int(opts.seed if opts.seed is not None else DEFAULTS["seed"])
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    template = str(opts.template or DEFAULTS["template"]).strip().lower()
    templates = None if template == "auto" else template_names(template)
    if opts.signal_check is False and templates is None:
        raise InputError("--no-signal-check needs a named --template (e.g. --template passkey): auto chooses by the check")
    depths = str(opts.depths or DEFAULTS["depths"])
    from .needles import resolve_depths as _resolve_depths

    _resolve_depths(depths, 1, np.random.default_rng(0))  # refuse unreadable depths now
    resolve_budget(budget)
    geometry, tokenizer = load_model_info(model)
    target = int(opts.target)
    if target <= geometry.original_length:
        raise InputError(
            f"target {format_length(target)} is not above the model's window of {geometry.original_length} tokens: choose a longer --target"
        )
    space = SearchSpace.load(space_name, geometry, target)
    optimizer = make_optimizer(optimizer_spec, space, budget, seed)
    out = Path(opts.out) if opts.out else default_out(model, target, space_name, optimizer_spec, seed)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a directory: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not opts.force:
        raise RunError(
            f"{out} already holds a run: continue it with `longsearch evolve --resume {out}`, choose another --out, "
            "or pass --force to start over"
        )
    config = RunConfig(
        model=model,
        model_name=model_short_name(model),
        target_length=target,
        space=space_name,
        budget=budget,
        optimizer=optimizer_spec,
        samples=samples,
        seed=seed,
        workers=opts.workers,
        address=opts.address,
        heldout_seed=seed + HELDOUT_SEED_OFFSET,
        racing=True if opts.racing is None else bool(opts.racing),
        depths=depths,
    )
    return Plan(config, geometry, space, optimizer, tokenizer, out, opts.force, templates, depths)


def check_options(opts: EvolveOptions) -> None:
    """The options a new run and a resume share, checked before anything starts or is written: once, first thing
    in :func:`plan` (a new run) and in :func:`_prepare_resume`. (:class:`WorkerPool` checks its own arguments again:
    that is its contract as a class used on its own.)"""
    faults.check()
    check_pool_options(opts.workers, opts.gpus_per_worker, opts.max_attempts, opts.task_timeout)


def signal_needles(p: Plan, template: str) -> Any:
    """In-window needle documents of one template: the model's window, or the shortest doubling that holds it."""
    from .needles import build_needle_set

    length = p.geometry.original_length
    while True:
        try:
            return build_needle_set(
                p.tokenizer, length, SIGNAL_SAMPLES, template=template, seed=p.config.seed + SIGNAL_SEED_OFFSET, depths=p.depths
            )
        except NeedleError as e:
            if "cannot hold" not in str(e) or length >= 64 * p.geometry.original_length:
                raise
            length *= 2


def check_signal(p: Plan, pool: WorkerPool, reporter: EvolveReporter | None = None) -> tuple[str, dict[str, Any]]:
    """Which needle templates the model solves inside its window with plain RoPE (λ = 1, m = 1).

    Returns the templates to search with (``"a+b"``) and the measurements. ``auto`` keeps every solved template; a
    named template the model does not solve, or no solved template at all, is refused (InputError) — before
    anything is written.
    """
    from .needles import TEMPLATES

    candidates = list(TEMPLATES)  # all of them (a few in-window documents each), to say which ones work
    sets = {t: signal_needles(p, t) for t in candidates}
    for t, ns in sets.items():
        pool.set_needles(f"signal:{t}", ns)
    ones = np.ones(p.geometry.n_freq)
    tasks = [ScoreTask(f"signal:{t}", ones, 1.0, needles=f"signal:{t}") for t in candidates]
    measured: dict[str, Any] = {}
    for o in pool.map_unordered(tasks):
        t = o.key.split(":", 1)[1]
        measured[t] = {
            "accuracy": None if o.accuracy is None else float(o.accuracy),
            "nll": _json_float(o.nll),
            "length": sets[t].length,
            "samples": len(sets[t].samples),
            "error": o.error,
        }
    solved = [t for t in candidates if (measured[t]["accuracy"] or 0.0) >= SIGNAL_THRESHOLD]
    signal = {"threshold": SIGNAL_THRESHOLD, "templates": measured, "solved": solved}
    if reporter is not None:
        reporter.signal_checked(signal)

    def shown(t: str) -> str:
        m = measured[t]
        return f"{m['accuracy'] or 0:.2f} at {m['length']} tokens"

    if p.templates is not None:
        for t in p.templates:
            if t not in solved:
                others = ", ".join(solved) if solved else "none"
                raise InputError(
                    f"the model does not solve the {t!r} needle task inside its window (accuracy {shown(t)} with plain "
                    f"RoPE, below {SIGNAL_THRESHOLD}), so its perplexity cannot guide a search beyond it: use --template "
                    f"auto (solved: {others}) or pass --no-signal-check to search with it anyway"
                )
        return "+".join(p.templates), signal
    if not solved:
        raise InputError(
            "the model solves none of the needle templates inside its window with plain RoPE ("
            + "; ".join(f"{t} {shown(t)}" for t in candidates)
            + f"; threshold {SIGNAL_THRESHOLD}): no needle perplexity can guide a search; pass --no-signal-check and "
            "--template NAME to search anyway"
        )
    return "+".join(solved), signal


def create_run(p: Plan, template: str, signal: dict[str, Any] | None) -> PreparedRun:
    """Write a new run directory: config, space, the search needles (template(s) ``template``)."""
    from .models import model_fingerprint

    config = p.config
    config.template = template
    config.signal = signal
    config.model_fingerprint = model_fingerprint(config.model)
    needles = _build_needles(p.tokenizer, config.target_length, config.samples, config.seed, template, p.depths)
    try:
        with RunStore.creating(p.out, config, force=p.force) as store:  # renamed into place whole, or not at all
            store.write_json(SPACE, p.space.to_dict())
            needles.save(store.needles_dir)
            config.needles_fingerprint = _fingerprint_dir(store.needles_dir)
            store.write_config(config)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise _disk_full(e, f"then start the run again (nothing of {p.out} was kept)") from None
    run = PreparedRun(store, config, p.geometry, p.space, p.optimizer, needles, p.tokenizer, JournalContents([]), None, False)
    run.writing = True
    return run


def _disk_full(e: OSError, then: str) -> RunError:
    where = Path(e.filename).name if e.filename else "a file of the run"
    return RunError(f"the disk is full (writing {where}): free some space, {then}")


def prepare(opts: EvolveOptions, pool: WorkerPool | None = None, reporter: EvolveReporter | None = None) -> PreparedRun:
    """Check everything, measure the signal (with ``pool``), then create the run directory — or reopen one
    (``opts.resume``). Nothing is written on bad input or an unusable signal."""
    if opts.resume is not None:
        return _prepare_resume(opts)
    p = plan(opts)
    if opts.signal_check is not False and pool is not None:
        template, signal = check_signal(p, pool, reporter)
    elif p.templates is None:
        raise InputError(
            "--template auto measures which templates the model solves on the workers: name a template "
            "(e.g. --template passkey) to prepare a run without them"
        )
    else:
        template, signal = "+".join(p.templates), None
    return create_run(p, template, signal)


def _check_same_model(config: RunConfig, path: Path, accept: bool) -> None:
    """Refuse to resume with a model whose config, weights or tokenizer changed since the run started."""
    from .models import fingerprint_changes, model_fingerprint

    if not config.model_fingerprint:
        return  # a run written before fingerprints existed
    changes = fingerprint_changes(config.model_fingerprint, model_fingerprint(config.model))
    if changes and not accept:
        shown = "the testbed" if config.model is None else config.model
        raise RunError(
            f"the model {shown} changed since {path} started ({'; '.join(changes)}): resuming would mix two models' "
            "scores in one journal; start a new run, or pass --accept-model-change to resume anyway"
        )
    if changes:
        log.warning("resuming %s with a changed model (%s), as asked", path, "; ".join(changes))


def _prepare_resume(opts: EvolveOptions) -> PreparedRun:
    from .needles import load_needle_set
    from .optimizers import make_optimizer
    from .space import SearchSpace

    path = Path(opts.resume)  # type: ignore[arg-type]
    check_options(opts)
    if opts.force:
        raise InputError(
            f"--force starts a run over and --resume {path} continues it: drop --force to continue, or drop --resume "
            "(and keep --force) to start over"
        )
    store = RunStore.open(path)
    config = store.read_config()
    template = opts.template
    as_given: dict[str, str] = {}
    if template is not None and template.strip().lower() == "auto":  # what auto chose when the run started
        solved = (config.signal or {}).get("solved")
        if solved:
            template = "+".join(solved)
            as_given["template"] = f"auto (the templates its signal check found solved: {template})"
        else:  # left as "auto", which matches no template
            as_given["template"] = "auto (which chooses by the signal check, not made for this run)"
    given = {
        "model": opts.model,
        "target_length": opts.target,
        "space": opts.space,
        "budget": opts.budget,
        "optimizer": opts.optimizer,
        "samples": opts.samples,
        "seed": opts.seed,
        "racing": opts.racing,
        "template": template,
        "depths": opts.depths,
        "signal_check": opts.signal_check,
    }
    check_resume_options(config, given, path, as_given)
    if opts.out is not None and Path(opts.out).resolve() != path.resolve():
        raise InputError(f"--out {opts.out} contradicts --resume {path}: a resumed run continues in its own directory")
    store.lock()  # every option checked; from here on only reads until the first write (PreparedRun.begin_writing)
    try:
        geometry, tokenizer = load_model_info(config.model)
        _check_same_model(config, path, opts.accept_model_change)
        try:
            space = SearchSpace.from_dict(store.read_json(SPACE), geometry, config.target_length)
        except InputError as e:
            raise RunError(f"{store.file(SPACE)} does not fit the model {config.model_name}: {e}") from None
        fp = _fingerprint_dir(store.needles_dir) if store.needles_dir.is_dir() else None
        if fp is None or (config.needles_fingerprint and fp != config.needles_fingerprint):
            raise RunError(
                f"{store.needles_dir} is missing or was changed since the run started: the run cannot be resumed; start a new run"
            )
        try:
            needles = load_needle_set(store.needles_dir, tokenizer=tokenizer, length=config.target_length)
        except NeedleError as e:
            raise RunError(f"{store.needles_dir}: {e}") from None
        optimizer = make_optimizer(config.optimizer, space, config.budget, config.seed)
        journal = store.read_journal()
        checkpoint = store.load_last_checkpoint()
        if checkpoint is not None:
            try:
                optimizer.load_state_dict(checkpoint["optimizer"])
            except Exception as e:  # a damaged or foreign optimizer state
                p = store.checkpoint_path(int(checkpoint["generation"]))
                reason = str(e) if isinstance(e, LongsearchError) else f"{type(e).__name__}: {str(e)[:80]}"
                raise RunError(f"checkpoint {p} is corrupted ({reason}): delete it to resume from the generation before") from None
        if opts.workers is not None:
            config.workers = opts.workers
        if opts.address is not None:
            config.address = opts.address
    except BaseException:
        store.abandon()  # nothing written: not even a lock file this process made
        raise
    return PreparedRun(store, config, geometry, space, optimizer, needles, tokenizer, journal, checkpoint, True, journal.truncated_bytes)


# ---------------------------------------------------------------- the search


def _record(outcome: ScoreOutcome, length: int, **fields_: Any) -> JournalRecord:
    docs = outcome.n_scored
    return JournalRecord(
        score=outcome.nll if math.isfinite(outcome.nll) else math.inf,
        per_sample=list(outcome.per_sample),
        accuracy=outcome.accuracy,
        per_sample_correct=list(outcome.per_sample_correct),
        worker=outcome.worker,
        seconds=round(outcome.seconds, 4),
        attempts=outcome.attempts,
        error=outcome.error,
        censored=bool(outcome.censored),
        failed=not math.isfinite(outcome.nll),
        docs=docs,
        token_forwards=None if docs is None else int(docs) * int(length),
        **fields_,
    )


def baseline_factors(geometry: RopeGeometry, target: int) -> dict[str, RopeFactors]:
    return {name: RopeFactors.from_method(name, geometry, target) for name in BASELINE_METHODS}


def _best_baseline(scores: dict[str, float]) -> tuple[str | None, float]:
    finite = {k: v for k, v in scores.items() if k != "none" and math.isfinite(v)}
    if not finite:
        return None, math.inf
    name = min(finite, key=lambda k: (finite[k], k))
    return name, finite[name]


def best_factors(run: PreparedRun, result: Any, generation: int | None) -> RopeFactors:
    g, cfg = run.geometry, run.config
    return RopeFactors(
        long_factor=np.asarray(result.candidate.lam, dtype=np.float64),
        short_factor=np.ones(g.n_freq),
        original_length=g.original_length,
        target_length=cfg.target_length,
        base=g.base,
        rotary_dim=g.rotary_dim,
        attention_factor=float(result.candidate.m),
        provenance={
            "method": f"longsearch:{cfg.optimizer}",
            "run": str(run.store.path),
            "model": cfg.model_name,
            "space": cfg.space,
            "seed": cfg.seed,
            "score": float(result.score),
            "candidate": int(result.candidate.id),
            "generation": generation,
            "params": {k: v for k, v in result.candidate.params.items() if k != "parents"},
            "longsearch_version": __version__,
        },
    )


def search(run: PreparedRun, pool: WorkerPool, reporter: EvolveReporter) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Run the remaining generations. Returns the baseline scores and the per-generation history.

    Each generation (:func:`_generation`): ``ask()`` a batch; take the scores the journal already holds (resume);
    race the rest against the optimizer's bar (with the baselines in generation 0, scored in full); journal each
    outcome as it arrives; ``tell()``; checkpoint; best.json.

    A resumed run first finishes the generation it was stopped in, if the journal holds any of its candidates
    (their λ are those the checkpoint's state asks again), and only then, at that generation's end, evaluates
    again the failures of the generations told (:func:`retry_failures`): the same point on every resume of the
    same journal, so a resume stopped and resumed again ends as one never stopped — and a run stopped in the
    middle of a generation ends as one stopped at that generation's end and resumed would."""
    run.begin_writing()
    opt = run.optimizer
    book = _Book(run, reporter, baseline_factors(run.geometry, run.config.target_length))
    if not opt.done and any(r.generation >= opt.generation for r in book.journal.values()):
        _generation(book, pool)  # the interrupted generation, as the stopped process asked it
    retry_failures(book, pool)
    while not opt.done:
        _generation(book, pool)
    book.write_baselines()  # unchanged unless a baseline was scored again since it was written
    return book.scores, book.history


def _generation(book: _Book, pool: WorkerPool) -> None:
    """Ask, score (re-using what the journal holds), tell and checkpoint one generation."""
    run, opt, reporter = book.run, book.run.optimizer, book.reporter
    t0 = time.perf_counter()
    generation = opt.generation
    batch = opt.ask()
    bar = opt.race_bar() if run.config.racing else math.inf
    results = _reuse_from_journal(batch, book)
    reused = len(results)
    by_key = {f"c{c.id}": c for c in batch if c.id not in results}
    tasks = [ScoreTask(key, c.lam, c.m, bar=bar) for key, c in by_key.items()]
    if generation == 0:  # later, a baseline without a standing score is evaluated again by retry_failures
        tasks += book.baseline_tasks()
    reporter.generation_started(generation, _generations(opt), len(tasks), reused)
    for outcome in pool.map_unordered(tasks):
        book.take(outcome, by_key, results, generation)
    book.write_baselines()
    told = [results[c.id] for c in batch]
    opt.tell(told)
    failed = sum(1 for r in told if r.failed) + book.failed_baselines(generation)
    summary = _summary(opt, generation, book, len(tasks), reused, bar, time.perf_counter() - t0, failed)
    book.history.append({k: _json_float(v) for k, v in asdict(summary).items() if k not in ("seconds",)})
    _checkpoint(book, generation)
    reporter.generation_finished(summary)


def _generations(opt: Any) -> int | None:
    """Generations the budget allows, generation 0 included; None for a cost budget (as many as the cost allows)."""
    return None if opt.budget.max_cost is not None else opt.budget.generations + 1


class _Book:
    """What :func:`search` keeps while it journals outcomes: the last record and the failure count of each candidate
    and baseline (the journal read at the start, then every outcome journaled since), baseline scores, the history,
    counters, and whether baselines.json is due."""

    def __init__(self, run: PreparedRun, reporter: EvolveReporter, baselines: dict[str, RopeFactors]) -> None:
        self.run, self.reporter, self.baselines = run, reporter, baselines
        self.journal: dict[int, JournalRecord] = run.journal.candidates()
        self.baseline_records: dict[str, JournalRecord] = run.journal.baselines()
        self.failures: dict[tuple[str, Any], int] = run.journal.failures()
        self.history: list[dict[str, Any]] = list((run.checkpoint or {}).get("history", []))
        self.scores: dict[str, float] = {
            n: r.score
            for n, r in self.baseline_records.items()
            if n in baselines and (not r.failed or self.failures.get(("baseline", n), 0) >= MAX_FAILED_ATTEMPTS)
        }
        self.n_docs = len(run.needles.samples)
        self.length = run.config.target_length
        self.token_forwards = sum(r.token_forwards or 0 for r in run.journal.records)
        self.evaluations = len(run.journal.records)
        self._dirty = False  # a baseline was scored since baselines.json was written
        self._compare = run.resumed  # a resume compares baselines.json once: its writer may have been stopped first

    def baseline_tasks(self) -> list[ScoreTask]:
        """The baselines without a standing score (never scored, or failed with attempts left): scored in full."""
        return [ScoreTask(f"b:{n}", f.long_factor, f.attention_factor) for n, f in self.baselines.items() if n not in self.scores]

    def failed_baselines(self, generation: int) -> int:
        """The baselines whose last outcome, journaled in ``generation``, failed."""
        return sum(1 for n, r in self.baseline_records.items() if n in self.baselines and r.generation == generation and r.failed)

    def take(self, outcome: ScoreOutcome, by_key: dict[str, Any], results: dict[int, Any], generation: int) -> JournalRecord:
        """Journal one outcome: a candidate's result goes to ``results``, a baseline's score to :attr:`scores`."""
        if outcome.key.startswith("b:"):
            name = outcome.key[2:]
            f = self.baselines[name]
            rec = _record(
                outcome,
                self.length,
                kind="baseline",
                name=name,
                generation=generation,
                origin=f"baseline:{name}",
                lam=[float(x) for x in f.long_factor],
                m=f.attention_factor,
            )
            self.scores[name] = rec.score
            self.baseline_records[name] = rec
            self._dirty = True
            key: tuple[str, Any] = ("baseline", name)
        else:
            c = by_key[outcome.key]
            rec = _record(
                outcome,
                self.length,
                kind="candidate",
                id=int(c.id),
                generation=int(c.generation),
                origin=c.origin,
                lam=[float(x) for x in c.lam],
                m=float(c.m),
                d_rcd=c.params.get("d_rcd"),
                params={k: v for k, v in c.params.items() if k != "parents"},
            )
            results[c.id] = _result_of(c, rec, self.n_docs)
            self.journal[int(c.id)] = rec
            key = ("candidate", int(c.id))
        self.run.store.append(rec)
        self.evaluations += 1
        self.token_forwards += rec.token_forwards or 0
        if rec.failed:
            self.failures[key] = self.failures.get(key, 0) + 1
        self.reporter.evaluated(rec)
        return rec

    def write_baselines(self) -> None:
        """baselines.json once every baseline has an outcome, and again whenever one was scored again; on resume
        also when the file differs (the process that scored them was stopped before writing it)."""
        if len(self.scores) != len(self.baselines) or not (self._dirty or self._compare):
            return
        payload = _baselines_payload(self.baselines, self.scores)
        store = self.run.store
        if not self._dirty:
            self._compare = False
            try:
                if store.file(BASELINES).exists() and store.read_json(BASELINES) == payload:
                    return
            except RunError:  # damaged: written again
                pass
        store.write_json(BASELINES, payload)
        self._dirty = self._compare = False


def _checkpoint(book: _Book, generation: int) -> None:
    """The state after ``generation`` (atomically), then best.json."""
    run, opt = book.run, book.run.optimizer
    run.store.save_checkpoint(
        generation,
        {
            "optimizer": opt.state_dict(),
            "history": book.history,
            "baselines": {k: _json_float(v) for k, v in book.scores.items()},
            "evaluations": book.evaluations,
        },
    )
    best = opt.best()
    if best is not None:
        best_factors(run, best, _generation_of(best, book.history)).save(run.store.file(BEST))


def retry_failures(book: _Book, pool: WorkerPool) -> None:
    """Between generations of a resumed run (see :func:`search` for which boundary): evaluate again what failed in
    the generations told — the candidates the optimizer holds as failed (:meth:`Optimizer.failed`) and the
    baselines — if it failed fewer than :data:`MAX_FAILED_ATTEMPTS` times. Each is scored in full (no race) and
    journaled as it arrives; the successes go to the optimizer as late results (:meth:`Optimizer.tell_late`) and
    the last checkpoint is rewritten with that state (same generation), then best.json and baselines.json.

    Deterministic: a candidate the journal already holds a success for (an earlier resume retried it and was
    stopped before rewriting the checkpoint) is not evaluated again, and the late results are told together, in
    id order, after the last generation told — so an interrupted retry resumes to the state an uninterrupted one
    reaches."""
    run, opt, reporter = book.run, book.run.optimizer, book.reporter
    if opt.generation == 0:
        return  # nothing told yet: generation 0 (with the baselines) is still to come
    reused: dict[int, Any] = {}
    todo: dict[str, Any] = {}
    for c in opt.failed():
        rec = book.journal.get(c.id)
        if rec is not None and not rec.failed:
            _check_same(c, rec, run.store)
            reused[c.id] = _result_of(c, rec, book.n_docs)
        elif book.failures.get(("candidate", c.id), 0) < MAX_FAILED_ATTEMPTS:
            todo[f"c{c.id}"] = c
    tasks = [ScoreTask(key, c.lam, c.m) for key, c in todo.items()] + book.baseline_tasks()
    if not tasks and not reused:
        return
    reporter.retry_started(len(tasks), len(reused))
    results = dict(reused)
    generation = opt.generation - 1
    for outcome in pool.map_unordered(tasks):
        book.take(outcome, todo, results, generation)
    late = [results[k] for k in sorted(results)]
    recovered = sum(1 for r in late if not r.failed)
    opt.tell_late(late)
    if recovered:
        _checkpoint(book, generation)
    book.write_baselines()
    failed_baselines = sum(1 for t in tasks if t.key.startswith("b:") and not math.isfinite(book.scores[t.key[2:]]))
    reporter.retry_finished(recovered, len(late) - recovered + failed_baselines)


def _reuse_from_journal(batch: list[Any], book: _Book) -> dict[int, Any]:
    """Results the journal already holds for this batch (a resumed run re-evaluates nothing it scored).

    A failed evaluation is a state, not a score: it is evaluated again, until it has failed
    :data:`MAX_FAILED_ATTEMPTS` times; then its failure stands (it is never a parent nor the best)."""
    results: dict[int, Any] = {}
    for c in batch:
        rec = book.journal.get(c.id)
        if rec is None or (rec.failed and book.failures.get(("candidate", c.id), 0) < MAX_FAILED_ATTEMPTS):
            continue
        _check_same(c, rec, book.run.store)
        results[c.id] = _result_of(c, rec, book.n_docs)
    return results


def _check_same(c: Any, rec: JournalRecord, store: RunStore) -> None:
    same = np.allclose(np.asarray(rec.lam), c.lam, rtol=0, atol=1e-9) and abs(float(rec.m) - float(c.m)) < 1e-9
    if not same:
        raise RunError(
            f"{store.journal_path}: candidate {c.id} in the journal differs from the one the optimizer "
            "regenerates from the last checkpoint: the run cannot be resumed consistently; start a new run"
        )


def _result_of(c: Any, rec: JournalRecord, n_docs: int) -> Any:
    from .optimizers import Result

    cost = 1.0 if rec.docs is None or not n_docs else rec.docs / n_docs
    return Result(c, rec.score, cost, bool(rec.censored), bool(rec.failed))


def _summary(
    opt: Any, generation: int, book: _Book, evaluated: int, reused: int, bar: float, seconds: float, failed: int
) -> GenerationSummary:
    best = opt.best()
    bname, bscore = _best_baseline(book.scores)
    return GenerationSummary(
        generation=generation,
        generations=_generations(opt),
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
        token_forwards=int(book.token_forwards),
        best_m=float(best.candidate.m) if best else None,
        failed=failed,
    )


def _generation_of(best: Any, history: list[dict[str, Any]]) -> int | None:
    for h in history:
        if h.get("best_id") == best.candidate.id:
            return int(h["generation"])
    return int(best.candidate.generation)


def _json_float(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _baselines_payload(baselines: dict[str, RopeFactors], scores: dict[str, float]) -> dict[str, Any]:
    return {
        name: {"score": _json_float(scores[name]), "lam": [float(x) for x in f.long_factor], "m": f.attention_factor}
        for name, f in baselines.items()
    }


# ---------------------------------------------------------------- held-out comparison and plots


def heldout(run: PreparedRun, pool: WorkerPool, reporter: EvolveReporter, baseline_scores: dict[str, float]) -> list[HeldoutRow]:
    """Score the best factors, PI / NTK / YaRN / none and the next best candidates on a held-out needle set (the
    search's templates and depths, seed + 1000); write final.json with the table, how well the search score ranks
    candidates as the held-out score does (Spearman), and the evaluations that failed for good."""
    from .needles import load_needle_set

    store, cfg = run.store, run.config
    best = run.optimizer.best()
    if best is None:
        return []
    failed = failed_evaluations(store.read_journal())
    if store.file(FINAL).exists():  # a finished run resumed again: its table is already there
        try:
            final = store.read_json(FINAL)
            if final.get("best", {}).get("candidate") == int(best.candidate.id) and final.get("failed") == failed:
                return [
                    HeldoutRow(
                        r["name"],
                        math.inf if r.get("nll") is None else float(r["nll"]),
                        r.get("accuracy"),
                        r.get("search_nll"),
                        r.get("error"),
                    )
                    for r in final["rows"]
                ]
        except (RunError, KeyError, TypeError, AttributeError):
            pass  # rewritten below
    hseed = cfg.heldout_seed if cfg.heldout_seed is not None else cfg.seed + HELDOUT_SEED_OFFSET
    hdir = store.heldout_needles_dir
    needles = None
    if hdir.is_dir():
        try:
            needles = load_needle_set(hdir, tokenizer=run.tokenizer, length=cfg.target_length)
        except NeedleError:
            needles = None
    if needles is None:
        needles = _build_needles(run.tokenizer, cfg.target_length, cfg.samples, hseed, cfg.template or "magic-number", cfg.depths)
        needles.save(hdir)
    pool.set_needles("heldout", needles)
    entries: dict[str, tuple[np.ndarray, float, float | None]] = {"longsearch": (best.candidate.lam, best.candidate.m, best.score)}
    for name, f in baseline_factors(run.geometry, cfg.target_length).items():
        entries[name] = (f.long_factor, f.attention_factor, baseline_scores.get(name))
    others = _next_best(run.store.read_journal(), best.candidate.id, RANK_CANDIDATES - 1)
    for rec in others:
        entries[f"c{rec.id}"] = (np.asarray(rec.lam), float(rec.m), rec.score)
    tasks = [ScoreTask(name, lam, m, needles="heldout") for name, (lam, m, _) in entries.items()]
    reporter.heldout_started(len(tasks))
    outcomes: dict[str, ScoreOutcome] = {}
    for o in pool.map_unordered(tasks):
        outcomes[o.key] = o
        reporter.heldout_evaluated(o.key, o)
    shown = ["longsearch", *baseline_factors(run.geometry, cfg.target_length)]
    rows = [HeldoutRow(name, outcomes[name].nll, outcomes[name].accuracy, entries[name][2], outcomes[name].error) for name in shown]
    pairs: list[tuple[str, float, float]] = []
    for name in entries:
        a, b = entries[name][2], outcomes[name].nll
        if name != "none" and a is not None and math.isfinite(a) and math.isfinite(b):
            pairs.append((name, float(a), float(b)))
    rho = spearman([a for _, a, _ in pairs], [b for _, _, b in pairs]) if len(pairs) >= 3 else None
    store.write_json(
        FINAL,
        {
            "kind": "longsearch.final",
            "needles": {
                "seed": hseed,
                "samples": cfg.samples,
                "length": cfg.target_length,
                "template": needles.template,
                "depths": cfg.depths,
            },
            "best": {"candidate": int(best.candidate.id), "search_nll": _json_float(best.score)},
            "rows": [{k: _json_float(v) for k, v in asdict(r).items()} for r in rows],
            "rank_agreement": {
                "spearman": rho,
                "n": len(pairs),
                "names": [n for n, _, _ in pairs],
                "search_nll": [a for _, a, _ in pairs],
                "heldout_nll": [b for _, _, b in pairs],
            },
            "failed": failed,
        },
    )
    return rows


def failed_evaluations(journal: JournalContents) -> list[dict[str, Any]]:
    """The candidates and baselines whose last evaluation failed: kind, id or name, the reason, how many times it
    failed, and whether a resume evaluates it again (fewer than :data:`MAX_FAILED_ATTEMPTS` failures)."""
    failures = journal.failures()
    out: list[dict[str, Any]] = []
    for key, r in [(("candidate", r.id), r) for r in journal.candidates().values()] + [
        (("baseline", r.name), r) for r in journal.baselines().values()
    ]:
        if r.failed:
            n = failures.get(key, 1)
            entry: dict[str, Any] = {"kind": key[0], "id" if key[0] == "candidate" else "name": key[1]}
            out.append({**entry, "error": r.error, "attempts": n, "retried_on_resume": n < MAX_FAILED_ATTEMPTS})
    return sorted(out, key=lambda d: (d["kind"] != "candidate", d.get("id") or 0, d.get("name") or ""))


def _next_best(journal: JournalContents, best_id: int, k: int) -> list[JournalRecord]:
    """The k best fully-scored candidates after the best one (distinct λ and m)."""
    seen: set[tuple] = set()
    out: list[JournalRecord] = []
    for r in sorted(journal.candidates().values(), key=lambda r: (r.score, r.id or 0)):
        if r.id == best_id or r.censored or r.failed or not math.isfinite(r.score):
            continue
        key = (tuple(np.round(r.lam, 4)), round(float(r.m), 4))
        if key in seen:
            continue
        seen.add(key)
        out.append(r)
        if len(out) == k:
            break
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when a side is constant or too short."""
    if len(a) != len(b) or len(a) < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def write_plots(run: PreparedRun, history: list[dict[str, Any]], baseline_scores: dict[str, float]) -> dict[str, Path]:
    from .plots import factors_plot, progress_plot

    paths: dict[str, Path] = {}
    best = run.optimizer.best()
    gens = [int(h["generation"]) for h in history]
    bests = [math.inf if h.get("best_score") is None else float(h["best_score"]) for h in history]
    p = run.store.file("progress.png")
    progress_plot(p, gens, bests, {k: v for k, v in baseline_scores.items()}, title=_title(run))
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
        )
        paths["factors"] = p
    return paths


def _title(run: PreparedRun) -> str:
    c = run.config
    return f"{c.model_name} → {format_length(c.target_length)}, {c.space}, {c.optimizer}, seed {c.seed}"


# ---------------------------------------------------------------- the command


def run_evolve(opts: EvolveOptions, reporter: EvolveReporter | None = None, pool: WorkerPool | None = None) -> EvolveResult:
    """Start or resume a search and run it to the end. Ctrl-C leaves a resumable run (KeyboardInterrupt re-raised).

    ``pool``: workers to use (left open) instead of a pool made from the options and closed at the end."""
    reporter = reporter or EvolveReporter()
    run: PreparedRun | None = None
    if opts.resume is not None:  # both check every option first (check_options), before anything is read or written
        run = _prepare_resume(opts)
        cfg = run.config
    else:
        p = plan(opts)  # every option checked; nothing written yet
        cfg = p.config
    try:
        own = pool is None
        if pool is None:
            pool = WorkerPool(
                cfg.model,
                cfg.target_length,
                workers=cfg.workers,
                address=cfg.address,
                gpus_per_worker=opts.gpus_per_worker,
                max_attempts=opts.max_attempts,
                task_timeout=opts.task_timeout,
            )
    except BaseException:
        if run is not None:
            run.store.abandon()
        raise
    with pool if own else contextlib.nullcontext(pool):
        if run is None:  # a new run: measure the signal on the workers, then write the run directory
            t0 = time.perf_counter()
            pool.start()
            reporter.pool_started(pool.workers, pool.device, time.perf_counter() - t0)
            if opts.signal_check is not False:
                template, signal = check_signal(p, pool, reporter)
            else:  # plan() made sure a template is named
                template, signal = "+".join(p.templates or []), None
            run = create_run(p, template, signal)
        return _run(run, pool, opts, reporter)


def _run(run: PreparedRun, pool: WorkerPool, opts: EvolveOptions, reporter: EvolveReporter) -> EvolveResult:
    try:
        reporter.run_started(run)
        pool.set_needles("search", run.needles)
        if not run.optimizer.done and not pool.workers:  # a resumed run starts its workers here
            t0 = time.perf_counter()
            pool.start()
            reporter.pool_started(pool.workers, pool.device, time.perf_counter() - t0)
        baseline_scores, history = search(run, pool, reporter)
        rows = heldout(run, pool, reporter, baseline_scores) if opts.heldout else []
        paths = {"run": run.store.path, "journal": run.store.journal_path}
        best = run.optimizer.best()
        factors = None
        if best is not None:
            factors = best_factors(run, best, _generation_of(best, history))
            factors.save(run.store.file(BEST))
            paths["best"] = run.store.file(BEST)
        if rows:
            paths["final"] = run.store.file(FINAL)
        paths.update(write_plots(run, history, baseline_scores))
        result = EvolveResult(
            run_dir=run.store.path,
            best=factors,
            best_score=best.score if best else math.inf,
            best_generation=_generation_of(best, history) if best else None,
            baselines=baseline_scores,
            heldout=rows,
            history=history,
            evaluations=len(run.store.read_journal().records),
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
        raise _disk_full(e, f"then continue with `longsearch evolve --resume {run.store.path}`") from None
    finally:
        if run.writing:
            run.store.close()
        else:  # refused or failed before its first write (the workers did not start): the run is as it was
            run.store.abandon()


__all__ = [
    "BASELINE_METHODS",
    "EvolveOptions",
    "EvolveReporter",
    "EvolveResult",
    "GenerationSummary",
    "HeldoutRow",
    "PreparedRun",
    "baseline_factors",
    "default_out",
    "failed_evaluations",
    "heldout",
    "load_model_info",
    "prepare",
    "retry_failures",
    "run_evolve",
    "search",
    "write_plots",
]
