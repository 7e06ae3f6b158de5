"""Starting a run: a new run directory created whole from a :class:`~longsearch.plan.Plan`, or an existing one
reopened for ``--resume`` — every option and file checked before anything is written.

* :func:`create_run` writes config, space and the search needles under a temporary name and renames the directory
  into place (:meth:`RunStore.creating`): it appears whole or not at all.
* :func:`open_resume` reopens a run: options that contradict it refused, the model's fingerprint, the space, the
  needles and the last checkpoint checked; nothing is written until :meth:`PreparedRun.begin_writing` (once the
  workers are up), so a refused or failed start leaves the run as it was.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, LongsearchError, NeedleError, RunError
from .mix import NeedleMix, build_mix, default_weights, load_needle_mix
from .optimizers import Optimizer, make_optimizer
from .plan import EvolveOptions, Plan, check_options, load_model_info
from .rope import RopeGeometry
from .ruler.signal import build_signal_set
from .runs import SPACE, JournalContents, RunConfig, RunStore, check_resume_options
from .space import SearchSpace

log = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """A run ready for the search loop: its directory, config, space, optimizer (at its last checkpoint), the search
    needles and the journal read so far."""

    store: RunStore
    config: RunConfig
    geometry: RopeGeometry
    space: SearchSpace
    optimizer: Optimizer
    needles: NeedleMix  # the search's: one set per served length (a run written before: the target's set alone)
    tokenizer: Any
    journal: JournalContents
    checkpoint: dict[str, Any] | None
    resumed: bool
    validation: NeedleMix | None = None  # the validation mix (None: a run without validation)
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


def fingerprint_dir(path: Path) -> str:
    """A digest of every file under ``path`` (names and bytes): the needles a run was started with."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def search_needles(tokenizer: Any, config: RunConfig, seed: int, template: str, depths: str | None) -> NeedleMix:
    """The needle mix of the run's served lengths (a run written before them: the target alone, as a set of one),
    sample count, template(s) and depths, with ``seed``."""
    if not config.serve_lengths or list(config.serve_lengths) == [config.target_length]:
        return NeedleMix.single(
            build_signal_set(tokenizer, config.target_length, config.samples, template=template, seed=seed, depths=depths)
        )
    return build_mix(tokenizer, config.serve_lengths, config.serve_weights, config.samples, template, seed, depths)


def validation_needles(tokenizer: Any, config: RunConfig) -> NeedleMix | None:
    """The validation mix the config describes (same served lengths and weights as the search), or None."""
    v = config.validation
    if not v:
        return None
    lengths = config.serve_lengths or [config.target_length]
    return build_mix(tokenizer, lengths, config.serve_weights, int(v["samples"]), v["template"], int(v["seed"]), v["depths"], v["haystack"])


def fit_served_lengths(tokenizer: Any, config: RunConfig, template: str, depths: str | None) -> None:
    """Default served lengths: drop those below the target too short to hold one document of the template(s) (or
    of the validation's) with this tokenizer — a long template with a tokenizer of many tokens per word at a small
    window — and spread the default weights over the rest (said in a warning)."""
    templates = [template] + ([config.validation["template"]] if config.validation else [])
    lengths = config.serve_lengths or [config.target_length]

    def holds(n: int) -> bool:
        try:
            for t in templates:
                build_signal_set(tokenizer, n, 1, template=t, seed=config.seed, depths=depths)
        except NeedleError as e:
            if "cannot hold" not in str(e):
                raise
            return False
        return True

    kept = [n for n in lengths if n == config.target_length or holds(n)]
    if kept != list(lengths):
        dropped = ", ".join(str(n) for n in lengths if n not in kept)
        log.warning("served lengths %s cannot hold the %s needle documents: scoring at %s", dropped, template, ", ".join(map(str, kept)))
        config.serve_lengths = kept
        config.serve_weights = default_weights(kept)


def disk_full(e: OSError, then: str) -> RunError:
    """The one-line message for a full disk: which file, and what to do ``then``."""
    where = Path(e.filename).name if e.filename else "a file of the run"
    return RunError(f"the disk is full (writing {where}): free some space, {then}")


def create_run(p: Plan, template: str, signal: dict[str, Any] | None) -> PreparedRun:
    """Write a new run directory: config, space, the search needles (template(s) ``template``) and the validation
    needles."""
    from .models import model_fingerprint
    from .plan import validation_spec

    config = p.config
    config.template = template
    config.signal = signal
    config.model_fingerprint = model_fingerprint(config.model)
    config.validation = validation_spec(p, template, signal)
    if p.serve_lengths_auto:
        fit_served_lengths(p.tokenizer, config, template, p.depths)
    needles = search_needles(p.tokenizer, config, config.seed, template, p.depths)
    validation = validation_needles(p.tokenizer, config)
    try:
        with RunStore.creating(p.out, config, force=p.force) as store:  # renamed into place whole, or not at all
            store.write_json(SPACE, p.space.to_dict())
            needles.save(store.needles_dir)
            config.needles_fingerprint = fingerprint_dir(store.needles_dir)
            if validation is not None and config.validation is not None:
                validation.save(store.validation_needles_dir)
                config.validation["fingerprint"] = fingerprint_dir(store.validation_needles_dir)
            store.write_config(config)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise disk_full(e, f"then start the run again (nothing of {p.out} was kept)") from None
    run = PreparedRun(store, config, p.geometry, p.space, p.optimizer, needles, p.tokenizer, JournalContents([]), None, False, validation)
    run.writing = True
    return run


