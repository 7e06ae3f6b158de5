"""The ask/tell contract every optimizer keeps, and the records it trades in: :class:`Candidate` (a point of the
space with its identity), :class:`Result` (its score, or its failure), :class:`Budget`.

See :mod:`longsearch.optimizers` for the guarantees; the optimizers themselves are in ``ga.py``, ``random.py``,
``nevergrad.py`` and ``optuna.py`` (built by :func:`longsearch.optimizers.make_optimizer`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError, RunError
from ..rope import Rescale
from ..space import Point, SearchSpace


@dataclass(frozen=True, eq=False)
class Candidate:
    """One point of the search space to evaluate, with its identity — the one shape a candidate has from
    :meth:`Optimizer.ask` to the journal.

    ``point``: λ, m and the structural parameters λ was built from (``d_rcd``, the head, β; see
    :class:`~longsearch.space.Point`). ``id`` counts from 0 in the order ``ask()`` produced candidates over the
    run; ``origin`` says where it came from (``"seed:yarn"``, ``"mutation"``, ``"crossover"``, ``"random"``,
    ``"nevergrad:CMA"``, ...); ``parents`` are the ids it was bred from. Immutable: λ is read-only.
    """

    id: int
    point: Point
    generation: int
    origin: str
    parents: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        lam = np.array(self.point.lam, dtype=np.float64)
        lam.setflags(write=False)
        object.__setattr__(self, "point", Point(lam, float(self.point.m), dict(self.point.params)))
        object.__setattr__(self, "id", int(self.id))
        object.__setattr__(self, "generation", int(self.generation))
        object.__setattr__(self, "parents", tuple(int(x) for x in self.parents))

    @property
    def lam(self) -> np.ndarray:
        return self.point.lam

    @property
    def m(self) -> float:
        return self.point.m

    @property
    def params(self) -> dict[str, Any]:
        """The structural parameters (a copy): ``d_rcd``, ``head_start``, ``head_shape``, ``beta_fast``, ``beta_slow``."""
        return dict(self.point.params)

    @property
    def rescale(self) -> Rescale:
        """What a worker applies: λ and m."""
        return Rescale(self.point.lam, self.point.m)

    def to_dict(self) -> dict[str, Any]:
        """The on-disk form (checkpoints): the parent ids are stored inside ``params``, as release 0.1.0 wrote them."""
        params = dict(self.point.params)
        if self.parents:
            params["parents"] = list(self.parents)
        return {
            "id": self.id,
            "lam": [float(x) for x in self.lam],
            "m": float(self.m),
            "generation": self.generation,
            "origin": self.origin,
            "params": params,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        params = dict(d.get("params", {}))
        parents = tuple(int(x) for x in params.pop("parents", ()))
        point = Point(np.asarray(d["lam"], dtype=np.float64), float(d.get("m", 1.0)), params)
        return cls(int(d["id"]), point, int(d["generation"]), str(d["origin"]), parents)


@dataclass
class Result:
    """The score of a candidate: needle NLL, lower is better; ``failed`` (score ``math.inf``) when it has none."""

    candidate: Candidate
    score: float
    cost: float = 1.0  # share of the needle set scored (1 = a full evaluation)
    censored: bool = False  # stopped early: ``score`` is a lower bound, at least the race bar
    failed: bool = False  # no score (a worker lost, an exception, a non-finite loss): a state, not a value

    def __post_init__(self) -> None:
        self.score = clean_score(self.score)  # the one place a score is cleaned: every optimizer gets it so
        if self.failed or not math.isfinite(self.score):
            self.failed, self.score, self.censored = True, math.inf, False


@dataclass(frozen=True)
class Budget:
    """Population sizes and the number of generations after the initial population (generation 0)."""

    population: int
    parents: int
    mutations: int
    crossovers: int
    generations: int
    max_cost: float | None = None  # stop before a generation that could exceed this many full evaluations

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def allows_next(self, generation: int, spent: float) -> bool:
        """Whether generation ``generation`` may start after ``spent`` full evaluations' worth of scoring."""
        if generation > self.generations:
            return False
        return self.max_cost is None or spent + self.batch_size(generation) <= self.max_cost + 1e-9


