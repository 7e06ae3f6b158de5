"""Optimizers behind one ask/tell interface: the genetic algorithm of LongRoPE(2), nevergrad, optuna.

The optimizer proposes, someone else evaluates (Ray workers, a test objective), and tells it back::

    opt = make_optimizer("ga", space, budget="quick", seed=0)
    while not opt.done:
        batch = opt.ask()                       # new, never-evaluated candidates of this generation
        opt.tell([Result(c, objective(c.lam)) for c in batch])
    opt.best().candidate.lam

Guarantees every optimizer keeps (the resume protocol of the run store relies on them):

* ``ask()`` is a pure function of the state: called again before ``tell`` it returns the same
  batch, and after ``load_state_dict(state_dict())`` it returns exactly what the original object
  would have (same ids, same λ).
* ``tell()`` takes the results of the whole batch in any order (they are sorted by id).
* A candidate whose key (λ on the grid, :meth:`SearchSpace.key`) was asked before is never asked
  again. A failed evaluation is told as ``math.inf``.
* ``state_dict()`` is JSON-serializable and reflects the state after the last ``tell``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError, RunError
from ..space import SearchSpace


@dataclass
class Candidate:
    """One λ to evaluate. ``id`` counts from 0 in the order ``ask()`` produced them over the run.

    ``origin`` says where it came from: ``"seed:yarn"``, ``"mutation"``, ``"crossover"``,
    ``"random"``, ``"nevergrad:CMA"``, ...; ``params`` holds ``d_rcd`` (longrope2) and parent ids.
    """

    id: int
    lam: np.ndarray
    generation: int
    origin: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "lam": [float(x) for x in self.lam],
            "generation": self.generation,
            "origin": self.origin,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        return cls(int(d["id"]), np.asarray(d["lam"], dtype=np.float64), int(d["generation"]), str(d["origin"]), dict(d.get("params", {})))


@dataclass
class Result:
    """The score of a candidate: needle NLL, lower is better, ``math.inf`` for a failed evaluation."""

    candidate: Candidate
    score: float


@dataclass(frozen=True)
class Budget:
    """Population sizes and the number of generations after the initial population (generation 0)."""

    population: int
    parents: int
    mutations: int
    crossovers: int
    generations: int

    @property
    def per_generation(self) -> int:
        """Candidates per generation after the first."""
        return self.mutations + self.crossovers

    @property
    def evaluations(self) -> int:
        """Total evaluations: population + generations × (mutations + crossovers)."""
        return self.population + self.generations * self.per_generation

    def batch_size(self, generation: int) -> int:
        """How many candidates generation ``generation`` asks for."""
        return self.population if generation == 0 else self.per_generation

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


BUDGETS: dict[str, Budget] = {
    # LongRoPE / LongRoPE2: population 64, 32 parents, 16 mutations + 16 crossovers, 40 iterations
    # → 64 + 40 × 32 = 1,344 evaluations.
    "paper": Budget(population=64, parents=32, mutations=16, crossovers=16, generations=40),
    # The README demo on the testbed model on a laptop CPU: 8 + 3 × 4 = 20 evaluations.
    "quick": Budget(population=8, parents=4, mutations=2, crossovers=2, generations=3),
}


def resolve_budget(budget: str | int | Budget) -> Budget:
    """``"quick"``, ``"paper"``, an integer N (N generations with the paper population) or a Budget."""
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, bool):
        raise InputError(f"budget must be quick, paper or a number of generations, got {budget!r}")
    if isinstance(budget, str):
        key = budget.strip().lower()
        if key in BUDGETS:
            return BUDGETS[key]
        try:
            budget = int(key)
        except ValueError:
            raise InputError(f"budget must be quick, paper or a number of generations, got {budget!r}") from None
    if not isinstance(budget, int) or budget < 0:
        raise InputError(f"budget must be quick, paper or a non-negative number of generations, got {budget!r}")
    paper = BUDGETS["paper"]
    return Budget(paper.population, paper.parents, paper.mutations, paper.crossovers, budget)


@runtime_checkable
class Optimizer(Protocol):
    """The ask/tell interface every optimizer implements (see the module docstring)."""

    generation: int
    done: bool
    budget: Budget
    space: SearchSpace

    def ask(self) -> list[Candidate]: ...

    def tell(self, results: list[Result]) -> None: ...

    def best(self) -> Result | None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, d: dict[str, Any]) -> None: ...


def make_optimizer(spec: str, space: SearchSpace, budget: str | int | Budget, seed: int) -> Optimizer:
    """``"ga"``, ``"nevergrad:NAME"`` or ``"optuna:NAME"`` over ``space`` with ``budget``, seeded.

    The nevergrad and optuna optimizers get the same number of evaluations as the GA would, in
    batches of the same size, and start from the same seeds.
    """
    b = resolve_budget(budget)
    text = str(spec).strip()
    family, _, name = text.partition(":")
    family = family.lower()
    if family == "ga" and not name:
        from .ga import GeneticOptimizer

        return GeneticOptimizer(space, b, seed)
    if family == "nevergrad":
        from .nevergrad import NevergradOptimizer

        return NevergradOptimizer(space, b, seed, name or "TwoPointsDE")
    if family == "optuna":
        from .optuna import OptunaOptimizer

        return OptunaOptimizer(space, b, seed, name or "TPE")
    raise InputError(f"unknown optimizer {spec!r}: use ga, nevergrad:NAME (e.g. nevergrad:CMA) or optuna:NAME (e.g. optuna:TPE)")


# ---------------------------------------------------------------- shared helpers


def clean_score(score: float) -> float:
    """A score as the optimizers see it: non-finite (nan, ±inf) or non-numbers become +inf."""
    try:
        value = float(score)
    except (TypeError, ValueError):
        return math.inf
    return value if math.isfinite(value) else math.inf


def score_to_json(score: float) -> float | None:
    """+inf (a failed evaluation) is stored as null so that the state stays strict JSON."""
    return None if not math.isfinite(score) else float(score)


def score_from_json(value: float | None) -> float:
    return math.inf if value is None else float(value)


def match_results(pending: list[Candidate], results: list[Result]) -> list[tuple[Candidate, float]]:
    """Pair the pending batch with its results by id (any order); every candidate needs exactly one result."""
    by_id = {c.id: c for c in pending}
    scores: dict[int, float] = {}
    for r in results:
        cid = int(r.candidate.id)
        if cid not in by_id:
            raise ValueError(f"result for candidate {cid}, which is not in the pending batch")
        if cid in scores:
            raise ValueError(f"two results for candidate {cid}")
        scores[cid] = clean_score(r.score)
    missing = [c.id for c in pending if c.id not in scores]
    if missing:
        raise ValueError(f"tell() needs the results of the whole batch; missing candidates {missing[:5]}")
    return [(c, scores[c.id]) for c in sorted(pending, key=lambda c: c.id)]


__all__ = [
    "BUDGETS",
    "Budget",
    "Candidate",
    "Optimizer",
    "Result",
    "make_optimizer",
    "resolve_budget",
]


# ---------------------------------------------------------------- state shared by every optimizer

STATE_VERSION = 1


def state_header(opt: Any) -> dict[str, Any]:
    """The part of ``state_dict()`` every optimizer writes: which optimizer, budget and space, and its counters."""
    return {
        "optimizer": opt.spec,
        "version": STATE_VERSION,
        "seed": opt.seed,
        "budget": opt.budget.to_dict(),
        "n_freq": opt.space.n_freq,
        "generation": opt.generation,
        "done": opt.done,
        "next_id": opt._next_id,
    }


def check_state_header(opt: Any, d: dict[str, Any]) -> tuple[int, int, bool, int]:
    """Refuse the state of another optimizer, budget or space; return (seed, generation, done, next_id).

    Raises RunError for a foreign state, and KeyError / TypeError / ValueError for a malformed one.
    """
    if d.get("optimizer") != opt.spec or int(d.get("version", -1)) != STATE_VERSION:
        raise RunError(f"the checkpoint holds optimizer state {d.get('optimizer')!r}, not {opt.spec!r} (version {STATE_VERSION})")
    if d["budget"] != opt.budget.to_dict():
        raise RunError(f"the checkpoint was made with budget {d['budget']}, not {opt.budget.to_dict()}")
    if int(d["n_freq"]) != opt.space.n_freq:
        raise RunError(f"the checkpoint has λ of length {d['n_freq']}, the space has {opt.space.n_freq}")
    return int(d["seed"]), int(d["generation"]), bool(d["done"]), int(d["next_id"])
