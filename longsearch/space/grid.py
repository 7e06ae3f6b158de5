"""The grid of searched λ values: a step, bounds and monotonicity (one small value type every kind shares).

>>> import numpy as np
>>> g = Grid(step=0.5, lower=1.0, upper=3.0)
>>> g.bounds
(2, 6)
>>> g.repair(np.array([0.2, 2.26, 1.4, 9.0])).tolist()  # on the grid, within bounds, non-decreasing
[1.0, 2.5, 2.5, 3.0]
>>> g.key(np.array([1.0, 2.5]))
(2, 5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPS = 1e-9
GENE_PROBABILITY = 0.3  # LongRoPE's mutation: each searched λ_i redrawn with this probability


@dataclass(frozen=True)
class Grid:
    """Searched λ values are multiples of ``step`` in [``lower``, ``upper``], non-decreasing if ``monotone``."""

    step: float
    lower: float
    upper: float
    monotone: bool = True

    @property
    def bounds(self) -> tuple[int, int]:
        """Lowest and highest allowed λ as grid indices (λ = k·step)."""
        return math.ceil(self.lower / self.step - EPS), math.floor(self.upper / self.step + EPS)

    def values(self, k: np.ndarray) -> np.ndarray:
        """λ values of grid indices, rounded so that they print cleanly."""
        return np.round(np.asarray(k, dtype=np.float64) * self.step, 10)

    def snap(self, values: np.ndarray) -> np.ndarray:
        """Round to the grid and clip into [lower, upper] (grid values only)."""
        lo_k, hi_k = self.bounds
        k = np.clip(np.round(np.asarray(values, dtype=np.float64) / self.step), lo_k, hi_k)
        return self.values(k)

    def repair(self, values: np.ndarray) -> np.ndarray:
        """Snapped, then made non-decreasing when ``monotone`` (each value raised to the largest before it)."""
        v = self.snap(values)
        if self.monotone:
            v = np.maximum.accumulate(v)
        return v

    def key(self, lam: np.ndarray) -> tuple[int, ...]:
        """Every λ_i as a grid index (round(λ_i / step)): vectors with equal keys are one candidate."""
        return tuple(int(x) for x in np.round(lam / self.step))

    def redraw(self, lam: np.ndarray, start: int, rng: np.random.Generator) -> np.ndarray:
        """LongRoPE's gene mutation: each λ_i, i ≥ ``start``, redrawn on the grid with probability 0.3 —
        between its neighbours when ``monotone``, anywhere within the bounds otherwise."""
        lo_k, hi_k = self.bounds
        x = lam.copy()
        n = x.size
        mask = rng.random(n - start) < GENE_PROBABILITY
        for offset in np.flatnonzero(mask):
            i = start + int(offset)
            if self.monotone:
                left = x[i - 1] if i > start else self.lower
                right = x[i + 1] if i < n - 1 else self.upper
                a = max(lo_k, math.ceil(min(left, right) / self.step - EPS))
                b = min(hi_k, math.floor(max(left, right) / self.step + EPS))
            else:
                a, b = lo_k, hi_k
            if b >= a:
                x[i] = float(self.values(np.asarray(rng.integers(a, b + 1))))
        return x
