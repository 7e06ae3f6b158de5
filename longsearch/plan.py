"""Planning a search: every option checked and resolved before anything is written, and the in-window signal check.

>>> p = plan(EvolveOptions(target=2048, budget="quick"))        # doctest: +SKIP
>>> p.config.space, p.space.describe(), p.out                    # doctest: +SKIP

* :class:`EvolveOptions` — what the command line asks for (None: a default, or on resume the run's own value).
* :func:`plan` — a new run's options checked (model, target, space, optimizer, budget, template, depths, an
  existing output) and resolved into a :class:`Plan`; nothing is written.
* :func:`measure_signal` / :func:`signal_templates` — which needle templates the model solves inside its own window with plain RoPE, measured
  on the workers: a perplexity the model cannot lower in-window cannot guide a search beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import faults
from .errors import InputError, NeedleError, RunError
from .executors import Executor, ScoreTask
from .lengths import format_length
from .mix import parse_serve_lengths, parse_serve_weights
from .needles import TEMPLATES, NeedleSet, resolve_depths
from .optimizers import Optimizer, make_optimizer, resolve_budget
from .placement import check_device
from .rope import Rescale, RopeGeometry
from .ruler.signal import build_signal_set, is_task_template, signal_template_names
from .runs import RunConfig
from .space import SearchSpace
from .windowed_attention import resolve_attn_implementation
from .workers import check_pool_options

DEFAULTS: dict[str, Any] = {
    "space": "hybrid",
    "budget": "quick",
    "optimizer": "ga",
    "samples": 16,
    "seed": 0,
    "template": "auto",
    "depths": "spread",
    "attn_implementation": "auto",  # models.DEFAULT_ATTN_IMPLEMENTATION
    "worker_startup_timeout": 600.0,  # placement.DEFAULT_STARTUP_TIMEOUT
    "serve_lengths": "auto",
    "serve_weights": "auto",
    "validation_samples": 16,
    "patience": 3,
}
#: The validation needles: another haystack (generated sentences, no book) and, for the pass key, another framing.
VALIDATION_HAYSTACK = "synthetic"
VALIDATION_SEED_OFFSET = 3000
VALIDATION_FRAMING = {"passkey": "passkey-find", "passkey-recall": "passkey-find"}
#: A needle template is a usable signal when plain RoPE answers at least this share of its documents inside the
#: model's own window: a perplexity the model cannot lower in-window cannot guide a search beyond it.
SIGNAL_THRESHOLD = 0.75
SIGNAL_SAMPLES = 8
SIGNAL_SEED_OFFSET = 2000
HELDOUT_SEED_OFFSET = 1000


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
    device: str = "auto"  # the workers': auto (GPUs where the cluster has them, never a silent CPU fall-back), cuda, cpu
    attn_implementation: str | None = None  # the workers' attention (None: auto, or the run's own on resume)
    worker_startup_timeout: float | None = None  # seconds a worker may take to be placed and load (None: 600, or the run's)
    serve_lengths: str | None = None  # auto (window, doublings, target), target, or a comma list ending at the target
    serve_weights: str | None = None  # auto, or one weight per served length
    validation_samples: int | None = None  # documents per validation set at the target (0: no validation)
    patience: int | None = None  # generations without a better validation score before stopping (0: never stop early)


@dataclass
class Plan:
    """A new run, checked and resolved; nothing written yet (:func:`longsearch.runstart.create_run` writes it)."""

    config: RunConfig
    geometry: RopeGeometry
    space: SearchSpace
    optimizer: Optimizer
    tokenizer: Any
    out: Path
    force: bool
    templates: list[str] | None  # None: auto
    depths: str
    validation_samples: int = 0
    serve_lengths_auto: bool = False  # the served lengths are the default ones (a length too short for the template is dropped)


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


def normalize_model(model: str | None) -> str | None:
    """A local model directory is stored as an absolute path (so a resume from elsewhere finds it)."""
    if model is None or str(model).strip() in ("", "testbed"):
        return None
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else str(model)


def check_options(opts: EvolveOptions) -> None:
    """The options a new run and a resume share, checked before anything starts or is written: once, first thing
    in :func:`plan` (a new run) and in :func:`longsearch.runstart.open_resume`. (:class:`~longsearch.workers.WorkerPool`
    checks its own arguments again: that is its contract as a class used on its own.)"""
    faults.check()
    check_pool_options(opts.workers, opts.gpus_per_worker, opts.max_attempts, opts.task_timeout, opts.worker_startup_timeout)
    check_device(opts.device)
    if opts.attn_implementation is not None:
        resolve_attn_implementation(opts.attn_implementation, None)  # an unknown name is refused now


def plan(opts: EvolveOptions) -> Plan:
    """Check every option of a new run and resolve it, without writing anything."""
    check_options(opts)
    if opts.target is None:
        raise InputError("--target is required (e.g. --target 4k), or pass --resume RUN to continue a run")
    model = normalize_model(opts.model)
    space_name = opts.space or DEFAULTS["space"]
    budget = str(opts.budget or DEFAULTS["budget"])
    optimizer_spec = opts.optimizer or DEFAULTS["optimizer"]
    samples = int(opts.samples if opts.samples is not None else DEFAULTS["samples"])
    seed = int(opts.seed if opts.seed is not None else DEFAULTS["seed"])
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    template = str(opts.template or DEFAULTS["template"]).strip().lower()
    templates = None if template == "auto" else signal_template_names(template)
    if opts.signal_check is False and templates is None:
        raise InputError("--no-signal-check needs a named --template (e.g. --template passkey): auto chooses by the check")
    depths = str(opts.depths or DEFAULTS["depths"])
    resolve_depths(depths, 1, np.random.default_rng(0))  # refuse unreadable depths now
    resolve_budget(budget)
    validation_samples = int(opts.validation_samples if opts.validation_samples is not None else DEFAULTS["validation_samples"])
    patience = int(opts.patience if opts.patience is not None else DEFAULTS["patience"])
    if validation_samples < 0 or patience < 0:
        raise InputError("--validation-samples and --patience must be 0 (off) or more")
    geometry, tokenizer = load_model_info(model)
    target = int(opts.target)
    if target <= geometry.original_length:
        raise InputError(
            f"target {format_length(target)} is not above the model's window of {geometry.original_length} tokens: choose a longer --target"
        )
    serve_lengths = parse_serve_lengths(opts.serve_lengths, geometry.original_length, target)
    serve_weights = parse_serve_weights(opts.serve_weights, serve_lengths)
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
        attn_implementation=opts.attn_implementation,
        worker_startup_timeout=opts.worker_startup_timeout,
        serve_lengths=serve_lengths,
        serve_weights=[float(w) for w in serve_weights],
        patience=patience or None,
    )
    auto = opts.serve_lengths is None or str(opts.serve_lengths).strip().lower() in ("", "auto")
    return Plan(config, geometry, space, optimizer, tokenizer, out, opts.force, templates, depths, validation_samples, auto)


# ---------------------------------------------------------------- the in-window signal check


class _Seeded(Protocol):
    @property
    def seed(self) -> int: ...


class SignalInputs(Protocol):
    """What the signal check reads of a plan: a :class:`Plan`, or eval's own (:func:`longsearch.evaluate.choose_template`)."""

    @property
    def geometry(self) -> RopeGeometry: ...
    @property
    def tokenizer(self) -> Any: ...
    @property
    def config(self) -> _Seeded: ...
    @property
    def depths(self) -> str: ...
    @property
    def templates(self) -> list[str] | None: ...


