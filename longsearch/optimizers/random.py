"""Random search in the same space: the control every optimizer must beat.

Generation 0 holds the space's seeds (so it starts where every other optimizer starts), then
uniform samples of the space's unit encoding (:meth:`SearchSpace.decode_point`); every later
generation is uniform samples. Same budget, batch sizes, dedup, racing and state protocol as the
other optimizers (:mod:`longsearch.optimizers.external`).

>>> from longsearch.rope import RopeGeometry
>>> from longsearch.space import SearchSpace
>>> space = SearchSpace.load("hybrid", RopeGeometry(64, 10000.0, 256), 2048)
>>> len(RandomOptimizer(space, "quick", seed=0).ask())
8
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..space import SearchSpace
from .base import Budget
from .external import ExternalOptimizer


class _Sampler:
    """The library object of random search: a seeded generator and a queue of suggested points."""

    def __init__(self, seed: int, n: int) -> None:
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.n = n
        self.queue: list[np.ndarray] = []


class RandomOptimizer(ExternalOptimizer):
    """Uniform random search over a space with the GA's budget and seeds."""

    family = "random"

    def __init__(self, space: SearchSpace, budget: str | int | Budget, seed: int = 0) -> None:
        super().__init__(space, budget, seed, "uniform")
        self.spec = "random"

    def _create(self) -> Any:
        return _Sampler(self.seed, self.space.n_params)

    def _ask_point(self) -> tuple[Any, np.ndarray]:
        if self._impl.queue:
            return None, self._impl.queue.pop(0)
        return None, self._impl.rng.random(self._impl.n)

    def _tell_point(self, handle: Any, loss: float) -> None:
        pass  # random search learns nothing

    def _suggest(self, u: np.ndarray) -> None:
        self._impl.queue.append(np.asarray(u, dtype=np.float64))
