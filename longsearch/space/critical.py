"""What the kinds with a critical index share (``longrope2``, ``hybrid``).

λ_i for i ≥ d_rcd is LongRoPE2's searched tail (on the grid, non-decreasing); d_rcd itself is searched in
``critical_range`` = [critical_lower, critical_upper]; below it each kind builds its own head. Adds the
unit slot of d_rcd, the ``critical`` mutation move and the ``ntk-shaped`` seeds.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError
from ..rope import RopeGeometry, attention_factor
from .base import Point
from .grid import Grid
from .spec import parse_critical_range
from .tail import TailSpace

# LongRoPE2's NTK-shaped vectors λ_i = s^(i/d) (capped at ``upper``) at three critical indices.
NTK_SHAPED = "ntk-shaped"


@dataclass(kw_only=True)
class CriticalSpace(TailSpace):
    """A tail space whose start is a searched critical index d_rcd ∈ ``critical_range``."""

    KEYS: ClassVar[tuple[str, ...]] = ("critical_lower", "critical_upper")
    DEFAULT_SEEDS: ClassVar[tuple[str, ...]] = ("pi", "ntk", "yarn", NTK_SHAPED)
    SPECIAL_SEEDS: ClassVar[dict[str, str]] = {NTK_SHAPED: "it is shaped by the critical index"}
    STRUCTURE_SLOTS: ClassVar[int] = 1

    critical_range: tuple[int, int]

    @classmethod
    def parse_keys(cls, spec: dict[str, Any], geometry: RopeGeometry, grid: Grid, where: str) -> dict[str, Any]:
        if not grid.monotone:
            raise InputError(f"{where}monotone: false is not supported for kind {cls.kind} (its λ is non-decreasing by construction)")
        return {"critical_range": parse_critical_range(spec, cls.auto_critical_range(geometry), geometry.n_freq, where)}

    @classmethod
    @abstractmethod
    def auto_critical_range(cls, geometry: RopeGeometry) -> tuple[int, int]:
        """The range of d_rcd that ``critical_lower/upper: auto`` stand for."""

    def _ntk_shaped_range(self) -> tuple[int, int]:
        """The lowest and highest d of the ``ntk-shaped`` seeds (their middle is the third)."""
        return self.critical_range

    def _clip_d(self, d: Any) -> int:
        lo, hi = self.critical_range
        return int(min(max(int(d), lo), hi))

    # ------------------------------------------------------------ structure hooks

    @property
    def _first_searched(self) -> int:
        return self.critical_range[0]

    def _start(self, params: dict[str, Any]) -> int:
        return int(params.get("d_rcd", 0))

    def _decode_structure(self, u: np.ndarray) -> tuple[dict[str, Any], int]:
        lo, hi = self.critical_range
        d = int(min(hi, lo + math.floor(u[0] * (hi - lo + 1))))
        return {"d_rcd": d}, d

    def _encode_structure(self, p: Point, u: np.ndarray) -> int:
        lo, hi = self.critical_range
        d = int(p.params["d_rcd"])
        u[0] = (d - lo + 0.5) / (hi - lo + 1)
        return d

    def _moves(self) -> list[str]:
        lo, hi = self.critical_range
        return ["critical"] if lo < hi else []

    def _move(self, op: str, lam: np.ndarray, params: dict[str, Any], start: int, rng: np.random.Generator) -> np.ndarray:
        """``critical``: d_rcd moved by up to 3, with the tail kept in place or slid along with it."""
        if op != "critical":
            return super()._move(op, lam, params, start, rng)
        lo, hi = self.critical_range
        delta = int(rng.choice([-3, -2, -1, 1, 2, 3]))
        new_d = int(min(max(start + delta, lo), hi))
        if rng.random() < 0.5 and new_d != start:  # slide the tail along with d_rcd
            tail = lam[start:]
            lam[new_d:] = np.concatenate([tail, np.full(max(0, start - new_d), tail[-1])])[: self.n_freq - new_d]
        params["d_rcd"] = new_d
        return lam

    def _seed(self, name: str) -> list[tuple[str, Point]]:
        if name != NTK_SHAPED:
            return super()._seed(name)
        out = []
        longrope_m = attention_factor("longrope", self.scale, self.geometry.original_length)
        lo, hi = self._ntk_shaped_range()
        for d in sorted({lo, (lo + hi) // 2, hi}):
            d = self._clip_d(d)
            i = np.arange(self.n_freq, dtype=np.float64)
            base = max(self.lower, self.scale)
            lam = np.minimum(base ** (i / max(d, 1)), self.upper)
            out.append((f"{NTK_SHAPED}@{d}", self.make_point(lam, longrope_m, d_rcd=d, head_start=0, head_shape=1.0)))
        return out

    def _describe_structure(self) -> str:
        return f", d_rcd ∈ [{self.critical_range[0]}, {self.critical_range[1]}]"

    def _resolved(self) -> dict[str, Any]:
        return {"critical_range": list(self.critical_range)}
