"""``hybrid`` — longsearch's own space (the default): LongRoPE2's tail, a head from a searched family, m searched.

A point is (d_rcd, a, q, λ_i for i ≥ d_rcd, m): for i ≥ d_rcd, λ_i ∈ [lower, upper] non-decreasing on the
grid; below d_rcd λ_i = 1 up to a searched start a, then a ramp to λ_{d_rcd} whose shape q blends YaRN's
(harmonic, q = 0) and the NTK shape (geometric, q = 1); m ∈ ``attention: {min, max}``. d_rcd ranges over
0 … d/2−1 by default, so PI (d_rcd = 0), NTK (a = 0, q = 1, d_rcd = d/2−1), YaRN (a = its low index,
d_rcd = its high index, q = 0, its m) and LongRoPE2's NTK-shaped vectors are points of it.

>>> import numpy as np
>>> from longsearch.rope import RopeGeometry
>>> from longsearch.space import SearchSpace
>>> space = SearchSpace.load("hybrid", RopeGeometry(64, 10000.0, 256), 2048)
>>> p = space.make_point(np.full(32, 8.0), 1.3, d_rcd=7, head_start=3, head_shape=0.0)
>>> p.params, [round(float(x), 3) for x in p.lam[:8]]
({'d_rcd': 7, 'head_start': 3, 'head_shape': 0.0}, [1.0, 1.0, 1.0, 1.0, 1.28, 1.778, 2.909, 8.0])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..rope import RopeGeometry, critical_index_lower, rescale
from ..rope import critical_index as theoretical_critical_index
from .base import Point, clip
from .critical import NTK_SHAPED, CriticalSpace

# YaRN's ramp (its high index, its m) with the head kept exact ¼, ½ and ¾ of the way from YaRN's low
# index to its high index.
YARN_RAMPS = "yarn-ramps"


def hybrid_head(d: int, a: int, q: float, lam_d: float) -> np.ndarray:
    """The ``hybrid`` head λ_0 … λ_{d−1}: 1 up to index a, then a ramp to λ_d at d whose shape blends
    YaRN's harmonic ramp 1/((1−t) + t/λ_d) (q = 0) and the NTK shape λ_d^t (q = 1), t = (i−a)/(d−a)."""
    i = np.arange(d, dtype=np.float64)
    out = np.ones(d)
    if d > a:
        t = np.clip((i - a) / (d - a), 0.0, 1.0)
        log_h = -np.log((1.0 - t) + t / lam_d)
        log_g = t * math.log(lam_d)
        out = np.exp((1.0 - q) * log_h + q * log_g)
        out[i <= a] = 1.0
    return out


@dataclass(kw_only=True)
class HybridSpace(CriticalSpace):
    """Points are (λ, m, ``{"d_rcd": d, "head_start": a, "head_shape": q}``); see the module docstring."""

    kind = "hybrid"
    DEFAULT_ATTENTION: ClassVar[Any] = {"min": 1, "max": "1 + 0.4*ln(s)"}
    SPECIAL_SEEDS: ClassVar[dict[str, str]] = {**CriticalSpace.SPECIAL_SEEDS, YARN_RAMPS: "it keeps part of the head exact"}
    STRUCTURE_SLOTS: ClassVar[int] = 3

    @classmethod
    def auto_critical_range(cls, geometry: RopeGeometry) -> tuple[int, int]:
        return 0, geometry.n_freq - 1

    def _ntk_shaped_range(self) -> tuple[int, int]:
        return critical_index_lower(self.geometry), theoretical_critical_index(self.geometry)

    def _repair_vector(self, lam: np.ndarray, m: float, params: dict[str, Any]) -> Point:
        """Needs ``d_rcd`` (``head_start``, ``head_shape`` default 0 and 1): the tail λ[d:] is repaired, the
        head rebuilt from the parameters."""
        d = self._clip_d(params["d_rcd"])
        a = int(min(max(int(params.get("head_start", 0)), 0), d))
        q = round(clip(float(params.get("head_shape", 1.0)), 0.0, 1.0), 4)
        out = np.empty(self.n_freq)
        out[d:] = self.grid.repair(lam[d:])
        out[:d] = hybrid_head(d, a, q, float(out[d]))
        return Point(out, m, {"d_rcd": d, "head_start": a, "head_shape": q})

    # ------------------------------------------------------------ seeds

    def _seed(self, name: str) -> list[tuple[str, Point]]:
        """PI, NTK and YaRN are exact points with their own m; ``yarn-ramps`` YaRN with part of its head exact."""
        if name == NTK_SHAPED:
            return super()._seed(name)
        r = rescale(name if name != YARN_RAMPS else "yarn", self.geometry, self.target_length)
        if name != YARN_RAMPS:
            return [(name, self._fit(r.lam, r.m))]
        y = self._fit(r.lam, 1.0)
        low, high = int(y.params["head_start"]), int(y.params["d_rcd"])
        starts = sorted({low + (high - low) * k // 4 for k in (1, 2, 3)} - {low})
        return [(f"{YARN_RAMPS}@{a}", self.make_point(y.lam, r.m, d_rcd=high, head_start=a, head_shape=0.0)) for a in starts]

    def _fit(self, lam: np.ndarray, m: float) -> Point:
        """The hybrid point nearest to λ in log space (exact for PI, NTK and YaRN)."""
        lo, hi = self.critical_range
        target = np.log(np.maximum(self._as_vector(lam), 1e-12))
        best: tuple[float, int, Point] | None = None
        order = 0
        for d in range(lo, hi + 1):
            for a in range(0, d + 1):
                for q in (0.0, 1.0, 0.5):
                    p = self.make_point(lam, m, d_rcd=d, head_start=a, head_shape=q)
                    dist = float(np.sum((np.log(p.lam) - target) ** 2))
                    order += 1
                    if best is None or dist < best[0] - 1e-15:
                        best = (dist, order, p)
                    if d == 0:
                        break
                if d == 0:
                    break
        assert best is not None
        return best[2]

    # ------------------------------------------------------------ structure hooks

    def _decode_structure(self, u: np.ndarray) -> tuple[dict[str, Any], int]:
        params, d = super()._decode_structure(u)
        params["head_start"] = int(min(d, math.floor(u[1] * (d + 1))))
        params["head_shape"] = float(u[2])
        return params, d

    def _encode_structure(self, p: Point, u: np.ndarray) -> int:
        d = super()._encode_structure(p, u)
        u[1] = (int(p.params["head_start"]) + 0.5) / (d + 1)
        u[2] = float(p.params["head_shape"])
        return d

    def _moves(self) -> list[str]:
        return [*super()._moves(), "head"]

    def _move(self, op: str, lam: np.ndarray, params: dict[str, Any], start: int, rng: np.random.Generator) -> np.ndarray:
        """``head``: the head's start moved or its shape changed; ``critical`` keeps the start within d_rcd."""
        if op == "head":
            if rng.random() < 0.5:
                params["head_start"] = int(params["head_start"]) + int(rng.choice([-2, -1, 1, 2]))
            else:
                params["head_shape"] = float(params["head_shape"]) + rng.normal(0.0, 0.25)
            return lam
        lam = super()._move(op, lam, params, start, rng)
        if op == "critical":
            params["head_start"] = min(int(params["head_start"]), params["d_rcd"])
        return lam

    def _describe_structure(self) -> str:
        return super()._describe_structure() + ", head: exact up to a searched start, then a ramp between YaRN's and the NTK shape"