@dataclass(frozen=True)
class SignalTemplate:
    """A signal-check task's reference: the template measured in the window."""

    template: str


def signal_needles(p: SignalInputs, template: str) -> NeedleSet:
    """In-window documents of one template or RULER-style task: the model's window, or the shortest doubling that
    holds it."""
    length = p.geometry.original_length
    while True:
        try:
            return build_signal_set(
                p.tokenizer, length, SIGNAL_SAMPLES, template=template, seed=p.config.seed + SIGNAL_SEED_OFFSET, depths=p.depths
            )
        except NeedleError as e:
            if "cannot hold" not in str(e) or length >= 64 * p.geometry.original_length:
                raise
            length *= 2


def validation_only(template: str) -> bool:
    """Whether ``template`` is a needle template kept for the validation needles (a RULER-style task never is)."""
    t = TEMPLATES.get(template)
    return bool(t is not None and t.validation_only)


def measure_signal(p: SignalInputs, pool: Executor) -> dict[str, Any]:
    """Which needle templates the model solves inside its window with plain RoPE (λ = 1, m = 1): accuracy, NLL,
    length and documents per template, the threshold, and the templates solved. :func:`signal_templates` decides."""

    candidates = list(TEMPLATES)  # all of them (a few in-window documents each), to say which ones work
    candidates += [t for t in p.templates or [] if t not in TEMPLATES]  # and a RULER-style task named as the template
    sets = {t: signal_needles(p, t) for t in candidates}
    for t, ns in sets.items():
        pool.set_needles(f"signal:{t}", ns)
    plain = Rescale(np.ones(p.geometry.n_freq), 1.0)
    tasks = [ScoreTask(SignalTemplate(t), plain, needles=f"signal:{t}") for t in candidates]
    measured: dict[str, Any] = {}
    for o in pool.map_unordered(tasks):
        t = o.ref.template
        measured[t] = {
            "accuracy": None if o.accuracy is None else float(o.accuracy),
            "nll": None if o.failed else o.nll,
            "length": sets[t].length,
            "samples": len(sets[t].samples),
            "error": o.error,
        }
    passed = [t for t in candidates if (measured[t]["accuracy"] or 0.0) >= SIGNAL_THRESHOLD]
    solved = [t for t in passed if not validation_only(t)]
    validation_solved = [t for t in passed if validation_only(t)]
    return {
        "threshold": SIGNAL_THRESHOLD,
        "templates": {t: measured[t] for t in candidates},
        "solved": solved,
        "validation_solved": validation_solved,
    }


