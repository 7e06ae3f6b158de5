"""Who scores candidates: the task and outcome types, the scorer a worker runs, and the executor protocol.

The search hands an executor :class:`ScoreTask` s and gets :class:`ScoreOutcome` s back as they finish::

    with InProcessPool(model=None, target_length=2048) as pool:      # or workers.WorkerPool (Ray actors)
        pool.set_needles("search", needle_set)                      # once; tasks name the set
        for outcome in pool.map_unordered([ScoreTask(candidate, candidate.rescale, bar=0.8)]):
            outcome.ref, outcome.nll, outcome.failed

* A task's ``ref`` is what the caller scores — a :class:`~longsearch.optimizers.Candidate`, a baseline, a
  signal-check template, a held-out entry: a typed object the executor hands back on the outcome and never
  sends to a worker. The worker gets λ and m (a :class:`~longsearch.rope.Rescale`), the name of a needle set
  it holds, and the race bar.
* :class:`Scorer` is the body of a worker: one model replica, the needle sets, and
  :meth:`Scorer.score` → :class:`ScoreOutcome`. The Ray pool (:class:`longsearch.workers.WorkerPool`) runs it
  in actors; :class:`InProcessPool` runs it in this process (tests of the search logic, a single-device run).
* :class:`Executor` is what the search needs of either: ``start``, ``set_needles``, ``map_unordered``,
  ``close``, ``workers``, ``device``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from .errors import LongsearchError
from .mix import NeedleMix
from .needles import NeedleSet
from .rope import Rescale

log = logging.getLogger(__name__)


def clean_nll(value: Any) -> float:
    """A score as the search sees it: a finite float, or +inf for anything else (nan, ±inf, not a number)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.inf
    return x if math.isfinite(x) else math.inf


@dataclass(frozen=True)
class ScoreTask:
    """One evaluation: ``rescale`` (λ at every position, m) on the needle set named ``needles``.

    ``ref``: what is scored, handed back on the outcome (never sent to a worker). ``bar``: race against it —
    stop as soon as the mean cannot end below it (+inf: score every document). ``docs``: score only the documents
    ``start:stop`` of the set (a piece of a task the pool split over its workers; None: all of them).
    """

    ref: Any
    rescale: Rescale
    needles: str = "search"
    bar: float = math.inf
    docs: tuple[int, int] | None = None

    def for_worker(self) -> ScoreTask:
        """The task as a worker receives it: without the reference."""
        return replace(self, ref=None)


@dataclass
class ScoreOutcome:
    """What came back for a task: the answer NLL (+inf when it failed) and the details.

    ``nll`` is cleaned here, the one place (non-finite → +inf, a failure)."""

    nll: float
    per_sample: list[float] = field(default_factory=list)
    accuracy: float | None = None
    per_sample_correct: list[bool] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    n_scored: int | None = None  # documents run (fewer than the set's when the race stopped it)
    n_total: int | None = None  # documents in the set
    censored: bool = False  # stopped by the race: nll is a lower bound
    token_forwards: int | None = None  # tokens run (documents run × their lengths)
    per_length: list[dict[str, Any]] = field(default_factory=list)  # a needle mix's sets: length, weight, nll, accuracy, docs
    ref: Any = None  # the task's reference (set by the executor)
    worker: str = ""
    attempts: int = 1
    fault: str | None = None  # the worker's fault, not the candidate's (:func:`fault_of`): the pool replaces that worker
    logs: list[tuple[int, str, str]] = field(default_factory=list)  # a worker's log records (level, logger, message)

    def __post_init__(self) -> None:
        self.nll = clean_nll(self.nll)
        if math.isinf(self.nll):
            self.censored = False
            if self.error is None:
                self.error = "non-finite NLL"

    @property
    def failed(self) -> bool:
        """No score: a worker lost, an exception, a non-finite loss."""
        return math.isinf(self.nll)

    @property
    def cost(self) -> float:
        """Share of the needle set that was scored (1.0 for a full evaluation or an unknown count)."""
        if not self.n_total or self.n_scored is None:
            return 1.0
        return self.n_scored / self.n_total

    @classmethod
    def failure(cls, error: str, **fields_: Any) -> ScoreOutcome:
        return cls(math.inf, error=error, **fields_)


def error_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:300]


#: Words of an exception that says the device (or its driver, or the link between devices) is faulty, not the
#: candidate: after such an error a CUDA context is usually unusable for good (a "sticky" error).
DEVICE_ERROR_MARKERS = (
    "cuda error",
    "cuda driver",
    "device-side assert",
    "illegal memory access",
    "illegal instruction",
    "misaligned address",
    "unspecified launch failure",
    "uncorrectable ecc",
    "ecc error",
    "nccl",
    "cublas_status",
    "cudnn_status",
    "hip error",
)


