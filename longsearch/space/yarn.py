"""``yarn`` — the YaRN family: β_fast, β_slow and m searched (three numbers, log-uniform β in the unit encoding).

>>> from longsearch.rope import RopeGeometry
>>> from longsearch.space import SearchSpace
>>> space = SearchSpace.load("yarn", RopeGeometry(64, 10000.0, 256), 2048)
>>> space.n_params, space.seed_points()["seed:yarn"].params
(3, {'beta_fast': 32.0, 'beta_slow': 1.0})
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..rope import RopeGeometry, rescale, yarn_method
from .base import Point, SearchSpace, clip
from .grid import Grid
from .spec import parse_flag, parse_range


def _log_lerp(bounds: tuple[float, float], u: float) -> float:
    lo, hi = bounds
    return float(math.exp(math.log(lo) + float(u) * (math.log(hi) - math.log(lo))))


def _log_unlerp(bounds: tuple[float, float], x: float) -> float:
    lo, hi = bounds
    return 0.5 if hi <= lo else float((math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo)))


@dataclass(kw_only=True)
class YarnSpace(SearchSpace):
    """Points are (YaRN's λ, m, ``{"beta_fast": β_f, "beta_slow": β_s}``); the grid serves only the dedup key."""

    kind = "yarn"
    KEYS: ClassVar[tuple[str, ...]] = ("beta_fast", "beta_slow", "truncate")
    DEFAULT_ATTENTION: ClassVar[Any] = {"min": 1, "max": "1 + 0.4*ln(s)"}
    DEFAULT_SEEDS: ClassVar[tuple[str, ...]] = ("yarn",)

    beta_fast: tuple[float, float]
    beta_slow: tuple[float, float]
    truncate: bool = True

    @classmethod
    def parse_keys(cls, spec: dict[str, Any], geometry: RopeGeometry, grid: Grid, where: str) -> dict[str, Any]:
        return {
            "beta_fast": parse_range(spec.get("beta_fast", [2.0, 128.0]), "beta_fast", where),
            "beta_slow": parse_range(spec.get("beta_slow", [0.125, 4.0]), "beta_slow", where),
            "truncate": parse_flag(spec.get("truncate", True), "truncate", where),
        }

    @classmethod
    def refuse_seed(cls, name: str, given: str) -> str | None:
        return None if name == "yarn" else f"seed {given!r} is not a point of the YaRN family: kind yarn takes the seed yarn only"

    def _resolved(self) -> dict[str, Any]:
        return {"beta_fast": list(self.beta_fast), "beta_slow": list(self.beta_slow)}

    def _repair(self, lam: np.ndarray | None, m: float, params: dict[str, Any]) -> Point:
        """λ from ``beta_fast`` / ``beta_slow`` (defaults 32 and 1, clipped into their ranges, β_slow < β_fast);
        the λ given is ignored."""
        bf = clip(float(params.get("beta_fast", 32.0)), *self.beta_fast)
        bs = clip(float(params.get("beta_slow", 1.0)), *self.beta_slow)
        if bs >= bf:  # the fast boundary must turn more often than the slow one
            bf, bs = max(bf, bs), min(bf, bs)
            if bs >= bf:
                bs = bf / 2
        bf, bs = round(bf, 4), round(bs, 4)
        lam_y = yarn_method(self.geometry, self.target_length, beta_fast=bf, beta_slow=bs, attention=m, truncate=self.truncate).lam
        return Point(lam_y, m, {"beta_fast": bf, "beta_slow": bs})

    def _raw_seed_points(self) -> list[tuple[str, Point]]:
        r = rescale("yarn", self.geometry, self.target_length)
        return [("yarn", self.make_point(None, r.m, beta_fast=32.0, beta_slow=1.0))]

    @property
    def n_params(self) -> int:
        """β_fast, β_slow, then m when it is searched."""
        return 2 + int(self.searches_m)

    def decode_point(self, u: np.ndarray) -> Point:
        u = self._unit(u)
        m = self._decode_m(u)
        bf = _log_lerp(self.beta_fast, u[0])
        bs = _log_lerp(self.beta_slow, u[1])
        return self.make_point(None, m, beta_fast=bf, beta_slow=bs)

    def encode_point(self, p: Point) -> np.ndarray:
        u = np.zeros(self.n_params)
        self._encode_m(p, u)
        u[0] = _log_unlerp(self.beta_fast, p.params["beta_fast"])
        u[1] = _log_unlerp(self.beta_slow, p.params["beta_slow"])
        return np.clip(u, 0.0, 1.0)

    def mutate(self, p: Point, rng: np.random.Generator) -> Point:
        """β_fast, β_slow, m each perturbed with probability ½ (at least one) in the unit encoding."""
        u = self.encode_point(p)
        mask = rng.random(u.size) < 0.5
        if not mask.any():
            mask[int(rng.integers(u.size))] = True
        u = np.clip(u + mask * rng.normal(0.0, 0.12, u.size), 0.0, 1.0)
        return self.decode_point(u)

    def crossover(self, p1: Point, p2: Point, rng: np.random.Generator) -> Point:
        """Each number from either parent (½)."""
        u1, u2 = self.encode_point(p1), self.encode_point(p2)
        mask = rng.random(u1.size) < 0.5
        return self.decode_point(np.where(mask, u2, u1))

    def describe(self) -> str:
        bf, bs = self.beta_fast, self.beta_slow
        return f"{self.name} (yarn family): β_fast ∈ [{bf[0]:g}, {bf[1]:g}], β_slow ∈ [{bs[0]:g}, {bs[1]:g}], {self._describe_m()}"
