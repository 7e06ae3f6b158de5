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

import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from .mix import NeedleMix
from .needles import NeedleSet
from .rope import Rescale


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
    stop as soon as the mean cannot end below it (+inf: score every document).
    """

    ref: Any
    rescale: Rescale
    needles: str = "search"
    bar: float = math.inf

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


class Scorer:
    """Holds one model replica and the needle sets; scores one task at a time (the body of a worker)."""

    def __init__(
        self,
        model: str | None,
        target_length: int,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        shard: bool = False,
    ) -> None:
        import torch

        from .models import load_model

        if threads:
            torch.set_num_threads(int(threads))
        self.target_length = int(target_length)
        self.loaded = load_model(model, device=device, dtype=dtype, shard=shard)
        self.needles: dict[str, NeedleSet | NeedleMix] = {}
        self.name = f"{os.uname().nodename}:{os.getpid()}"

    def ready(self) -> str:
        return self.name

    def set_needles(self, name: str, needle_set: NeedleSet | NeedleMix) -> None:
        self.needles[name] = needle_set

    def score(self, task: ScoreTask) -> ScoreOutcome:
        """The answer-token NLL of the task's (λ, m) — applied at every position, as serving engines apply long
        factors — on its needle set or mix (every served length), raced against its bar. A bad candidate is a failed
        outcome, not an exception."""
        from .mix import score_mix
        from .scoring import score

        t0 = time.perf_counter()
        try:
            ns = self.needles[task.needles]  # the search's mix, a held-out or validation mix, or an in-window set
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
                )
            s = score(self.loaded, ns, task.rescale, target_length=ns.length, stop_at=task.bar)
        except Exception as e:
            return ScoreOutcome.failure(error_line(e), seconds=time.perf_counter() - t0, worker=self.name)
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
        self, model: str | None, target_length: int, *, device: str = "auto", dtype: str = "auto", threads: int | None = None
    ) -> None:
        self.model, self.target_length = model, int(target_length)
        self._options: dict[str, Any] = {"device": device, "dtype": dtype, "threads": threads}
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
            yield outcome

    def close(self) -> None:
        self._scorer = None


__all__ = ["Executor", "InProcessPool", "ScoreOutcome", "ScoreTask", "Scorer", "clean_nll", "error_line"]
