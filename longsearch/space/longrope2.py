"""``longrope2`` — LongRoPE2: a real critical index d_rcd ∈ [critical_lower, critical_upper]; λ_i ∈ [lower, upper]
non-decreasing on the grid for i ≥ d_rcd; below it the head is NTK-shaped from λ at d_rcd: λ_i = λ_{d_rcd}^(i/d_rcd)
(so λ_0 = 1). ``auto`` bounds are the paper's range [⌈(d/2)·log_b(L/(2π·10))⌉, d_tcd].

>>> import numpy as np
>>> from longsearch.rope import RopeGeometry
>>> from longsearch.space import SearchSpace
>>> space = SearchSpace.load("longrope2", RopeGeometry(64, 10000.0, 256), 2048)
>>> space.critical_range
(5, 13)
>>> p = space.make_point(np.linspace(1.0, 20.0, 32))  # d_rcd: the one whose repair is nearest in log space
>>> p.params, float(p.lam[0]), float(p.lam[-1]), space.contains_point(p)
({'d_rcd': 8}, 1.0, 16.0, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..rope import RopeGeometry, critical_index_lower
from ..rope import critical_index as theoretical_critical_index
from .base import Point
from .critical import CriticalSpace


@dataclass(kw_only=True)
class LongRoPE2Space(CriticalSpace):
    """LongRoPE2's space: points are (λ, m fixed, ``{"d_rcd": d}``) with the NTK-shaped head below d."""

    kind = "longrope2"

    @classmethod
    def auto_critical_range(cls, geometry: RopeGeometry) -> tuple[int, int]:
        return critical_index_lower(geometry), theoretical_critical_index(geometry)

    def _repair_vector(self, lam: np.ndarray, m: float, params: dict[str, Any]) -> Point:
        """λ repaired at ``d_rcd``; without one, at the critical index whose repair is nearest to λ in log space
        (a vector already in the space keeps its own)."""
        d = params.get("d_rcd")
        x = self._repair_at(lam, d)
        return Point(x, m, {"d_rcd": self._critical_index(x) if d is None else self._clip_d(d)})

    def _repair_at(self, lam: np.ndarray, d_rcd: int | None) -> np.ndarray:
        """The tail λ[d:] brought onto the grid (non-decreasing), the head recomputed as λ_d^(i/d)."""
        if d_rcd is None:
            d_rcd = self._nearest_critical(lam)
        d = self._clip_d(d_rcd)
        out = lam.copy()
        out[d:] = self.grid.repair(lam[d:])
        if d:
            i = np.arange(d, dtype=np.float64)
            out[:d] = out[d] ** (i / d)
        return out

    def _critical_index(self, lam: np.ndarray) -> int:
        """d_rcd of a vector: its own if it has the structure, else that of its nearest repair."""
        d = self._structural_critical(lam)
        return d if d is not None else self._nearest_critical(lam)

    def _nearest_critical(self, lam: np.ndarray) -> int:
        own = self._structural_critical(lam)
        if own is not None:
            return own
        lo, hi = self.critical_range
        logs = np.log(np.maximum(lam, 1e-12))
        best_d, best_dist = lo, math.inf
        for d in range(lo, hi + 1):
            cand = self._repair_at(lam, d)
            dist = float(np.sum((np.log(cand) - logs) ** 2))
            if dist < best_dist - 1e-12:
                best_d, best_dist = d, dist
        return best_d

    def _structural_critical(self, lam: np.ndarray) -> int | None:
        """The largest d in range for which λ has the longrope2 structure at d exactly, else None."""
        lo, hi = self.critical_range
        lo_k, hi_k = self.grid.bounds
        for d in range(hi, lo - 1, -1):
            tail = lam[d:]
            k = tail / self.step
            if np.any(np.abs(k - np.round(k)) > 1e-6) or np.any(np.round(k) < lo_k) or np.any(np.round(k) > hi_k):
                continue
            if np.any(np.diff(tail) < -1e-12):
                continue
            if d and not np.allclose(lam[:d], lam[d] ** (np.arange(d) / d), rtol=1e-9, atol=1e-12):
                continue
            return d
        return None