def is_oom(e: BaseException) -> bool:
    """An out-of-memory error of torch (CUDA or another device)."""
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def fault_of(e: BaseException) -> str | None:
    """Whose failure an exception of :meth:`Scorer.score` is. None: the candidate's — longsearch's own refusals of
    its λ, m or documents (any :class:`~longsearch.errors.LongsearchError`, out of memory on a single document
    included) and out of memory (the scorer halves its batch first): a failed result, the worker goes on.
    ``"device"``: a device error (:data:`DEVICE_ERROR_MARKERS`: CUDA errors other than out of memory, a device-side
    assert, an illegal memory access, ECC, NCCL). ``"worker"``: any other exception, which nothing ties to the
    candidate (a bug, a needle set the worker lacks). Either of the last two retires the worker (the pool replaces
    it and runs the task elsewhere): a faulty worker must not take the next task at once and fail it too."""
    if isinstance(e, LongsearchError) or is_oom(e):
        return None
    text = f"{type(e).__name__} {e}".lower()
    if type(e).__name__ == "AcceleratorError" or any(m in text for m in DEVICE_ERROR_MARKERS):
        return "device"
    return "worker"


class _Collector(logging.Handler):
    """Keeps the warnings (and worse) a worker's loggers emit, for the driver (:attr:`ScoreOutcome.logs`)."""

    LIMIT = 50

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.LIMIT:
            self.records.append((record.levelno, record.name, record.getMessage()))

    def drain(self) -> list[tuple[int, str, str]]:
        out, self.records = self.records, []
        return out


#: the loggers whose warnings a worker sends to the driver
FORWARDED_LOGGERS = ("longsearch", "transformers")


def forward_logs(records: Iterable[tuple[int, str, str]], worker: str) -> None:
    """Log a worker's records in this process, through their own loggers, naming the worker."""
    for level, name, message in records:
        logging.getLogger(name).log(level, "%s [worker %s]", message, worker)


class Scorer:
    """Holds one model replica and the needle sets; scores one task at a time (the body of a worker).

    ``load=False``: the model is loaded by :meth:`load` (the pool tells a worker placed from one still loading).
    ``label``: the worker's name in the pool (fault injection aims at it). ``forward_logs``: keep the warnings this
    process logs and return them on the outcomes (a Ray worker; in-process they reach the logging at once).
    """

    def __init__(
        self,
        model: str | None,
        target_length: int,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        shard: bool = False,
        *,
        attn_implementation: str | None = None,
        load: bool = True,
        label: str = "",
        forward_logs: bool = False,
        fault_spec: str | None = None,
    ) -> None:
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.model, self.target_length = model, int(target_length)
        self._load_options: dict[str, Any] = dict(device=device, dtype=dtype, shard=shard, attn_implementation=attn_implementation)
        self.loaded: Any = None
        self.needles: dict[str, NeedleSet | NeedleMix] = {}
        self._pieces: dict[tuple[str, int, int], NeedleSet] = {}
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.label = label or self.name
        self._fault_spec, self._scored = fault_spec, 0
        self._logs: _Collector | None = None
        if forward_logs:
            self._logs = _Collector()
            for name in FORWARDED_LOGGERS:
                logging.getLogger(name).addHandler(self._logs)
        if load:
            self.load()

    @classmethod
    def around(cls, loaded: Any, target_length: int) -> Scorer:
        """A scorer around a model loaded already (eval's template check scores with the model it evaluates)."""
        scorer = cls(None, target_length, load=False)
        scorer.loaded = loaded
        return scorer

    def ready(self) -> str:
        """Answers once the worker is placed and its process runs (before :meth:`load` when that was deferred)."""
        return self.name

    def load(self) -> list[tuple[int, str, str]]:
        """Load the model (once); returns the warnings logged meanwhile (forwarded ones)."""
        if self.loaded is None:
            from .models import load_model

            self.loaded = load_model(self.model, **self._load_options)
        return self._logs.drain() if self._logs else []

    def attention(self) -> str:
        """The attention implementation the loaded model runs (what ``attn_implementation`` resolved to)."""
        self.load()
        return str(getattr(self.loaded.model.config, "_attn_implementation", ""))

    def set_needles(self, name: str, needle_set: NeedleSet | NeedleMix) -> None:
        self.needles[name] = needle_set
        self._pieces = {k: v for k, v in self._pieces.items() if k[0] != name}

    def _needle_set(self, task: ScoreTask) -> NeedleSet | NeedleMix:
        try:
            ns = self.needles[task.needles]  # the search's mix, a validation or held-out mix, an in-window set
        except KeyError:
            raise RuntimeError(f"this worker holds no needle set {task.needles!r}") from None
        if task.docs is None:
            return ns
        if isinstance(ns, NeedleMix):
            if len(ns.parts) != 1:
                raise RuntimeError(f"the needle mix {task.needles!r} of several lengths is scored whole, never in pieces")
            ns = ns.parts[0]  # a mix of one length is its set: in pieces like one
        key = (task.needles, *task.docs)
        if key not in self._pieces:  # kept: a set checks its tokenizer once
            self._pieces[key] = replace(ns, samples=ns.samples[task.docs[0] : task.docs[1]])
        return self._pieces[key]

    def score(self, task: ScoreTask) -> ScoreOutcome:
        """The answer-token NLL of the task's (λ, m) — applied at every position, as serving engines apply long
        factors — on its needle set (or the documents ``task.docs`` of it) or its mix (every served length), raced
        against its bar. A bad candidate is a failed outcome, not an exception; so is a faulty worker, with
        :attr:`ScoreOutcome.fault` set."""
        from . import faults
        from .mix import score_mix
        from .scoring import score

        t0 = time.perf_counter()
        self._scored += 1
        try:
            faults.score_point(self._fault_spec, self.label, self._scored)
            self.load()
            ns = self._needle_set(task)
            if isinstance(ns, NeedleMix):
                m = score_mix(self.loaded, ns, task.rescale, stop_at=task.bar)
                return ScoreOutcome(
                    nll=m.nll,
                    per_sample=m.per_sample,
                    accuracy=m.accuracy,
                    per_sample_correct=m.per_sample_correct,
                    seconds=m.seconds,
                    error=m.error,
                    n_scored=m.n_scored,
                    n_total=len(ns.samples),
                    censored=m.censored,
                    token_forwards=ns.token_forwards(m.n_scored),
                    per_length=m.per_length,
                    worker=self.name,
                    logs=self._logs.drain() if self._logs else [],
                )
            s = score(self.loaded, ns, task.rescale, target_length=ns.length, stop_at=task.bar)
        except Exception as e:
            fault = fault_of(e)
            logs = self._logs.drain() if self._logs else []
            return ScoreOutcome.failure(error_line(e), seconds=time.perf_counter() - t0, worker=self.name, fault=fault, logs=logs)
        return ScoreOutcome(
            nll=s.nll,
            per_sample=[float(x) for x in s.per_sample],
            accuracy=None if s.accuracy is None else float(s.accuracy),
            per_sample_correct=[bool(x) for x in (s.per_sample_correct or [])],
            seconds=float(s.seconds) if s.seconds else time.perf_counter() - t0,
            error=s.error,
            n_scored=s.n_scored,
            n_total=len(ns.samples),
            censored=bool(s.censored),
            token_forwards=None if s.n_scored is None else int(s.n_scored) * ns.length,
            worker=self.name,
            logs=self._logs.drain() if self._logs else [],
        )