BUDGETS: dict[str, Budget] = {
    # LongRoPE / LongRoPE2: population 64, 32 parents, 16 mutations + 16 crossovers, 40 iterations
    # → 64 + 40 × 32 = 1,344 evaluations.
    "paper": Budget(population=64, parents=32, mutations=16, crossovers=16, generations=40),
    # The README demo on the testbed model on a laptop CPU: 8 + 3 × 4 = 20 evaluations.
    "quick": Budget(population=8, parents=4, mutations=2, crossovers=2, generations=3),
}


#: Population shape of budgets given in evaluations (``"500evals"``): smaller than the paper's so that
#: a few hundred evaluations still make many generations.
COST_BUDGET_SHAPE = Budget(population=32, parents=16, mutations=8, crossovers=8, generations=10**6)


def resolve_budget(budget: str | int | Budget) -> Budget:
    """``"quick"``, ``"paper"``, an integer N (N generations with the paper population), ``"Nevals"``
    (as many generations as N full evaluations' worth of scoring allows; early-stopped evaluations
    count for what they ran) or a Budget."""
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, bool):
        raise InputError(f"budget must be quick, paper, a number of generations or Nevals, got {budget!r}")
    if isinstance(budget, str):
        key = budget.strip().lower()
        if key in BUDGETS:
            return BUDGETS[key]
        if key.endswith("evals"):
            try:
                n = int(key[: -len("evals")])
            except ValueError:
                n = -1
            if n < COST_BUDGET_SHAPE.population:
                raise InputError(f"budget {budget!r}: give at least {COST_BUDGET_SHAPE.population}evals (one initial population)")
            b = COST_BUDGET_SHAPE
            return Budget(b.population, b.parents, b.mutations, b.crossovers, b.generations, float(n))
        try:
            budget = int(key)
        except ValueError:
            raise InputError(f"budget must be quick, paper, a number of generations or Nevals (e.g. 500evals), got {budget!r}") from None
    if not isinstance(budget, int) or budget < 0:
        raise InputError(f"budget must be quick, paper or a non-negative number of generations, got {budget!r}")
    paper = BUDGETS["paper"]
    return Budget(paper.population, paper.parents, paper.mutations, paper.crossovers, budget)


