"""A task in pieces: how the worker pool keeps every worker busy when a generation holds few candidates.

A generation waits for its slowest candidate, so with whole candidates as the unit of work most workers idle at
its end (and all but a few of them idle throughout when it holds fewer candidates than there are workers). The pool
therefore cuts a task into pieces of consecutive needle documents (:func:`piece_spans`) and hands pieces to any
idle worker (:class:`Job`); the outcomes of the pieces are merged back into the task's one
:class:`~longsearch.executors.ScoreOutcome`.

The merged outcome is the one the task scored whole would give:

* a piece is a batch the whole task would have run as one forward (``RACE_TOKENS_PER_CHUNK`` tokens of documents
  while racing, the scorer's batch of ``CPU_TOKENS_PER_BATCH`` / ``GPU_TOKENS_PER_BATCH`` otherwise), so the
  per-document NLLs are those of the whole task (the same batches);
* the race is run here, on the pieces in document order, with the scorer's own rule: after the documents of
  pieces 0…i, stop when their sum / n ≥ bar. The outcome holds exactly those pieces (``per_sample`` in document
  order, ``nll`` their sum / n when stopped, else the mean; ``n_scored`` and so the token-forwards counted are the
  whole task's). Pieces of one task run side by side when workers would otherwise idle: a piece beyond the point
  where the race stops is work thrown away (never counted, never in the outcome); pieces not yet handed out past
  a point the race must stop at are dropped.
* A failed piece (a non-finite loss, or a worker lost on every attempt) fails the task where the whole task
  would have reached it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .executors import ScoreOutcome, ScoreTask


def piece_spans(n_docs: int, length: int, racing: bool, device: str = "cpu") -> list[tuple[int, int]] | None:
    """The documents of each piece of a task (``start``, ``stop``), or None when one piece would hold them all."""
    from .scoring import CPU_TOKENS_PER_BATCH, GPU_TOKENS_PER_BATCH, RACE_TOKENS_PER_CHUNK

    tokens = RACE_TOKENS_PER_CHUNK if racing else (GPU_TOKENS_PER_BATCH if device == "cuda" else CPU_TOKENS_PER_BATCH)
    per = max(1, tokens // max(1, int(length)))
    if per >= n_docs:
        return None
    return [(a, min(a + per, n_docs)) for a in range(0, n_docs, per)]


class Job:
    """One task of a :meth:`~longsearch.workers.WorkerPool.map_unordered` call, whole or in pieces.

    The pool asks :meth:`next_piece` for work, reports each piece's outcome to :meth:`take` (or puts a piece
    whose worker was lost back with :meth:`retry`) and gets the task's outcome from :meth:`take` once decided."""

    def __init__(self, task: ScoreTask, order: int, spans: list[tuple[int, int]] | None = None, n_docs: int = 0) -> None:
        self.task, self.order = task, order
        self.spans = spans
        self.n_docs = n_docs
        self.todo: list[int] = list(range(len(spans) if spans else 1))  # pieces not handed out, in document order
        self.attempts: dict[int, int] = {}
        self.inflight = 0
        self.results: dict[int, ScoreOutcome] = {}
        self.done = False

    @property
    def waiting(self) -> bool:
        """Has pieces to hand out."""
        return bool(self.todo) and not self.done

    def next_piece(self) -> tuple[int, ScoreTask, int]:
        """(piece, what the worker gets, attempt) of the first piece not handed out."""
        i = self.todo.pop(0)
        self.inflight += 1
        attempt = self.attempts.get(i, 0) + 1
        self.attempts[i] = attempt
        if self.spans is None:
            return i, self.task.for_worker(), attempt
        return i, replace(self.task, ref=None, bar=math.inf, docs=self.spans[i]), attempt

    def retry(self, i: int) -> None:
        """The piece's worker was lost: hand it out again (first)."""
        self.inflight -= 1
        if not self.done:
            self.todo.insert(0, i)
            self.todo.sort()

    def take(self, i: int, outcome: ScoreOutcome) -> ScoreOutcome | None:
        """A piece's outcome; the task's outcome (its ``ref`` set) once it is decided, else None."""
        self.inflight -= 1
        if self.done:
            return None  # a piece past the point the race stopped at: thrown away
        if self.spans is None:
            return self._finish(outcome)
        self.results[i] = outcome
        merged = self._merge()
        if merged is not None:
            return self._finish(merged)
        self._drop_beyond_stop()
        return None

    def _finish(self, outcome: ScoreOutcome) -> ScoreOutcome:
        self.done = True
        self.todo.clear()
        outcome.ref = self.task.ref
        return outcome

    def _merge(self) -> ScoreOutcome | None:
        """The task's outcome from the pieces 0…i done so far, if they decide it (the scorer's race rule)."""
        assert self.spans is not None
        bar, n, last = self.task.bar, self.n_docs, len(self.spans) - 1
        if math.isinf(bar) and any(r.failed for r in self.results.values()):
            return self._failed(next(i for i in sorted(self.results) if self.results[i].failed))
        nll: list[float] = []
        for i in range(last + 1):
            r = self.results.get(i)
            if r is None:
                return None
            if r.failed:
                return self._failed(i)
            nll.extend(r.per_sample)
            if i < last and math.fsum(nll) / n >= bar:
                return self._combine(i + 1, censored=True)
        return self._combine(last + 1, censored=False)

    def _drop_beyond_stop(self) -> None:
        """Racing: once the pieces done (a failed one counting +inf) up to piece j reach the bar, the race stops at
        piece j at the latest: pieces past it are not handed out."""
        if math.isinf(self.task.bar):
            return
        total = 0.0
        for j in sorted(self.results):
            r = self.results[j]
            total += math.inf if r.failed else math.fsum(r.per_sample)
            if total / self.n_docs >= self.task.bar:
                self.todo = [k for k in self.todo if k <= j]
                return

    def _failed(self, i: int) -> ScoreOutcome:
        r = self.results[i]
        a, b = self.spans[i] if self.spans else (0, self.n_docs)
        return replace(
            r,
            error=f"documents {a}–{b - 1}: {r.error}",
            worker=self._workers(),
            attempts=max(self.attempts.values()),
            logs=[],
        )

    def _combine(self, k: int, censored: bool) -> ScoreOutcome:
        parts = [self.results[i] for i in range(k)]
        per_sample = [x for r in parts for x in r.per_sample]
        correct = [x for r in parts for x in r.per_sample_correct]
        nll = float(np.sum(per_sample)) / self.n_docs if censored else float(np.mean(per_sample))
        forwards = [r.token_forwards for r in parts]
        return ScoreOutcome(
            nll=nll,
            token_forwards=None if any(f is None for f in forwards) else sum(f for f in forwards if f is not None),
            per_sample=per_sample,
            accuracy=float(np.mean(correct)) if correct else None,
            per_sample_correct=correct,
            seconds=sum(r.seconds for r in parts),
            n_scored=len(per_sample),
            n_total=self.n_docs,
            censored=censored,
            worker=self._workers(),
            attempts=max(self.attempts.values()),
        )

    def _workers(self) -> str:
        """The workers that scored the pieces, in document order, each once."""
        names = dict.fromkeys(self.results[i].worker for i in sorted(self.results))
        return ",".join(names)


def next_job(jobs: list[Job]) -> Job | None:
    """Whose piece an idle worker gets: a task with the fewest pieces running, the earliest among them — so that
    tasks are scored one piece after the other while there are enough of them, and side by side when not."""
    best = None
    for job in jobs:
        if job.waiting and (best is None or (job.inflight, job.order) < (best.inflight, best.order)):
            best = job
    return best


__all__ = ["Job", "next_job", "piece_spans"]
