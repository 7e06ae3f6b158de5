"""The genetic algorithm of LongRoPE / LongRoPE2, as an ask/tell optimizer.

Generation 0 is the initial population: the space's seeds (PI, NTK, YaRN, LongRoPE2's NTK-shaped
vectors, repaired into the space) and mutations of them up to ``population``. The best
``parents`` survive. Each later generation makes ``mutations`` children (each searched dimension
resampled with probability 0.3 on the grid between its neighbours' values, d_rcd redrawn with
the same probability) and ``crossovers`` children (genes of the second parent taken with
probability 0.3 × 0.5, falling back to a mutation when the child is not new); the best
``parents`` of parents + children survive (elitist). Every child is new: its key on the grid
was never asked before.

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
from ..space import SearchSpace
from . import (
    Budget,
    Candidate,
    Result,
    check_state_header,
    match_results,
    resolve_budget,
    score_from_json,
    score_to_json,
    state_header,
)

log = logging.getLogger(__name__)

MUTATION_PROBABILITY = 0.3
CROSSOVER_PROBABILITY = 0.3 * 0.5
MUTATION_TRIES = 20  # per parent before another parent is tried
RANDOM_TRIES = 200  # last resort: uniform samples of the space


@dataclass
class Individual:
    """An evaluated candidate in the population."""

    id: int
    lam: np.ndarray
    d_rcd: int | None
    score: float
    origin: str
    generation: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "lam": [float(x) for x in self.lam],
            "d_rcd": self.d_rcd,
            "score": score_to_json(self.score),
            "origin": self.origin,
            "generation": self.generation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Individual":
        return cls(
            int(d["id"]),
            np.asarray(d["lam"], dtype=np.float64),
            None if d["d_rcd"] is None else int(d["d_rcd"]),
            score_from_json(d["score"]),
            str(d["origin"]),
            int(d["generation"]),
        )

    def candidate(self) -> Candidate:
        return Candidate(self.id, self.lam.copy(), self.generation, self.origin, _params(self.d_rcd))


def _params(d_rcd: int | None, parents: list[int] | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {}
    if d_rcd is not None:
        p["d_rcd"] = int(d_rcd)
    if parents:
        p["parents"] = [int(x) for x in parents]
    return p


class GeneticOptimizer:
    """LongRoPE's evolutionary search; see the module docstring. ``budget``: quick | paper | N | Budget."""

    spec = "ga"

    def __init__(self, space: SearchSpace, budget: str | int | Budget = "paper", seed: int = 0) -> None:
        self.space = space
        self.budget = resolve_budget(budget)
        if self.budget.parents < 1 or self.budget.population < self.budget.parents:
            raise ValueError("a GA budget needs 1 ≤ parents ≤ population")
        self.seed = int(seed)
        self.generation = 0
        self.done = False
        self._next_id = 0
        self._rng_state: dict[str, Any] = np.random.Generator(np.random.PCG64(self.seed)).bit_generator.state
        self._parents: list[Individual] = []
        self._seen: set[tuple[int, ...]] = set()
        self._best: Individual | None = None
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
        return [Candidate(c.id, c.lam.copy(), c.generation, c.origin, dict(c.params)) for c in self._pending]

    def tell(self, results: list[Result]) -> None:
        """Scores of the whole batch (any order). Survivors: the best ``parents`` of parents + children."""
        if self._pending is None:
            raise RuntimeError("tell() without a pending ask()")
        pairs = match_results(self._pending, results)
        children: list[Individual] = []
        for c, score in pairs:
            self._seen.add(self.space.key(c.lam))
            ind = Individual(c.id, c.lam.copy(), c.params.get("d_rcd"), score, c.origin, c.generation)
            children.append(ind)
            if math.isfinite(score) and (self._best is None or score < self._best.score):
                self._best = ind
        pool = children if self.generation == 0 else self._parents + children
        self._parents = sorted(pool, key=lambda ind: (ind.score, ind.id))[: self.budget.parents]
        self._next_id = max([self._next_id] + [c.id + 1 for c in self._pending])
        assert self._pending_rng_state is not None
        self._rng_state = self._pending_rng_state
        self._pending = None
        self._pending_rng_state = None
        self.generation += 1
        self.done = self.generation > self.budget.generations or not pairs  # no new candidate: exhausted

    def best(self) -> Result | None:
        """The best finitely-scored candidate so far (ties: the earliest)."""
        return None if self._best is None else Result(self._best.candidate(), self._best.score)

    @property
    def parents(self) -> list[Result]:
        """The current survivors, best first."""
        return [Result(p.candidate(), p.score) for p in self._parents]

    @property
    def n_evaluated(self) -> int:
        return len(self._seen)

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state after the last tell (a pending ask is not part of it)."""
        return {
            **state_header(self),
            "rng": _jsonable_rng(self._rng_state),
            "parents": [p.to_dict() for p in self._parents],
            "best": None if self._best is None else self._best.to_dict(),
            "seen": [list(k) for k in sorted(self._seen)],
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; refuses a state of another optimizer, budget or space."""
        try:
            seed, generation, done, next_id = check_state_header(self, d)
            parents = [Individual.from_dict(p) for p in d["parents"]]
            best = None if d["best"] is None else Individual.from_dict(d["best"])
            seen = {tuple(int(x) for x in k) for k in d["seen"]}
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = d["rng"]
        except RunError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise RunError(f"the optimizer checkpoint is malformed ({type(e).__name__}: {e})") from None
        if any(p.lam.shape != (self.space.n_freq,) for p in parents):
            raise RunError("the optimizer checkpoint holds λ vectors of the wrong length")
        self.seed, self.generation, self.done, self._next_id = seed, generation, done, next_id
        self._rng_state = rng.bit_generator.state
        self._parents, self._best, self._seen = parents, best, seen
        self._pending = None
        self._pending_rng_state = None

    # ------------------------------------------------------------ generation 0

    def _initial(self, rng: np.random.Generator) -> list[Candidate]:
        pop = self.budget.population
        taken = set(self._seen)
        batch: list[Candidate] = []
        seeds = list(self.space.seeds().items())
        if len(seeds) > pop:
            log.warning("%d seeds but a population of %d: the last seeds are left out", len(seeds), pop)
            seeds = seeds[:pop]
        seed_inds: list[tuple[int, np.ndarray, int | None]] = []
        for name, lam in seeds:
            k = self.space.key(lam)
            if k in taken:
                continue
            d = self.space.critical_index(lam)
            c = self._new(batch, taken, lam, d, name, [])
            seed_inds.append((c.id, c.lam, d))
        room = pop - len(batch)
        n_mut = room if self.space.n_mutated_seeds is None else min(self.space.n_mutated_seeds, room)
        for j in range(n_mut):
            if not seed_inds:
                break
            pid, plam, pd = seed_inds[j % len(seed_inds)]
            child = self._mutate(plam, pd, rng, taken)
            if child is None:
                child = self._random(rng, taken)
                if child is None:
                    break
                self._new(batch, taken, child[0], child[1], "random", [])
            else:
                self._new(batch, taken, child[0], child[1], "mutation", [pid])
        while len(batch) < pop:
            child = self._random(rng, taken)
            if child is None:
                break
            self._new(batch, taken, child[0], child[1], "random", [])
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
                i, j = (int(x) for x in rng.choice(len(parents), size=2, replace=False))
                p1, p2 = parents[i], parents[j]
                child = self._crossover(p1, p2, rng)
                if self.space.key(child[0]) not in taken:
                    self._new(batch, taken, child[0], child[1], "crossover", [p1.id, p2.id])
                    continue
            else:
                p1 = parents[0]
            if not self._mutation_child(p1, rng, taken, batch):
                break
        return batch

    def _mutation_child(self, p: Individual, rng: np.random.Generator, taken: set, batch: list[Candidate]) -> bool:
        """A new mutation of ``p``; else of another parent; else a random point. False if the space is exhausted."""
        child = self._mutate(p.lam, p.d_rcd, rng, taken)
        parent_id = p.id
        if child is None:
            for k in rng.permutation(len(self._parents)):
                other = self._parents[int(k)]
                if other.id == p.id:
                    continue
                child = self._mutate(other.lam, other.d_rcd, rng, taken)
                if child is not None:
                    parent_id = other.id
                    break
        if child is not None:
            self._new(batch, taken, child[0], child[1], "mutation", [parent_id])
            return True
        child = self._random(rng, taken)
        if child is None:
            log.warning("no new candidate found: the search space looks exhausted")
            return False
        self._new(batch, taken, child[0], child[1], "random", [])
        return True

    # ------------------------------------------------------------ operators

    def _mutate(
        self, lam: np.ndarray, d_rcd: int | None, rng: np.random.Generator, taken: set
    ) -> tuple[np.ndarray, int | None] | None:
        """Resample each searched dimension with probability 0.3 between its neighbours (and d_rcd); retried until new."""
        sp = self.space
        lo_k, hi_k = sp.grid_bounds
        for _ in range(MUTATION_TRIES):
            d = d_rcd
            if sp.critical_range is not None:
                c_lo, c_hi = sp.critical_range
                if c_hi > c_lo and rng.random() < MUTATION_PROBABILITY:
                    d = int(rng.integers(c_lo, c_hi + 1))
            x = sp.repair(lam, d) if d != d_rcd else lam.copy()
            start = sp.searched_start(d)
            mask = rng.random(sp.n_freq - start) < MUTATION_PROBABILITY
            for offset in np.flatnonzero(mask):
                i = start + int(offset)
                if sp.monotone:
                    left = x[i - 1] if i > start else sp.lower
                    right = x[i + 1] if i < sp.n_freq - 1 else sp.upper
                    a = max(lo_k, math.ceil(min(left, right) / sp.step - 1e-9))
                    b = min(hi_k, math.floor(max(left, right) / sp.step + 1e-9))
                else:
                    a, b = lo_k, hi_k
                if b >= a:
                    x[i] = sp.from_grid(rng.integers(a, b + 1))
            child = sp.repair(x, d)
            if sp.key(child) not in taken:
                return child, d
        return None

    def _crossover(self, p1: Individual, p2: Individual, rng: np.random.Generator) -> tuple[np.ndarray, int | None]:
        """Genes (and d_rcd) of the second parent taken with probability 0.15, then repaired."""
        mask = rng.random(self.space.n_freq) < CROSSOVER_PROBABILITY
        x = np.where(mask, p2.lam, p1.lam)
        d = p1.d_rcd
        if self.space.critical_range is not None and rng.random() < CROSSOVER_PROBABILITY:
            d = p2.d_rcd
        return self.space.repair(x, d), d

    def _random(self, rng: np.random.Generator, taken: set) -> tuple[np.ndarray, int | None] | None:
        for _ in range(RANDOM_TRIES):
            lam, d = self.space.sample(rng)
            if self.space.key(lam) not in taken:
                return lam, d
        return None

    def _new(
        self, batch: list[Candidate], taken: set, lam: np.ndarray, d: int | None, origin: str, parents: list[int]
    ) -> Candidate:
        c = Candidate(self._next_id + len(batch), lam.copy(), self.generation, origin, _params(d, parents))
        batch.append(c)
        taken.add(self.space.key(lam))
        return c


def _jsonable_rng(state: dict[str, Any]) -> dict[str, Any]:
    """numpy's bit-generator state as plain Python values (ints stay exact in JSON)."""

    def conv(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, np.integer):
            return int(v)
        return v

    return conv(state)