def check_same_model(config: RunConfig, path: Path, accept: bool) -> None:
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


def _resume_template(opts: EvolveOptions, config: RunConfig, as_given: dict[str, str]) -> str | None:
    """``--template`` as the run's config spells it: ``auto`` is what the run's signal check chose."""
    template = opts.template
    if template is not None and template.strip().lower() == "auto":
        solved = (config.signal or {}).get("solved")
        if solved:
            template = "+".join(solved)
            as_given["template"] = f"auto (the templates its signal check found solved: {template})"
        else:  # left as "auto", which matches no template
            as_given["template"] = "auto (which chooses by the signal check, not made for this run)"
    return template


def open_resume(opts: EvolveOptions) -> PreparedRun:
    """Reopen ``opts.resume``: every option and file checked, the optimizer at its last checkpoint; nothing written."""
    assert opts.resume is not None
    path = Path(opts.resume)
    check_options(opts)
    if opts.force:
        raise InputError(
            f"--force starts a run over and --resume {path} continues it: drop --force to continue, or drop --resume "
            "(and keep --force) to start over"
        )
    store = RunStore.open(path)
    config = store.read_config()
    as_given: dict[str, str] = {}
    given = {
        "model": opts.model,
        "target_length": opts.target,
        "space": opts.space,
        "budget": opts.budget,
        "optimizer": opts.optimizer,
        "samples": opts.samples,
        "seed": opts.seed,
        "racing": opts.racing,
        "template": _resume_template(opts, config, as_given),
        "depths": opts.depths,
        "signal_check": opts.signal_check,
    }
    check_resume_options(config, given, path, as_given)
    fixed = {
        "--serve-lengths": opts.serve_lengths,
        "--serve-weights": opts.serve_weights,
        "--validation-samples": opts.validation_samples,
        "--patience": opts.patience,
    }
    for flag, value in fixed.items():
        if value is not None:
            raise RunError(f"{flag} is fixed when a run starts: resume {path} without it, or start a new run with another --out")
    if opts.out is not None and Path(opts.out).resolve() != path.resolve():
        raise InputError(f"--out {opts.out} contradicts --resume {path}: a resumed run continues in its own directory")
    store.lock()  # every option checked; from here on only reads until the first write (PreparedRun.begin_writing)
    try:
        return _reopen(store, config, opts)
    except BaseException:
        store.abandon()  # nothing written: not even a lock file this process made
        raise


def _reopen(store: RunStore, config: RunConfig, opts: EvolveOptions) -> PreparedRun:
    path = store.path
    geometry, tokenizer = load_model_info(config.model)
    check_same_model(config, path, opts.accept_model_change)
    try:
        space = SearchSpace.from_dict(store.read_json(SPACE), geometry, config.target_length)
    except InputError as e:
        raise RunError(f"{store.file(SPACE)} does not fit the model {config.model_name}: {e}") from None
    fp = fingerprint_dir(store.needles_dir) if store.needles_dir.is_dir() else None
    if fp is None or (config.needles_fingerprint and fp != config.needles_fingerprint):
        raise RunError(f"{store.needles_dir} is missing or was changed since the run started: the run cannot be resumed; start a new run")
    try:
        needles = load_needle_mix(store.needles_dir, tokenizer=tokenizer, length=config.target_length)
    except NeedleError as e:
        raise RunError(f"{store.needles_dir}: {e}") from None
    validation = None
    if config.validation:
        vdir = store.validation_needles_dir
        vfp = fingerprint_dir(vdir) if vdir.is_dir() else None
        if vfp is None or vfp != config.validation.get("fingerprint"):
            raise RunError(f"{vdir} is missing or was changed since the run started: the run cannot be resumed; start a new run")
        try:
            validation = load_needle_mix(vdir, tokenizer=tokenizer, length=config.target_length)
        except NeedleError as e:
            raise RunError(f"{vdir}: {e}") from None
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
    if opts.attn_implementation is not None:
        config.attn_implementation = opts.attn_implementation
    if opts.worker_startup_timeout is not None:
        config.worker_startup_timeout = opts.worker_startup_timeout
    return PreparedRun(
        store, config, geometry, space, optimizer, needles, tokenizer, journal, checkpoint, True, validation, journal.truncated_bytes
    )


__all__ = [
    "PreparedRun",
    "check_same_model",
    "create_run",
    "disk_full",
    "fingerprint_dir",
    "fit_served_lengths",
    "open_resume",
    "search_needles",
    "validation_needles",
]
