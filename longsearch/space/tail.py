"""What the kinds with a per-frequency searched λ share (``free``, ``longrope2``, ``hybrid``).

Their λ is searched value by value on the grid from a start index on (0, or the critical index d_rcd);
below it, a kind builds the head from its structural parameters. The unit encoding is
(structure slots, one value per possibly-searched frequency, m when searched), and the GA operators are
LongRoPE's gene-wise moves plus a segment move, each kind adding its structural moves.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..rope import rescale
from .base import Point, SearchSpace

CROSSOVER_GENE_PROBABILITY = 0.3 * 0.5


@dataclass(kw_only=True)
class TailSpace(SearchSpace):
    """A space whose λ_i, i ≥ a start index, are searched on the grid (see the module docstring).

    Hooks for the structure below the start: ``STRUCTURE_SLOTS``, ``_first_searched``, ``_start``,
    ``_decode_structure``, ``_encode_structure``, ``_moves`` / ``_move``, ``_describe_structure``.
    """

    STRUCTURE_SLOTS: ClassVar[int] = 0  # unit slots of the structural parameters, before the values

    # ------------------------------------------------------------ structure hooks (none here)

    @property
    def _first_searched(self) -> int:
        """The lowest start index: the first frequency with a value slot."""
        return 0

    def _start(self, params: dict[str, Any]) -> int:
        """The first searched index of a point with these parameters."""
        return 0

    def _decode_structure(self, u: np.ndarray) -> tuple[dict[str, Any], int]:
        """(structural parameters, start index) from the structure slots."""
        return {}, 0

    def _encode_structure(self, p: Point, u: np.ndarray) -> int:
        """Write the structure slots of ``p``; its start index."""
        return 0

    def _moves(self) -> list[str]:
        """Names of this kind's structural mutation moves."""
        return []

    def _move(self, op: str, lam: np.ndarray, params: dict[str, Any], start: int, rng: np.random.Generator) -> np.ndarray:
        """Apply structural move ``op`` (``params`` updated in place); the new λ."""
        raise ValueError(f"unknown move {op!r}")

    def _describe_structure(self) -> str:
        return ""

    # ------------------------------------------------------------ repair

    def _repair(self, lam: np.ndarray | None, m: float, params: dict[str, Any]) -> Point:
        if lam is None:
            raise ValueError("make_point needs λ for this kind of space")
        return self._repair_vector(self._as_vector(lam), m, params)

    @abstractmethod
    def _repair_vector(self, lam: np.ndarray, m: float, params: dict[str, Any]) -> Point:
        """The point nearest to λ (a checked vector of n_freq values) with these parameters."""

    def _raw_seed_points(self) -> list[tuple[str, Point]]:
        return [item for name in self.seed_names for item in self._seed(name)]

    def _seed(self, name: str) -> list[tuple[str, Point]]:
        """The seed points a seed name stands for: a static baseline brought into the space."""
        r = rescale(name, self.geometry, self.target_length)
        return [(name, self.make_point(r.lam, r.m))]

    # ------------------------------------------------------------ unit encoding

    @property
    def n_params(self) -> int:
        """Structure slots, one value per possibly-searched frequency, then m when it is searched."""
        return self.STRUCTURE_SLOTS + self.n_freq - self._first_searched + int(self.searches_m)

    def decode_point(self, u: np.ndarray) -> Point:
        """A point of [0, 1]^n_params → a point of the space (monotone values sorted)."""
        u = self._unit(u)
        m = self._decode_m(u)
        first, k = self._first_searched, self.STRUCTURE_SLOTS
        values = u[k : k + self.n_freq - first]
        params, start = self._decode_structure(u)
        values = values[start - first :]
        vals = self.lower + values * (self.upper - self.lower)
        if self.monotone:
            vals = np.sort(vals)
        lam = np.empty(self.n_freq)
        lam[start:] = vals
        lam[:start] = vals[0] if vals.size else self.lower
        return self.make_point(lam, m, **params)

    def encode_point(self, p: Point) -> np.ndarray:
        """Inverse of :meth:`decode_point` for a point of the space (used to inject the seeds)."""
        u = np.zeros(self.n_params)
        self._encode_m(p, u)
        width = max(self.upper - self.lower, 1e-12)
        first, k = self._first_searched, self.STRUCTURE_SLOTS
        d = self._encode_structure(p, u)
        # the unused slots (indices first..d-1) take the first searched value; decode ignores them
        u[k : k + self.n_freq - first] = (np.concatenate([np.full(d - first, p.lam[d]), p.lam[d:]]) - self.lower) / width
        return np.clip(u, 0.0, 1.0)

    # ------------------------------------------------------------ GA operators

    def mutate(self, p: Point, rng: np.random.Generator) -> Point:
        """One operator, and with probability ½ a second, out of ``genes`` (LongRoPE: each searched λ_i
        redrawn with probability 0.3 between its neighbours), ``segment`` (a contiguous run of λ scaled or
        shifted — the move that changes a plateau's interior), the kind's structural moves and
        ``attention`` (m, when searched)."""
        ops = ["genes", "segment", *self._moves()]
        if self.searches_m:
            ops.append("attention")
        chosen = [ops[int(rng.integers(len(ops)))]]
        if rng.random() < 0.5:
            other = [o for o in ops if o != chosen[0]]
            chosen.append(other[int(rng.integers(len(other)))])
        lam, m, params = p.lam.copy(), p.m, dict(p.params)
        for op in chosen:
            start = self._start(params)
            if op == "genes":
                lam = self.grid.redraw(lam, start, rng)
            elif op == "segment":
                i = int(rng.integers(start, self.n_freq))
                j = int(rng.integers(i, self.n_freq))
                before = float(lam[i])
                if rng.random() < 0.5:
                    lam[i : j + 1] *= math.exp(rng.normal(0.0, 0.15))
                else:
                    lam[i : j + 1] += rng.normal(0.0, 0.08) * (self.upper - self.lower)
                lam = np.maximum(lam, 1e-6)
                if self.monotone and lam[i] < before:  # lowered: pull the values before it down with it
                    lam[start : j + 1] = np.minimum.accumulate(lam[start : j + 1][::-1])[::-1]
            elif op == "attention":
                m = m * math.exp(rng.normal(0.0, 0.06))
            else:
                lam = self._move(op, lam, params, start, rng)
        return self.make_point(lam, m, **params)

    def crossover(self, p1: Point, p2: Point, rng: np.random.Generator) -> Point:
        """LongRoPE's gene-wise crossover: each λ_i (and each structural parameter, and m) taken from the
        second parent with probability 0.15, then repaired."""
        mask = rng.random(self.n_freq) < CROSSOVER_GENE_PROBABILITY
        lam = np.where(mask, p2.lam, p1.lam)
        params = dict(p1.params)
        for key in sorted(params):
            if key in p2.params and rng.random() < CROSSOVER_GENE_PROBABILITY:
                params[key] = p2.params[key]
        m = p2.m if self.searches_m and rng.random() < CROSSOVER_GENE_PROBABILITY else p1.m
        return self.make_point(lam, m, **params)

    def describe(self) -> str:
        return (
            f"{self.name} ({self.kind}): λ ∈ [{self.lower:g}, {self.upper:g}] step {self.step:g}"
            f"{', non-decreasing' if self.monotone else ''}{self._describe_structure()}, {self._describe_m()}"
        )