@runtime_checkable
class Executor(Protocol):
    """What the search needs of whoever scores its tasks (:class:`InProcessPool`, :class:`~longsearch.workers.WorkerPool`)."""

    @property
    def workers(self) -> int:
        """How many tasks can run at once (0 before :meth:`start`)."""
        ...

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda"``: where the model replicas run."""
        ...

    def start(self) -> None:
        """Load the model replica(s); idempotent."""

    def set_needles(self, name: str, needle_set: NeedleSet | NeedleMix) -> None:
        """Hand a needle set or mix to every replica once (also those started later)."""

    def map_unordered(self, tasks: Iterable[ScoreTask]) -> Iterator[ScoreOutcome]:
        """Score every task; yield each outcome (its ``ref`` set) as it finishes."""
        ...

    def close(self) -> None:
        """Release the replicas."""


class InProcessPool:
    """An :class:`Executor` that scores in this process with one :class:`Scorer`, one task after the other.

    No Ray, no second process: what the tests of the search logic use, and enough for one device."""

    def __init__(
        self,
        model: str | None,
        target_length: int,
        *,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        self.model, self.target_length = model, int(target_length)
        self._options: dict[str, Any] = {"device": device, "dtype": dtype, "threads": threads, "attn_implementation": attn_implementation}
        self._scorer: Scorer | None = None
        self._needles: dict[str, NeedleSet | NeedleMix] = {}

    @classmethod
    def around(cls, scorer: Scorer) -> InProcessPool:
        """A pool around a scorer already loaded (tests share one model between runs)."""
        pool = cls(None, scorer.target_length)
        pool._scorer = scorer
        return pool

    @property
    def workers(self) -> int:
        return 0 if self._scorer is None else 1

    @property
    def device(self) -> str:
        return "cpu" if self._scorer is None else str(self._scorer.loaded.device)

    def __enter__(self) -> InProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self._scorer is None:
            self._scorer = Scorer(self.model, self.target_length, **self._options)
            for name, ns in self._needles.items():
                self._scorer.set_needles(name, ns)

    def set_needles(self, name: str, needle_set: NeedleSet | NeedleMix) -> None:
        self._needles[name] = needle_set
        if self._scorer is not None:
            self._scorer.set_needles(name, needle_set)

    def map_unordered(self, tasks: Iterable[ScoreTask]) -> Iterator[ScoreOutcome]:
        for task in tasks:
            self.start()
            assert self._scorer is not None
            outcome = self._scorer.score(task.for_worker())
            outcome.ref, outcome.worker = task.ref, "local"
            if outcome.fault:
                log.warning("scoring failed with a %s error, not the candidate's (%s): no other worker here", outcome.fault, outcome.error)
            yield outcome

    def close(self) -> None:
        self._scorer = None


__all__ = [
    "DEVICE_ERROR_MARKERS",
    "FORWARDED_LOGGERS",
    "Executor",
    "InProcessPool",
    "ScoreOutcome",
    "ScoreTask",
    "Scorer",
    "clean_nll",
    "error_line",
    "fault_of",
    "forward_logs",
    "is_oom",
]
