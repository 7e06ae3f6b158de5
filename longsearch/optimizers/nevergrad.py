"""nevergrad optimizers (CMA, TwoPointsDE, OnePlusOne, PSO, ...) over a search space, ask/tell.

The space is parametrized as a bounded array on the unit cube (d_rcd first for longrope2, then
one value per possibly-searched frequency), decoded and repaired by the space; see
:mod:`longsearch.optimizers.external` for deduplication, seeds and state. nevergrad has no failed state
(``tell`` takes a loss and clips ``inf`` to 5e20): a failed evaluation is not told at all — its ask stays
open, which nevergrad's asynchronous optimizers allow — and a late success is told on that ask.

Only optimizers checked to work are offered. NGOpt and every MetaModel variant crash with
numpy ≥ 2.4 (nevergrad 1.0.12: ``TypeError: only 0-dimensional arrays can be converted to
Python scalars`` inside the surrogate model) and then hang at exit: they are refused up front.

>>> from longsearch.rope import RopeGeometry
>>> from longsearch.space import SearchSpace
>>> space = SearchSpace.load("longrope2", RopeGeometry(64, 10000.0, 256), 2048)
>>> opt = NevergradOptimizer(space, "quick", seed=0, name="CMA")
>>> len(opt.ask())
8
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from ..errors import InputError
from ..space import SearchSpace
from .base import Budget
from .external import ExternalOptimizer

log = logging.getLogger(__name__)

# Checked on this project's numpy: each runs a batched ask/tell loop to its budget without error.
SUPPORTED: tuple[str, ...] = (
    "CMA",
    "DiagonalCMA",
    "TwoPointsDE",
    "DE",
    "OnePlusOne",
    "DiscreteOnePlusOne",
    "PSO",
    "RealSpacePSO",
    "TBPSA",
    "NaiveTBPSA",
    "RandomSearch",
    "LHSSearch",
    "ScrHammersleySearch",
)
# Names refused with the reason (prefix match, case-insensitive).
REFUSED_PREFIXES: tuple[str, ...] = ("NGOpt", "NGO", "NgIoh", "NgDS", "Shiwa", "CSEC", "Wiz")


def supported_names() -> list[str]:
    return list(SUPPORTED)


def resolve_name(name: str) -> str:
    """The registry spelling of a supported optimizer; InputError for anything else."""
    wanted = name.strip()
    for known in SUPPORTED:
        if known.lower() == wanted.lower():
            return known
    choices = ", ".join(SUPPORTED)
    low = wanted.lower()
    if "metamodel" in low or any(low.startswith(p.lower()) for p in REFUSED_PREFIXES):
        raise InputError(
            f"nevergrad:{wanted} is refused: NGOpt and MetaModel optimizers crash with numpy >= 2.4 and then hang; use one of {choices}"
        )
    raise InputError(f"nevergrad optimizer {wanted!r} is not supported: use one of {choices}")


class NevergradOptimizer(ExternalOptimizer):
    """A nevergrad optimizer with the GA's budget (same evaluations, same batch sizes, same seeds)."""

    family = "nevergrad"
    suggestions_lifo = True

    def __init__(self, space: SearchSpace, budget: str | int | Budget, seed: int = 0, name: str = "TwoPointsDE") -> None:
        super().__init__(space, budget, seed, resolve_name(name))

    def _create(self) -> Any:
        import nevergrad as ng

        param = ng.p.Array(shape=(self.space.n_params,), lower=0.0, upper=1.0)
        param.random_state = np.random.RandomState(self.seed)
        workers = max(self.budget.population, self.budget.per_generation, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # room for the duplicates that are told their known score without an evaluation
            return ng.optimizers.registry[self.name](param, budget=4 * self.budget.evaluations + 16, num_workers=workers)

    def _ask_point(self) -> tuple[Any, np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = self._impl.ask()
        return handle, np.asarray(handle.value, dtype=np.float64)

    def _tell_point(self, handle: Any, loss: float) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._impl.tell(handle, float(loss))

    def _suggest(self, u: np.ndarray) -> None:
        self._impl.suggest(np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0))