class Optimizer(ABC):
    """What every optimizer is: the ask/tell interface (see the module docstring) and the state it shares.

    Subclasses call ``super().__init__(space, budget, seed, spec)`` and implement the abstract methods;
    :meth:`state_header` / :meth:`check_state_header` write and check the part of the state they all have.
    """

    spec: str  # how the optimizer is named on the command line ("ga", "nevergrad:CMA", ...)

    def __init__(self, space: SearchSpace, budget: str | int | Budget, seed: int, spec: str) -> None:
        self.space = space
        self.budget = resolve_budget(budget)
        self.seed = int(seed)
        self.spec = spec
        self.generation = 0  # generations told so far
        self.done = False  # the budget is spent
        self.spent = 0.0  # evaluations' worth of cost told so far
        self._next_id = 0  # the id the next candidate gets

    @abstractmethod
    def ask(self) -> list[Candidate]:
        """The current generation's candidates (the same list again until :meth:`tell`); empty when done."""

    @abstractmethod
    def tell(self, results: list[Result]) -> None:
        """The results of the whole batch :meth:`ask` returned, in any order."""

    @abstractmethod
    def best(self) -> Result | None:
        """The best finite result told so far."""

    @abstractmethod
    def failed(self) -> list[Candidate]:
        """The candidates told as failed and not recovered by :meth:`tell_late`, by id."""

    @abstractmethod
    def tell_late(self, results: list[Result]) -> None:
        """Results of candidates :meth:`failed` lists, evaluated again (between generations, never while a
        batch is pending). A success joins the optimizer's history as if it had been told now; a failure
        stays failed. The budget is not charged again."""

    @abstractmethod
    def race_bar(self) -> float:
        """The score a new candidate must get below to matter (racing stops it once it cannot)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly, as JSON data (no pickle)."""

    @abstractmethod
    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output; RunError for the state of another optimizer, budget or space."""

    def state_header(self) -> dict[str, Any]:
        """The part of ``state_dict()`` every optimizer writes: which optimizer, budget and space, and its counters."""
        return {
            "optimizer": self.spec,
            "version": STATE_VERSION,
            "seed": self.seed,
            "budget": self.budget.to_dict(),
            "n_freq": self.space.n_freq,
            "generation": self.generation,
            "done": self.done,
            "next_id": self._next_id,
            "spent": self.spent,
        }

    def check_state_header(self, d: dict[str, Any]) -> tuple[int, int, bool, int, float]:
        """Refuse the state of another optimizer, budget or space; return (seed, generation, done, next_id, spent).

        Raises RunError for a foreign state, and KeyError / TypeError / ValueError for a malformed one.
        """
        if d.get("optimizer") != self.spec or int(d.get("version", -1)) != STATE_VERSION:
            raise RunError(f"the checkpoint holds optimizer state {d.get('optimizer')!r}, not {self.spec!r} (version {STATE_VERSION})")
        if d["budget"] != self.budget.to_dict():
            raise RunError(f"the checkpoint was made with budget {d['budget']}, not {self.budget.to_dict()}")
        if int(d["n_freq"]) != self.space.n_freq:
            raise RunError(f"the checkpoint has λ of length {d['n_freq']}, the space has {self.space.n_freq}")
        return int(d["seed"]), int(d["generation"]), bool(d["done"]), int(d["next_id"]), float(d.get("spent", 0.0))


STATE_VERSION = 1


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


def match_results(pending: list[Candidate], results: list[Result]) -> list[tuple[Candidate, Result]]:
    """Pair the pending batch with its results by id (any order); every candidate needs exactly one result.

    The results come back with the pending candidate (their scores are clean already: :class:`Result`)."""
    by_id = {c.id: c for c in pending}
    found: dict[int, Result] = {}
    for r in results:
        cid = int(r.candidate.id)
        if cid not in by_id:
            raise ValueError(f"result for candidate {cid}, which is not in the pending batch")
        if cid in found:
            raise ValueError(f"two results for candidate {cid}")
        found[cid] = Result(by_id[cid], r.score, float(r.cost), bool(r.censored), bool(r.failed))
    missing = [c.id for c in pending if c.id not in found]
    if missing:
        raise ValueError(f"tell() needs the results of the whole batch; missing candidates {missing[:5]}")
    return [(c, found[c.id]) for c in sorted(pending, key=lambda c: c.id)]


def check_late(pending: list[Candidate] | None, failed: dict[int, Any], results: list[Result]) -> list[Result]:
    """:meth:`Optimizer.tell_late`'s checks: no pending batch, only failed candidates, each once; sorted by id."""
    if pending is not None:
        raise RuntimeError("tell_late() while a batch is pending: tell the batch first")
    seen: set[int] = set()
    for r in results:
        cid = int(r.candidate.id)
        if cid not in failed:
            raise ValueError(f"tell_late() for candidate {cid}, which is not a failed one")
        if cid in seen:
            raise ValueError(f"two late results for candidate {cid}")
        seen.add(cid)
    return sorted(results, key=lambda r: int(r.candidate.id))


def kth_best(scores: list[float], k: int) -> float:
    """The k-th lowest finite score (the race bar of optimizers without a parent set); +inf if fewer."""
    finite = sorted(x for x in scores if math.isfinite(x))
    return finite[k - 1] if k >= 1 and len(finite) >= k else math.inf
