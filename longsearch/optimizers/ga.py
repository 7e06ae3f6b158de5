"""The genetic algorithm of LongRoPE / LongRoPE2, as an ask/tell optimizer over any search space.

Generation 0 is the initial population: the space's seeds (PI, NTK, YaRN, LongRoPE2's NTK-shaped
vectors, brought into the space) and mutations of them up to ``population``. The best ``parents``
survive. Each later generation makes ``mutations`` children (:meth:`SearchSpace.mutate`: LongRoPE's
gene-wise redraw between neighbours, plus moves that shift or scale a segment of λ, move d_rcd with
or without the tail, change the head or m) and ``crossovers`` children (:meth:`SearchSpace.crossover`:
LongRoPE's gene-wise crossover; a child that is not new is rejected and replaced by a mutation of
the better parent); the best ``parents`` of parents + children survive (elitist). Every child is
new: its key was never asked before.

Racing (:meth:`GeneticOptimizer.race_bar`): a child matters only if it beats the worst parent; an
evaluation stopped once its mean cannot end below that bar is told as censored and never survives,
so the trajectory is the one full scoring would give.

Failures (:class:`~longsearch.optimizers.Result` ``failed``) never enter the population. They are kept
(:meth:`GeneticOptimizer.failed`) so that a resumed run can evaluate them again; a late success
(:meth:`GeneticOptimizer.tell_late`) joins the survivors as if it were one more child of the last
generation told: the best ``parents`` of parents + late results survive.

>>> from longsearch.rope import RopeGeometry
>>> from longsearch.space import SearchSpace
>>> space = SearchSpace.load("longrope2", RopeGeometry(64, 10000.0, 256), 2048)
>>> opt = GeneticOptimizer(space, "quick", seed=0)
>>> batch = opt.ask()
>>> len(batch), batch[0].origin
(8, 'seed:pi')
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import RunError
from ..space import Point, SearchSpace
from .base import (
    Budget,
    Candidate,
    Optimizer,
    Result,
    check_late,
    match_results,
    score_from_json,
    score_to_json,
)

log = logging.getLogger(__name__)

MUTATION_TRIES = 20  # per parent before another parent is tried
RANDOM_TRIES = 200  # last resort: uniform samples of the space


@dataclass(frozen=True)
class Individual:
    """An evaluated candidate in the population: the candidate, its score, and whether the race stopped it."""

    candidate: Candidate
    score: float
    censored: bool = False

    @property
    def id(self) -> int:
        return self.candidate.id

    @property
    def point(self) -> Point:
        return self.candidate.point

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's form (as release 0.1.0 wrote it: the candidate's fields, its score, ``censored``)."""
        d = self.candidate.to_dict()
        return {
            "id": d["id"],
            "lam": d["lam"],
            "m": d["m"],
            "params": d["params"],
            "score": score_to_json(self.score),
            "censored": self.censored,
            "origin": d["origin"],
            "generation": d["generation"],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Individual:
        return cls(Candidate.from_dict(d), score_from_json(d["score"]), bool(d.get("censored", False)))


class GeneticOptimizer(Optimizer):
    """LongRoPE's evolutionary search; see the module docstring. ``budget``: quick | paper | N | Nevals | Budget."""

    def __init__(self, space: SearchSpace, budget: str | int | Budget = "paper", seed: int = 0) -> None:
        super().__init__(space, budget, seed, "ga")
        if self.budget.parents < 1 or self.budget.population < self.budget.parents:
            raise ValueError("a GA budget needs 1 ≤ parents ≤ population")
        self._rng_state: dict[str, Any] = dict(np.random.Generator(np.random.PCG64(self.seed)).bit_generator.state)
        self._parents: list[Individual] = []
        self._seen: set[tuple[int, ...]] = set()
        self._best: Individual | None = None
        self._failed: dict[int, Candidate] = {}  # told as failed, not recovered since
        self._pending: list[Candidate] | None = None
        self._pending_rng_state: dict[str, Any] | None = None

    # ------------------------------------------------------------ ask / tell

    def ask(self) -> list[Candidate]:
        """The new candidates of the current generation (the same list again until :meth:`tell`)."""
        if self.done:
            return []
        if self._pending is None:
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = self._rng_state
            batch = self._initial(rng) if self.generation == 0 else self._children(rng)
            self._pending = batch
            self._pending_rng_state = rng.bit_generator.state
        return list(self._pending)

    def race_bar(self) -> float:
        """The score a child must beat to survive: the worst parent's (+inf while the parents are not full)."""
        if len(self._parents) < self.budget.parents or self.generation == 0:
            return math.inf
        return self._parents[-1].score

    def tell(self, results: list[Result]) -> None:
        """Scores of the whole batch (any order). Survivors: the best ``parents`` of parents + children."""
        if self._pending is None:
            raise RuntimeError("tell() without a pending ask()")
        pairs = match_results(self._pending, results)
        children: list[Individual] = []
        for c, r in pairs:
            self._seen.add(self.space.point_key(c.point))
            self.spent += r.cost
            if r.failed:  # a state, not a score: never a parent nor the best; kept to be evaluated again
                self._failed[c.id] = c
                continue
            ind = Individual(c, r.score, r.censored)
            children.append(ind)
            self._consider_best(ind)
        pool = children if self.generation == 0 else self._parents + children
        self._parents = _survivors(pool, self.budget.parents)
        self._next_id = max([self._next_id] + [c.id + 1 for c in self._pending])
        assert self._pending_rng_state is not None
        self._rng_state = self._pending_rng_state
        self._pending = None
        self._pending_rng_state = None
        self.generation += 1
        # no new candidate: exhausted
        self.done = not pairs or not self.budget.allows_next(self.generation, self.spent)

    def _consider_best(self, ind: Individual) -> None:
        if not ind.censored and (self._best is None or (ind.score, ind.id) < (self._best.score, self._best.id)):
            self._best = ind

    def failed(self) -> list[Candidate]:
        """Candidates told as failed (and not recovered by :meth:`tell_late`), by id."""
        return [self._failed[k] for k in sorted(self._failed)]

    def tell_late(self, results: list[Result]) -> None:
        """Failed candidates evaluated again: each success joins the survivors (the best ``parents`` of parents +
        late results) and may become the best; a failure stays failed. Between generations only."""
        late: list[Individual] = []
        for r in check_late(self._pending, self._failed, results):
            if r.failed:
                continue
            c = self._failed.pop(int(r.candidate.id))
            ind = Individual(c, float(r.score), bool(r.censored))
            late.append(ind)
            self._consider_best(ind)
        if late:
            self._parents = _survivors(self._parents + late, self.budget.parents)

    def best(self) -> Result | None:
        """The best fully-scored candidate so far (ties: the earliest)."""
        return None if self._best is None else Result(self._best.candidate, self._best.score)

    @property
    def parents(self) -> list[Result]:
        """The current survivors, best first."""
        return [Result(p.candidate, p.score, censored=p.censored) for p in self._parents]

    @property
    def n_evaluated(self) -> int:
        return len(self._seen)

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state after the last tell (a pending ask is not part of it)."""
        return {
            **self.state_header(),
            "rng": _jsonable_rng(self._rng_state),
            "parents": [p.to_dict() for p in self._parents],
            "best": None if self._best is None else self._best.to_dict(),
            "seen": [list(k) for k in sorted(self._seen)],
            "failed": [self._failed[k].to_dict() for k in sorted(self._failed)],
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; refuses a state of another optimizer, budget or space."""
        try:
            seed, generation, done, next_id, spent = self.check_state_header(d)
            parents = [Individual.from_dict(p) for p in d["parents"]]
            best = None if d["best"] is None else Individual.from_dict(d["best"])
            seen = {tuple(int(x) for x in k) for k in d["seen"]}
            failed = {int(c["id"]): Candidate.from_dict(c) for c in d.get("failed", [])}  # older states: none kept
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = d["rng"]
        except RunError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise RunError(f"the optimizer checkpoint is malformed ({type(e).__name__}: {e})") from None
        if any(p.candidate.lam.shape != (self.space.n_freq,) for p in parents):
            raise RunError("the optimizer checkpoint holds λ vectors of the wrong length")
        self.seed, self.generation, self.done, self._next_id, self.spent = seed, generation, done, next_id, spent
        self._rng_state = dict(rng.bit_generator.state)
        self._parents, self._best, self._seen, self._failed = parents, best, seen, failed
        self._pending = None
        self._pending_rng_state = None

    # ------------------------------------------------------------ generation 0

    def _initial(self, rng: np.random.Generator) -> list[Candidate]:
        pop = self.budget.population
        taken = set(self._seen)
        batch: list[Candidate] = []
        seeds = list(self.space.seed_points().items())
        if len(seeds) > pop:
            log.warning("%d seeds but a population of %d: the last seeds are left out", len(seeds), pop)
            seeds = seeds[:pop]
        seed_inds: list[tuple[int, Point]] = []
        for name, point in seeds:
            if self.space.point_key(point) in taken:
                continue
            c = self._new(batch, taken, point, name, [])
            seed_inds.append((c.id, point))
        room = pop - len(batch)
        n_mut = room if self.space.n_mutated_seeds is None else min(self.space.n_mutated_seeds, room)
        for j in range(n_mut):
            if not seed_inds:
                break
            pid, point = seed_inds[j % len(seed_inds)]
            child = self._mutate(point, rng, taken)
            if child is None:
                child = self._random(rng, taken)
                if child is None:
                    break
                self._new(batch, taken, child, "random", [])
            else:
                self._new(batch, taken, child, "mutation", [pid])
        while len(batch) < pop:
            child = self._random(rng, taken)
            if child is None:
                break
            self._new(batch, taken, child, "random", [])
        return batch

    # ------------------------------------------------------------ later generations

    def _children(self, rng: np.random.Generator) -> list[Candidate]:
        taken = set(self._seen)
        batch: list[Candidate] = []
        parents = self._parents
        if not parents:
            return batch
        for _ in range(self.budget.mutations):
            p = parents[int(rng.integers(len(parents)))]
            if not self._mutation_child(p, rng, taken, batch):
                break
        for _ in range(self.budget.crossovers):
            if len(parents) >= 2:
                i, j = sorted(int(x) for x in rng.choice(len(parents), size=2, replace=False))
                p1, p2 = parents[i], parents[j]  # parents are sorted: p1 is the better one
                child = self.space.crossover(p1.point, p2.point, rng)
                if self.space.point_key(child) not in taken:
                    self._new(batch, taken, child, "crossover", [p1.id, p2.id])
                    continue
            else:
                p1 = parents[0]
            if not self._mutation_child(p1, rng, taken, batch):  # rejected: a mutation of the better parent
                break
        return batch

    def _mutation_child(self, p: Individual, rng: np.random.Generator, taken: set, batch: list[Candidate]) -> bool:
        """A new mutation of ``p``; else of another parent; else a random point. False if the space is exhausted."""
        child = self._mutate(p.point, rng, taken)
        parent_id = p.id
        if child is None:
            for k in rng.permutation(len(self._parents)):
                other = self._parents[int(k)]
                if other.id == p.id:
                    continue
                child = self._mutate(other.point, rng, taken)
                if child is not None:
                    parent_id = other.id
                    break
        if child is not None:
            self._new(batch, taken, child, "mutation", [parent_id])
            return True
        child = self._random(rng, taken)
        if child is None:
            log.warning("no new candidate found: the search space looks exhausted")
            return False
        self._new(batch, taken, child, "random", [])
        return True

    def _mutate(self, point: Point, rng: np.random.Generator, taken: set) -> Point | None:
        for _ in range(MUTATION_TRIES):
            child = self.space.mutate(point, rng)
            if self.space.point_key(child) not in taken:
                return child
        return None

    def _random(self, rng: np.random.Generator, taken: set) -> Point | None:
        for _ in range(RANDOM_TRIES):
            p = self.space.sample_point(rng)
            if self.space.point_key(p) not in taken:
                return p
        return None

    def _new(self, batch: list[Candidate], taken: set, point: Point, origin: str, parents: list[int]) -> Candidate:
        c = Candidate(self._next_id + len(batch), point, self.generation, origin, tuple(parents))
        batch.append(c)
        taken.add(self.space.point_key(point))
        return c


def _survivors(pool: list[Individual], k: int) -> list[Individual]:
    """The best ``k`` of ``pool``. A censored score is a lower bound at or above the bar it raced against: it sorts
    after every parent it could displace. Only scored individuals are in a pool (failures never are)."""
    assert all(math.isfinite(ind.score) for ind in pool)
    return sorted(pool, key=lambda ind: (ind.score, ind.censored, ind.id))[:k]


def _jsonable_rng(state: dict[str, Any]) -> dict[str, Any]:
    """numpy's bit-generator state as plain Python values (ints stay exact in JSON)."""

    def conv(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, np.integer):
            return int(v)
        return v

    return conv(state)