def validation_spec(p: Plan, template: str, signal: dict[str, Any] | None) -> dict[str, Any] | None:
    """The validation needles of a new run (None when ``--validation-samples 0``): the search's templates in another
    framing where there is one the model solves in its window (the pass key's: ``passkey-find``), on generated
    sentences (:data:`VALIDATION_HAYSTACK`), depths spread over the document, another seed."""
    if p.validation_samples <= 0:
        return None
    solved = None if signal is None else set(signal.get("validation_solved", []))
    names: list[str] = []
    for t in signal_template_names(template):
        v = VALIDATION_FRAMING.get(t, t)
        if solved is not None and v != t and v not in solved:
            v = t  # the other framing is not solved in the window: the search's own, on the other haystack
        if v not in names:
            names.append(v)
    return {
        "samples": p.validation_samples,
        "seed": p.config.seed + VALIDATION_SEED_OFFSET,
        "template": "+".join(names),
        "haystack": VALIDATION_HAYSTACK,
        "depths": "spread",
    }


def signal_templates(p: SignalInputs, signal: dict[str, Any]) -> str:
    """The templates to search with (``"a+b"``) after :func:`measure_signal`: ``auto`` keeps every solved template; a
    named template the model does not solve, or no solved template at all, is refused (InputError) — before anything
    is written."""
    measured, solved = signal["templates"], signal["solved"]

    def shown(t: str) -> str:
        m = measured[t]
        beyond = f" (the {p.geometry.original_length}-token window cannot hold it)" if m["length"] > p.geometry.original_length else ""
        return f"{m['accuracy'] or 0:.2f} at {m['length']} tokens{beyond}"

    if p.templates is not None:
        for t in p.templates:
            if validation_only(t):
                raise InputError(f"the {t!r} needle template is kept for the validation needles: search with another --template")
            if t not in solved:
                others = ", ".join(s for s in solved if s in measured and not is_task_template(s)) or "none"
                raise InputError(
                    f"the model does not solve the {t!r} {'RULER-style' if is_task_template(t) else 'needle'} task inside its window (accuracy {shown(t)} with plain "
                    f"RoPE, below {SIGNAL_THRESHOLD}), so its perplexity cannot guide a search beyond it: use --template "
                    f"auto (solved: {others}) or pass --no-signal-check to search with it anyway"
                )
        return "+".join(p.templates)
    if not solved:
        raise InputError(
            "the model solves none of the needle templates inside its window with plain RoPE ("
            + "; ".join(f"{t} {shown(t)}" for t in measured)
            + f"; threshold {SIGNAL_THRESHOLD}): no needle perplexity can guide a search; pass --no-signal-check and "
            "--template NAME to search anyway"
        )
    return "+".join(solved)


__all__ = [
    "DEFAULTS",
    "HELDOUT_SEED_OFFSET",
    "SIGNAL_THRESHOLD",
    "VALIDATION_FRAMING",
    "VALIDATION_HAYSTACK",
    "EvolveOptions",
    "Plan",
    "SignalInputs",
    "SignalTemplate",
    "check_options",
    "default_out",
    "load_model_info",
    "measure_signal",
    "model_short_name",
    "normalize_model",
    "plan",
    "signal_needles",
    "signal_templates",
    "validation_only",
    "validation_spec",
]
