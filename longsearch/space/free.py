"""``free`` — LongRoPE (v1): every λ_i searched on the grid in [lower, upper], non-decreasing if ``monotone``.

The ``longrope`` preset is this kind with LongRoPE's bounds [1, 1 + s] and m fixed.

>>> from longsearch.rope import RopeGeometry
>>> from longsearch.space import SearchSpace
>>> space = SearchSpace.load("longrope", RopeGeometry(64, 10000.0, 256), 2048)
>>> type(space).__name__, space.n_params, space.describe()
('FreeSpace', 32, 'longrope (free): λ ∈ [1, 9] step 0.01, non-decreasing, m = 1.1726')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .base import Point
from .tail import TailSpace


@dataclass(kw_only=True)
class FreeSpace(TailSpace):
    """λ_i ∈ [lower, upper] on the grid for every i; no structural parameters (points have ``params == {}``)."""

    kind = "free"
    DEFAULT_BOUNDS: ClassVar[tuple[Any, Any]] = (1.0, "1 + s")

    def _repair_vector(self, lam: np.ndarray, m: float, params: dict[str, Any]) -> Point:
        return Point(self.grid.repair(lam), m, {})
