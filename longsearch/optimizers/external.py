"""Shared machinery for optimizers from other libraries (nevergrad, optuna) behind ask/tell.

The library proposes points of the unit cube ``[0, 1]^space.n_params``; the space decodes and
repairs them into points (:meth:`SearchSpace.decode_point`). A point that repairs onto a key already
evaluated is not evaluated again: the library is told the known score at once and asked for
another. Points that repair onto a key already in the current batch share that candidate's score.
Generation 0 starts from the space's seeds, so every optimizer starts where the GA does. A
library that keeps proposing only evaluated candidates (e.g. OnePlusOne once its step size is
below the grid) gets a short batch, and a generation with no new candidate ends the search.

A failed evaluation is a state, not a loss: the library is told it as a failure where it has one
(optuna: ``TrialState.FAIL``) and told nothing where it has none (nevergrad: any loss would be a lie).
A failed candidate evaluated again later (:meth:`ExternalOptimizer.tell_late`) is then told its loss
(nevergrad: on the ask it came from, never told before; optuna: a completed trial with the same
parameters, the failed one staying failed).

The state holds data only, never a pickle: the library's history as a list of events — the points
suggested (the seeds), each ask (a digest of the point it returned), each tell (which ask, what
loss), each failure (which ask) and each late tell (which ask, what loss). A resumed optimizer builds
a fresh library object with the same seed and replays the events,
checking that every ask returns the point it returned the first time, so it asks exactly what the
uninterrupted one would have; a checkpoint that holds anything else (such as an older pickle) is
refused, because unpickling a file someone sent you runs their code.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

import numpy as np

from ..errors import RunError
from ..space import SearchSpace
from .base import (
    Budget,
    Candidate,
    Optimizer,
    Result,
    check_late,
    kth_best,
    match_results,
    score_from_json,
    score_to_json,
)

log = logging.getLogger(__name__)

ASK_TRIES_PER_CANDIDATE = 20  # library asks per new candidate before the batch is cut short
STALE_ASKS = 200  # consecutive asks without a new candidate before the batch is cut short


class ExternalOptimizer(Optimizer):
    """Base class: subclasses provide ``_create``, ``_ask_point``, ``_tell_point``, ``_suggest``."""

    family = "external"
    suggestions_lifo = False  # whether the library asks the last suggestion first

    def __init__(self, space: SearchSpace, budget: str | int | Budget, seed: int, name: str) -> None:
        super().__init__(space, budget, seed, f"{self.family}:{name}")
        self.name = name
        self._scores: dict[tuple[int, ...], float] = {}
        self._best: tuple[Candidate, float] | None = None
        self._pending: list[Candidate] | None = None
        self._handles: dict[int, list[tuple[Any, int]]] = {}
        self._events: list[dict[str, Any]] = []  # committed history: suggest / ask / tell
        self._pending_events: list[dict[str, Any]] = []
        self._asks: list[Any] = []  # the library's handle of every ask so far (index = ask number)
        self._failed: dict[int, tuple[Candidate, list[int]]] = {}  # told as failed: the candidate and its asks
        self._impl = self._create()

    # ------------------------------------------------------------ hooks for subclasses

    def _create(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _ask_point(self) -> tuple[Any, np.ndarray]:  # pragma: no cover - abstract
        """Ask the library for one point: (its handle, the unit-cube vector)."""
        raise NotImplementedError

    def _tell_point(self, handle: Any, loss: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _suggest(self, u: np.ndarray) -> None:  # pragma: no cover - abstract
        """Make the library's next ask return ``u`` (used for the seeds)."""
        raise NotImplementedError

    def _fail_point(self, handle: Any) -> None:
        """Tell the library that the point of ``handle`` has no loss. Default: tell it nothing."""

    def _tell_late_point(self, handle: Any, loss: float) -> None:
        """The loss of a point told failed before. Default: tell the ask its loss (it was never told)."""
        self._tell_point(handle, loss)

    # ------------------------------------------------------------ history: what the state holds instead of a pickle

    def _do_suggest(self, u: np.ndarray) -> None:
        self._suggest(u)
        self._pending_events.append({"suggest": [float(x) for x in u]})

    def _do_ask(self) -> tuple[Any, np.ndarray, int]:
        handle, u = self._ask_point()
        self._asks.append(handle)
        self._pending_events.append({"ask": _digest(u)})
        return handle, u, len(self._asks) - 1

    def _do_tell(self, index: int, loss: float) -> None:
        self._tell_point(self._asks[index], loss)
        self._pending_events.append({"tell": [int(index), float(loss)]})

    def _do_fail(self, index: int) -> None:
        self._fail_point(self._asks[index])
        self._pending_events.append({"fail": int(index)})

    def _do_tell_score(self, index: int, score: float) -> None:
        """A score as the library gets it: a loss, or a failure (+inf)."""
        if math.isfinite(score):
            self._do_tell(index, score)
        else:
            self._do_fail(index)

    def _replay(self, events: list[dict[str, Any]]) -> None:
        """A fresh library object with the same seed, brought to the state the events describe."""
        self._impl = self._create()
        self._asks = []
        for e in events:
            if "suggest" in e:
                self._suggest(np.asarray(e["suggest"], dtype=np.float64))
            elif "ask" in e:
                handle, u = self._ask_point()
                if _digest(u) != e["ask"]:
                    raise RunError(
                        f"replaying the {self.spec} history gave another point at ask {len(self._asks)}: the checkpoint "
                        "was written with another version of the library; resume with the version that wrote it"
                    )
                self._asks.append(handle)
            elif "tell" in e:
                index, loss = e["tell"]
                self._tell_point(self._asks[int(index)], float(loss))
            elif "fail" in e:
                self._fail_point(self._asks[int(e["fail"])])
            elif "late" in e:
                index, loss = e["late"]
                self._tell_late_point(self._asks[int(index)], float(loss))
            else:
                raise ValueError(f"unknown event {sorted(e)}")

    # ------------------------------------------------------------ ask / tell

    def ask(self) -> list[Candidate]:
        """The new candidates of the current generation (the same list again until :meth:`tell`)."""
        if self.done:
            return []
        if self._pending is None:
            self._pending, self._handles = self._make_batch()
        return list(self._pending)

    def race_bar(self) -> float:
        """The ``parents``-th best score so far (+inf before that many): a candidate above it does not matter."""
        return math.inf if self.generation == 0 else kth_best(list(self._scores.values()), self.budget.parents)

    def _make_batch(self) -> tuple[list[Candidate], dict[int, list[tuple[Any, int]]]]:
        size = self.budget.batch_size(self.generation)
        batch: list[Candidate] = []
        handles: dict[int, list[tuple[Any, int]]] = {}
        by_key: dict[tuple[int, ...], int] = {}
        seed_names: dict[tuple[int, ...], str] = {}
        if self.generation == 0:
            seeds = list(self.space.seed_points().items())[:size]
            for _name, point in reversed(seeds) if self.suggestions_lifo else seeds:
                self._do_suggest(self.space.encode_point(point))
            seed_names = {self.space.point_key(point): name for name, point in seeds}
        tries = stale = 0
        while len(batch) < size and tries < size * ASK_TRIES_PER_CANDIDATE and stale < STALE_ASKS:
            tries += 1
            stale += 1
            handle, u, index = self._do_ask()
            point = self.space.decode_point(u)
            key = self.space.point_key(point)
            if key in self._scores:  # evaluated before: the library learns the known score (or failure)
                self._do_tell_score(index, self._scores[key])
                continue
            if key in by_key:  # the same candidate twice in this batch: told together
                handles[by_key[key]].append((handle, index))
                continue
            origin = seed_names.get(key, self.spec)
            c = Candidate(self._next_id + len(batch), point, self.generation, origin)
            stale = 0
            batch.append(c)
            handles[c.id] = [(handle, index)]
            by_key[key] = c.id
        if len(batch) < size:
            log.warning("%s found only %d new candidates of %d in generation %d", self.spec, len(batch), size, self.generation)
        return batch, handles

    def tell(self, results: list[Result]) -> None:
        """Scores of the whole batch (any order), told to the library in candidate-id order."""
        if self._pending is None:
            raise RuntimeError("tell() without a pending ask()")
        pairs = match_results(self._pending, results)
        for c, r in pairs:
            score = r.score  # +inf when failed
            self._scores[self.space.point_key(c.point)] = score
            self.spent += r.cost
            for _, index in self._handles[c.id]:
                self._do_tell_score(index, score)  # a censored score is a lower bound above the bar
            if r.failed:
                self._failed[c.id] = (c, [index for _, index in self._handles[c.id]])
            elif not r.censored:
                self._consider_best(c, score)
        self._next_id = max([self._next_id] + [c.id + 1 for c in self._pending])
        self._pending, self._handles = None, {}
        self._events.extend(self._pending_events)
        self._pending_events = []
        self.generation += 1
        self.done = not self.budget.allows_next(self.generation, self.spent)
        if not pairs:  # the library only proposes evaluated candidates: it has converged
            log.warning("%s proposes only candidates already evaluated: stopping at generation %d", self.spec, self.generation - 1)
            self.done = True

    def _consider_best(self, c: Candidate, score: float) -> None:
        if self._best is None or (score, c.id) < (self._best[1], self._best[0].id):
            self._best = (c, score)

    def failed(self) -> list[Candidate]:
        """Candidates told as failed (and not recovered by :meth:`tell_late`), by id."""
        return [self._failed[k][0] for k in sorted(self._failed)]

    def tell_late(self, results: list[Result]) -> None:
        """Failed candidates evaluated again: the library is told each success's loss (an event of the history,
        replayed on resume); a failure stays failed. Between generations only."""
        for r in check_late(self._pending, self._failed, results):
            if r.failed:
                continue
            c, asks = self._failed.pop(int(r.candidate.id))
            score = float(r.score)
            self._scores[self.space.point_key(c.point)] = score
            for index in asks:
                self._tell_late_point(self._asks[index], score)
                self._events.append({"late": [int(index), score]})
            if not r.censored:
                self._consider_best(c, score)

    def best(self) -> Result | None:
        if self._best is None:
            return None
        c, score = self._best
        return Result(c, score)

    @property
    def n_evaluated(self) -> int:
        return len(self._scores)

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state after the last tell: data only (the library's history as events, no pickle)."""
        return {
            **self.state_header(),
            "scores": [[list(k), score_to_json(v)] for k, v in sorted(self._scores.items())],
            "best": None if self._best is None else {"candidate": self._best[0].to_dict(), "score": self._best[1]},
            "events": [dict(e) for e in self._events],
            "failed": [{"candidate": c.to_dict(), "asks": list(asks)} for _, (c, asks) in sorted(self._failed.items())],
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; refuses the state of another optimizer, budget or space."""
        try:
            seed, generation, done, next_id, spent = self.check_state_header(d)
            if "pickle" in d or not isinstance(d.get("events"), list):
                raise RunError(
                    "the optimizer checkpoint is not plain data (it holds a pickle or no event history): "
                    "longsearch refuses to run code from a checkpoint; start a new run"
                )
            scores = {tuple(int(x) for x in k): score_from_json(v) for k, v in d["scores"]}
            best = None
            if d["best"] is not None:
                best = (Candidate.from_dict(d["best"]["candidate"]), float(d["best"]["score"]))
            events = [dict(e) for e in d["events"]]
            failed = {}
            for f in d.get("failed", []):  # older states: none kept
                c = Candidate.from_dict(f["candidate"])
                failed[c.id] = (c, [int(i) for i in f["asks"]])
            self.seed = seed
            self._replay(events)
        except RunError:
            raise
        except Exception as e:  # malformed events, wrong types
            raise RunError(f"the optimizer checkpoint is malformed ({type(e).__name__}: {e})") from None
        self.seed, self.generation, self.done, self._next_id, self.spent = seed, generation, done, next_id, spent
        self._scores, self._best, self._failed = scores, best, failed
        self._events, self._pending_events = events, []
        self._pending, self._handles = None, {}


def _digest(u: np.ndarray) -> str:
    """A short fingerprint of a point the library proposed (exact float64 bytes)."""
    return hashlib.sha256(np.ascontiguousarray(u, dtype=np.float64).tobytes()).hexdigest()[:16]
