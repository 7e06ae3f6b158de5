"""The run directory of a search: config, resolved space, needles, journal, checkpoints, results.

``outputs/RUN/`` holds::

    config.json            what was asked (model, target, space, budget, optimizer, samples, seed, ...)
    space.json             the resolved search space
    needles/               the search needle set (built once, reused on resume)
    journal.jsonl          append-only: one JSON object per evaluated candidate or baseline
    checkpoints/gen-NNNN.json   optimizer state (population, RNG, seen keys) after generation NNNN
    baselines.json         PI / NTK / YaRN / none scored at the target on the search needles
    best.json              the best factors so far (a RopeFactors file)
    final.json             the held-out comparison written when the search ends
    progress.png, factors.png

A new run directory is built under a temporary name next to its destination (config, space, needles)
and renamed into place whole (:meth:`RunStore.creating`): a creation killed half way leaves no run, only a
temporary the next new run of that destination removes (and says so). Every file but the journal is written
atomically; each journal line is appended whole with one ``write`` and fsync'ed, so a run killed at any
moment leaves at most one truncated last line, which :meth:`RunStore.repair_journal` drops (the candidate
is then evaluated again).

>>> store = RunStore.create(tmp / "run", RunConfig(model=None, model_name="testbed", target_length=2048,
...     space="longrope2", budget="quick", optimizer="ga", samples=4, seed=0))          # doctest: +SKIP
>>> store.append(JournalRecord(kind="candidate", id=0, generation=0, origin="seed:pi", lam=[8.0] * 16,
...     m=1.2, score=3.1))                                                               # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import __version__, faults
from .atomic import atomic_dir_swept, atomic_write_json, stale_temporaries, sweep_stale
from .errors import RunError

log = logging.getLogger(__name__)

CONFIG = "config.json"
SPACE = "space.json"
JOURNAL = "journal.jsonl"
CHECKPOINTS = "checkpoints"
NEEDLES = "needles"
HELDOUT_NEEDLES = "needles-heldout"
VALIDATION_NEEDLES = "needles-validation"
BASELINES = "baselines.json"
BEST = "best.json"
FINAL = "final.json"
LOCK = ".lock"
SCHEMA_VERSION = 1

_CHECKPOINT_RE = re.compile(r"^gen-(\d{4,})\.json$")

#: Config fields that define a run: a resume must not change them (nor the signal check, see
#: :func:`check_resume_options`).
IDENTITY_FIELDS = ("model", "target_length", "space", "budget", "optimizer", "samples", "seed", "racing", "template", "depths")


# ---------------------------------------------------------------- records


@dataclass
class RunConfig:
    """What a run was asked to do. ``model`` None means the embedded testbed."""

    model: str | None
    model_name: str
    target_length: int
    space: str
    budget: str
    optimizer: str
    samples: int
    seed: int
    workers: int | None = None
    address: str | None = None
    heldout_seed: int | None = None
    needles_fingerprint: str | None = None
    racing: bool = False  # runs written before racing existed scored every document
    template: str | None = None  # the search needles' template(s), "a+b"
    depths: str | None = None
    signal: dict[str, Any] | None = None  # the in-window check: accuracy per template with plain RoPE
    model_fingerprint: dict[str, Any] | None = None
    attn_implementation: str | None = None  # the workers' (None: auto; runs written before it: auto)
    worker_startup_timeout: float | None = None  # seconds (None: the default, 600)
    # Served lengths (issue 21): the search scores a mix of needle sets at these lengths with these weights, long
    # factors at every one. None: the target alone (runs written before served lengths existed score as they did).
    serve_lengths: list[int] | None = None
    serve_weights: list[float] | None = None
    # The validation mix (another haystack and framing; the optimizer never sees it): samples, seed, template,
    # haystack, depths. None: no validation (runs written before it existed; or --validation-samples 0).
    validation: dict[str, Any] | None = None
    patience: int | None = None  # stop after this many generations without a better validation score (None: never)
    longsearch_version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d = {"kind": "longsearch.run", "schema_version": SCHEMA_VERSION, **d}
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = CONFIG) -> RunConfig:
        if not isinstance(d, dict) or d.get("kind") != "longsearch.run":
            raise RunError(f"{source} is not a longsearch run config: resume a directory made by `longsearch evolve`")
        names = {f.name for f in fields(cls)}
        missing = [n for n in ("model", "target_length", "space", "budget", "optimizer", "samples", "seed") if n not in d]
        if missing:
            raise RunError(f"{source} lacks {', '.join(missing)}: the run config is damaged; start a new run")
        try:
            cfg = cls(**{k: v for k, v in d.items() if k in names})
            cfg.target_length, cfg.samples, cfg.seed = int(cfg.target_length), int(cfg.samples), int(cfg.seed)
            cfg.budget = str(cfg.budget)
        except (TypeError, ValueError) as e:
            raise RunError(f"{source} holds a malformed value ({e}): the run config is damaged; start a new run") from None
        return cfg


@dataclass
class JournalRecord:
    """One evaluated candidate (``kind="candidate"``, with its optimizer id), baseline (``kind="baseline"``), or a
    candidate scored on the validation mix (``kind="validation"``, its id; ``generation``: the one it was the best of)."""

    kind: str
    id: int | None = None
    name: str | None = None
    generation: int = 0
    origin: str = ""
    lam: list[float] = field(default_factory=list)
    m: float = 1.0
    d_rcd: int | None = None
    score: float = math.inf
    per_sample: list[float] = field(default_factory=list)
    accuracy: float | None = None
    per_sample_correct: list[bool] = field(default_factory=list)
    worker: str | None = None
    seconds: float | None = None
    attempts: int = 1
    error: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # the candidate's structure (d_rcd, head, β)
    censored: bool = False  # the race stopped it: score is a lower bound
    failed: bool = False  # no score (a worker lost, an exception, a non-finite loss): a state, retried on resume
    docs: int | None = None  # needle documents run
    token_forwards: int | None = None  # tokens run (documents run × their lengths)

    #: Fields that differ between two runs of the same search (compare journals without them).
    TIMING_FIELDS = ("worker", "seconds", "attempts")

    def to_json(self) -> str:
        d = asdict(self)
        d["score"] = _encode_float(self.score)
        d["per_sample"] = [_encode_float(x) for x in self.per_sample]
        return json.dumps(d, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JournalRecord:
        names = {f.name for f in fields(cls)}
        rec = cls(**{k: v for k, v in d.items() if k in names})
        rec.score = _decode_float(rec.score)
        rec.per_sample = [_decode_float(x) for x in rec.per_sample]
        return rec

    def comparable(self) -> dict[str, Any]:
        """The record without timing / placement fields: equal for the same candidate in two runs."""
        d = asdict(self)
        for k in self.TIMING_FIELDS:
            d.pop(k, None)
        return d


def _encode_float(x: float | None) -> float | str | None:
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _decode_float(x: Any) -> float:
    if isinstance(x, str):
        return float(x)
    return math.inf if x is None else float(x)


@dataclass
class JournalContents:
    """What :meth:`RunStore.read_journal` found: the records and whether the last line was cut off."""

    records: list[JournalRecord]
    truncated_bytes: int = 0
    valid_length: int = 0

    def candidates(self) -> dict[int, JournalRecord]:
        """The last record of each candidate (a failed one may be followed by its retry)."""
        return {r.id: r for r in self.records if r.kind == "candidate" and r.id is not None}

    def baselines(self) -> dict[str, JournalRecord]:
        return {r.name: r for r in self.records if r.kind == "baseline" and r.name}

    def validations(self) -> dict[int, JournalRecord]:
        """The last validation record of each candidate scored on the validation mix."""
        return {r.id: r for r in self.records if r.kind == "validation" and r.id is not None}

    def failures(self) -> dict[tuple[str, Any], int]:
        """How many times each candidate (``("candidate", id)``) or baseline (``("baseline", name)``) failed."""
        out: dict[tuple[str, Any], int] = {}
        for r in self.records:
            if r.failed:
                k = (r.kind, r.name if r.kind == "baseline" else r.id)
                out[k] = out.get(k, 0) + 1
        return out


# ---------------------------------------------------------------- the store


class RunStore:
    """A run directory. Create one with :meth:`create`, reopen one with :meth:`open`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._journal_fd: int | None = None
        self._lock_fd: int | None = None
        self._made_lock_file = False

    # ------------------------------------------------------------ paths

    @property
    def journal_path(self) -> Path:
        return self.path / JOURNAL

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def needles_dir(self) -> Path:
        return self.path / NEEDLES

    @property
    def heldout_needles_dir(self) -> Path:
        return self.path / HELDOUT_NEEDLES

    @property
    def validation_needles_dir(self) -> Path:
        return self.path / VALIDATION_NEEDLES

    def file(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------ creating and opening

    @classmethod
    @contextlib.contextmanager
    def creating(cls, path: str | os.PathLike, config: RunConfig, force: bool = False) -> Iterator[RunStore]:
        """Build a new run directory: yields a locked store at a temporary directory next to ``path`` (holding
        config.json) to write the run's first files into; on a normal exit it is renamed onto ``path`` whole (the
        store then points there, still locked). On an error nothing is left — no temporary, no parent directory
        made for it; a process killed inside leaves only the temporary, which the next creation of ``path``
        removes with a warning (:func:`~longsearch.atomic.sweep_stale`).

        An existing non-empty directory is refused unless ``force``; even then only a longsearch run directory
        (one with config.json) is replaced, never an arbitrary folder, and not one another process holds.
        """
        path = Path(path)
        sweep_stale(path)  # what a killed creation of this destination left (before the checks: it may restore one)
        if path.exists() and not path.is_dir():
            raise RunError(f"{path} exists and is not a directory: choose another --out")
        old: RunStore | None = None
        try:
            if path.is_dir() and any(path.iterdir()):
                if not force:
                    raise RunError(
                        f"{path} already holds a run: continue it with `longsearch evolve --resume {path}`, "
                        "choose another --out, or pass --force to start over"
                    )
                if not (path / CONFIG).exists():
                    raise RunError(f"{path} is not empty and is not a longsearch run directory: refusing to clear it; choose another --out")
                old = cls(path)
                old.lock()  # refuse to replace a run another process is using; held until the new one replaces it
            made = _make_parents(path.parent)
            try:
                with atomic_dir_swept(path) as tmp:  # swept above, its parent made just now
                    store = cls(tmp)
                    try:
                        store.lock()
                        atomic_write_json(tmp / CONFIG, config.to_dict())
                        yield store
                    except BaseException:
                        store.close()
                        raise
                store.path = path
            except BaseException:
                for d in made:  # deepest first: only the directories made for this run, if still empty
                    with contextlib.suppress(OSError):
                        d.rmdir()
                raise
        finally:
            if old is not None:
                old.close()

    @classmethod
    def create(cls, path: str | os.PathLike, config: RunConfig, force: bool = False) -> RunStore:
        """A new run directory holding config.json alone (see :meth:`creating`), locked by the store returned."""
        with cls.creating(path, config, force) as store:
            pass
        return store

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunStore:
        """Open an existing run directory (for resume or inspection); refuses a missing or foreign one."""
        path = Path(path)
        if not path.exists():
            if _interrupted_creation(path):
                raise RunError(
                    f"{path} was never completely created (its `longsearch evolve` was stopped while making it): start "
                    "the run again without --resume (the leftover is removed then)"
                )
            raise RunError(f"no run directory at {path}: pass the --out directory of an earlier `longsearch evolve`")
        if not path.is_dir():
            raise RunError(f"{path} is a file, not a run directory: pass the --out directory of an earlier `longsearch evolve`")
        if not (path / CONFIG).exists():
            raise RunError(f"{path} has no {CONFIG}: it is not a longsearch run directory")
        return cls(path)

    def lock(self) -> None:
        """Hold an exclusive lock on the run for this process (released on close or process death).

        Locking writes nothing but the (empty) lock file where it is missing; :meth:`abandon` removes it again."""
        import fcntl

        if self._lock_fd is not None:
            return
        p = self.path / LOCK
        while True:
            try:
                fd, made = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                try:
                    fd, made = os.open(p, os.O_RDWR), False
                except FileNotFoundError:  # removed in between (an abandoning process): make it
                    continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunError(f"{self.path} is in use by another longsearch process: wait for it to finish or stop it") from None
            try:  # the file locked is still the lock file (not one :meth:`abandon` removed after this opened it)
                held, now = os.fstat(fd), os.stat(p)
                mine = (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)
            except FileNotFoundError:
                mine = False
            if mine:
                break
            os.close(fd)
        self._lock_fd = fd
        self._made_lock_file = made

    def sweep_temporaries(self) -> list[Path]:
        """Remove the temporary files of atomic writes left by a process killed mid-write (only a lock holder
        writes here; call it once the run is going to be written, never on a command that may still be refused)."""
        if self._lock_fd is None:
            raise RuntimeError("sweep_temporaries() without holding the run's lock")
        removed = []
        for p in sorted(self.path.rglob(".*.tmp")):
            if p.is_file():
                log.info("removing %s, left by an interrupted write", p)
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def abandon(self) -> None:
        """Close a store that wrote nothing (a refused resume): also remove the lock file if :meth:`lock` made it,
        so that the directory is exactly as it was."""
        if self._lock_fd is not None and self._made_lock_file:
            (self.path / LOCK).unlink(missing_ok=True)  # while still holding it: who locks it later sees it gone
        self.close()

    def close(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        self.unlock()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ small JSON files

    def read_json(self, name: str) -> Any:
        """Read a JSON file of the run; a damaged one is refused with its name."""
        p = self.path / name
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            raise RunError(f"{p} is missing: the run directory is incomplete; start a new run") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{p} is corrupted ({getattr(e, 'msg', e)}): restore it or start a new run") from None

    def write_json(self, name: str, obj: Any) -> Path:
        p = self.path / name
        atomic_write_json(p, obj)
        return p

    def read_config(self) -> RunConfig:
        return RunConfig.from_dict(self.read_json(CONFIG), str(self.path / CONFIG))

    def write_config(self, config: RunConfig) -> None:
        atomic_write_json(self.path / CONFIG, config.to_dict())

    # ------------------------------------------------------------ the journal

    def read_journal(self) -> JournalContents:
        """All whole records. A cut-off last line (no newline) is reported, not returned; a damaged
        line elsewhere is refused with its line number."""
        p = self.journal_path
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            return JournalContents([], 0, 0)
        end = data.rfind(b"\n") + 1  # everything after the last newline is a partial write
        records: list[JournalRecord] = []
        for lineno, raw in enumerate(data[:end].split(b"\n")[:-1], 1):
            if not raw.strip():
                continue
            try:
                d = json.loads(raw)
                if not isinstance(d, dict) or d.get("kind") not in ("candidate", "baseline", "validation"):
                    raise ValueError("not a journal record")
                records.append(JournalRecord.from_dict(d))
            except (ValueError, TypeError, UnicodeDecodeError) as e:
                raise RunError(
                    f"{p} line {lineno} is corrupted ({str(e).splitlines()[0][:80]}): the journal cannot be trusted; start a new run"
                ) from None
        return JournalContents(records, len(data) - end, end)

    def repair_journal(self, contents: JournalContents) -> int:
        """Drop a cut-off last line (its candidate will be evaluated again). Returns the bytes dropped."""
        if contents.truncated_bytes:
            with open(self.journal_path, "r+b") as f:
                f.truncate(contents.valid_length)
                f.flush()
                os.fsync(f.fileno())
            log.warning("dropped a truncated last line (%d bytes) from %s", contents.truncated_bytes, self.journal_path)
        return contents.truncated_bytes

    def append(self, record: JournalRecord) -> None:
        """Append one record as one line with a single write, then fsync."""
        if self._journal_fd is None:
            self._journal_fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        data = (record.to_json() + "\n").encode("utf-8")
        faults.point(JOURNAL, "before")
        if faults.point(JOURNAL, "partial"):  # fault injection: half a line reaches the disk, then the fault
            os.write(self._journal_fd, data[: len(data) // 2])
            os.fsync(self._journal_fd)
            faults.trigger(faults.partial_action(JOURNAL), JOURNAL)
        view = memoryview(data)
        while view:
            n = os.write(self._journal_fd, view)
            view = view[n:]
        os.fsync(self._journal_fd)
        faults.point(JOURNAL, "after")

    # ------------------------------------------------------------ checkpoints

    def checkpoint_path(self, generation: int) -> Path:
        return self.checkpoint_dir / f"gen-{generation:04d}.json"

    def save_checkpoint(self, generation: int, payload: dict[str, Any]) -> Path:
        """Write the state after ``generation`` atomically (earlier checkpoints are kept)."""
        p = self.checkpoint_path(generation)
        atomic_write_json(p, {"kind": "longsearch.checkpoint", "schema_version": SCHEMA_VERSION, "generation": generation, **payload})
        return p

    def checkpoints(self) -> list[tuple[int, Path]]:
        if not self.checkpoint_dir.is_dir():
            return []
        found = []
        for p in self.checkpoint_dir.iterdir():
            m = _CHECKPOINT_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def load_last_checkpoint(self) -> dict[str, Any] | None:
        """The newest checkpoint, or None before the first generation ended. A damaged one is refused by name."""
        found = self.checkpoints()
        if not found:
            return None
        generation, p = found[-1]
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(
                f"checkpoint {p} is corrupted ({getattr(e, 'msg', e)}): delete it to resume from the generation before, "
                "or start over with --force"
            ) from None
        except OSError as e:
            raise RunError(f"cannot read checkpoint {p}: {e.strerror}") from None
        if not isinstance(d, dict) or d.get("kind") != "longsearch.checkpoint" or d.get("generation") != generation or "optimizer" not in d:
            raise RunError(
                f"checkpoint {p} is corrupted (not a longsearch checkpoint of generation {generation}): delete it to "
                "resume from the generation before, or start over with --force"
            )
        return d


def iter_journal(path: str | os.PathLike) -> Iterator[JournalRecord]:
    """The whole records of a run's journal (a run directory or the journal file itself)."""
    p = Path(path)
    store = RunStore(p if p.is_dir() else p.parent)
    yield from store.read_journal().records


def depths_key(depths: str | None) -> str:
    """A needle-depths setting in one spelling, as the needle builder reads it (:func:`needles.resolve_depths`):
    ``None``/``default`` → ``start``; a list → its numbers. InputError for depths it cannot read."""
    import numpy as np

    from .needles import resolve_depths

    text = None if depths is None or not str(depths).strip() else str(depths)
    _, kind = resolve_depths(text, 1, np.random.default_rng(0))
    return ",".join(f"{v:g}" for v in kind["values"]) if kind["kind"] == "list" else str(kind["kind"])


def template_key(template: str | None) -> str | None:
    """Needle template(s) in one spelling: ``"Passkey, multi-needle"`` → ``"passkey+multi-needle"``
    (:func:`ruler.signal.signal_template_names`, which also takes a RULER-style task: InputError for an unknown name)."""
    from .ruler.signal import signal_template_names

    return None if template is None else "+".join(signal_template_names(str(template)))


def check_resume_options(config: RunConfig, given: dict[str, Any], path: str | os.PathLike, as_given: dict[str, str] | None = None) -> None:
    """Refuse options given with ``--resume`` that contradict the run's config (one line).

    ``given`` holds :data:`IDENTITY_FIELDS` (None: not given) and ``signal_check`` (a run made without the
    signal check has no ``signal`` in its config). ``as_given``: how the user wrote a value that is compared
    resolved (``--template auto``), for the refusal to say what was given."""
    for key in IDENTITY_FIELDS:
        value = given.get(key)
        if value is None:
            continue
        have = getattr(config, key)
        if key == "model":
            same = _same_model(str(value), have)
        elif key == "depths":
            same = depths_key(str(value)) == depths_key(have)
            have = have or "start"
        elif key == "template":  # "auto" left unresolved (a run without the signal check) is no template's
            same = str(value).strip().lower() != "auto" and template_key(str(value)) == template_key(have)
        else:
            same = str(value) == str(have)
        if not same:
            shown = "the testbed" if key == "model" and have is None else have
            raise RunError(
                f"{path} was made with {key.replace('_', ' ')} {shown}, not {(as_given or {}).get(key, value)}: resume without that option, "
                "or start a new run with another --out"
            )
    check = given.get("signal_check")
    if check is not None and bool(check) != (config.signal is not None):
        made = "--signal-check" if config.signal is not None else "--no-signal-check"
        raise RunError(
            f"{path} was made with {made}, not {'--signal-check' if check else '--no-signal-check'}: resume without "
            "that option, or start a new run with another --out"
        )


def _interrupted_creation(path: Path) -> bool:
    """Whether a creation of ``path`` was stopped half way: the temporary directory of a process of this machine
    that no longer runs is next to it (:func:`~longsearch.atomic.stale_temporaries`)."""
    try:
        return any(e.is_dir() for e in stale_temporaries(path))
    except OSError:
        return False


def _make_parents(path: Path) -> list[Path]:
    """Make ``path`` and its missing parents; returns those made, deepest first. RunError when it cannot."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    try:
        for d in reversed(missing):
            d.mkdir()
    except OSError as e:
        for d in missing:
            with contextlib.suppress(OSError):
                d.rmdir()
        if e.errno == errno.ENOSPC:  # the caller says how to go on
            raise
        raise RunError(f"cannot create the run directory under {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunError(f"cannot create the run directory under {path}: permission denied; choose another --out")
    return missing


def _same_model(given: str, have: str | None) -> bool:
    if have is None:
        return given in ("", "testbed")
    if given == have:
        return True
    try:
        return Path(given).expanduser().resolve() == Path(have).expanduser().resolve()
    except OSError:
        return False


__all__ = [
    "IDENTITY_FIELDS",
    "JournalContents",
    "JournalRecord",
    "RunConfig",
    "RunStore",
    "check_resume_options",
    "depths_key",
    "iter_journal",
    "template_key",
]
