"""Search spaces: which rescale vectors λ a search may propose, and how to bring any λ into them.

A space is read from a YAML preset (``longrope2``, ``longrope``; shipped in
``longsearch/search_spaces/``) or from a user's YAML file, resolved for one model geometry and
target length. It owns the candidate grid, the bounds, monotonicity, LongRoPE2's critical-index
structure, the seed vectors and the dedup key.

>>> from longsearch.rope import RopeGeometry
>>> g = RopeGeometry(rotary_dim=64, base=10000.0, original_length=256)
>>> space = SearchSpace.load("longrope2", g, target_length=2048)
>>> space.critical_range
(5, 13)
>>> list(space.seeds())
['seed:pi', 'seed:ntk+yarn', 'seed:ntk-shaped@5', 'seed:ntk-shaped@9', 'seed:ntk-shaped@13']
>>> import numpy as np
>>> lam = space.repair(np.linspace(1.0, 20.0, 32), d_rcd=9)
>>> space.contains(lam), space.critical_index(lam), float(lam[9]), float(lam[-1])
(True, 9, 8.0, 16.0)

Kinds:

* ``longrope2`` — LongRoPE2: a real critical index d_rcd ∈ [critical_lower, critical_upper]; for
  i ≥ d_rcd, λ_i ∈ [lower, upper] (non-decreasing, on the grid); for i < d_rcd the head is
  NTK-shaped from λ at d_rcd: λ_i = λ_{d_rcd}^(i/d_rcd) (so λ_0 = 1).
* ``free`` — LongRoPE v1: every λ_i ∈ [lower, upper] on the grid, non-decreasing if ``monotone``.
"""

from __future__ import annotations

import ast
import copy
import logging
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .rope import (
    RopeGeometry,
    attention_factor,
    baseline_names,
    critical_index as theoretical_critical_index,
    critical_index_lower,
    get_method,
    rescale,
    scale_ratio,
)

log = logging.getLogger(__name__)

PRESETS_PACKAGE = "longsearch.search_spaces"
KINDS = ("longrope2", "free")
ALLOWED_KEYS = {
    "kind",
    "description",
    "step",
    "lower",
    "upper",
    "monotone",
    "critical_lower",
    "critical_upper",
    "attention",
    "seeds",
    "n_mutated_seeds",
}
# Seeds the spaces know: every static baseline of rope.py, plus LongRoPE2's NTK-shaped vectors.
NTK_SHAPED = "ntk-shaped"
_EPS = 1e-9


def preset_names() -> list[str]:
    """Names of the shipped presets (``longrope2``, ``longrope``, ...)."""
    root = resources.files(PRESETS_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """The file of a shipped preset."""
    return Path(str(resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml")))


# ---------------------------------------------------------------- bound expressions

def eval_bound(expr: Any, s: float, key: str = "bound", where: str = "") -> float:
    """Evaluate a bound: a number, or arithmetic in s such as ``"s"``, ``"2s"``, ``"1 + s"``, ``"1.5*s - 0.5"``."""
    hint = "write a number or an expression in s such as '2s', '1 + s' or '1.5*s'"
    if isinstance(expr, bool):
        raise InputError(f"{where}{key} must be a number or an expression in s, got {expr!r}: {hint}")
    if isinstance(expr, (int, float)):
        value = float(expr)
    elif isinstance(expr, str):
        text = expr.strip().lower().replace("×", "*").replace("·", "*")
        text = re.sub(r"(\d|\.)\s*s\b", r"\1*s", text)  # 2s -> 2*s
        try:
            value = float(_eval_node(ast.parse(text, mode="eval").body, s))
        except (SyntaxError, ValueError, ZeroDivisionError):
            raise InputError(f"{where}{key}: cannot read {expr!r}; {hint}") from None
    else:
        raise InputError(f"{where}{key} must be a number or an expression in s, got {expr!r}: {hint}")
    if not math.isfinite(value):
        raise InputError(f"{where}{key} evaluates to {value}: bounds must be finite")
    return value


def _eval_node(node: ast.AST, s: float) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id == "s":
        return s
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _eval_node(node.operand, s)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _eval_node(node.left, s), _eval_node(node.right, s)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        return a / b
    raise ValueError("unsupported expression")


# ---------------------------------------------------------------- the space


@dataclass
class SearchSpace:
    """A search space resolved for one geometry and target length (see the module docstring).

    ``lower``/``upper`` are the resolved bounds of a searched λ_i; ``critical_range`` is
    (lowest, highest) d_rcd for ``longrope2`` and None for ``free``; ``attention`` is m.
    """

    name: str
    geometry: RopeGeometry
    target_length: int
    n_freq: int
    step: float
    attention: float
    kind: str
    lower: float
    upper: float
    monotone: bool
    critical_range: tuple[int, int] | None
    seed_names: list[str]
    n_mutated_seeds: int | None
    spec: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    # ------------------------------------------------------------ construction

    @classmethod
    def load(cls, name_or_path: str, geometry: RopeGeometry, target_length: int) -> "SearchSpace":
        """A preset by name (``longrope2``, ``longrope``) or a YAML file path, resolved for the geometry and target."""
        path = Path(str(name_or_path)).expanduser()
        looks_like_path = path.suffix.lower() in (".yaml", ".yml") or "/" in str(name_or_path) or path.exists()
        if looks_like_path:
            if not path.is_file():
                raise InputError(f"search space file {str(path)!r} not found: give a YAML file or a preset ({', '.join(preset_names())})")
            name, source = path.stem, str(path)
        else:
            name = str(name_or_path).strip().lower()
            if name not in preset_names():
                raise InputError(
                    f"unknown search space {name_or_path!r}: choose a preset ({', '.join(preset_names())}) or give a YAML file"
                )
            path, source = preset_path(name), f"preset:{name}"
        spec = _read_yaml(path)
        return cls.from_spec(spec, geometry, target_length, name=name, source=source)

    @classmethod
    def from_spec(
        cls, spec: dict[str, Any], geometry: RopeGeometry, target_length: int, name: str = "custom", source: str = ""
    ) -> "SearchSpace":
        """Validate a space mapping (the YAML's content) and resolve it; errors name the key and the file."""
        where = f"{source}: " if source else ""
        if not isinstance(spec, dict):
            raise InputError(f"{where}a search space must be a YAML mapping of keys (kind, step, lower, upper, ...)")
        unknown = sorted(set(spec) - ALLOWED_KEYS)
        if unknown:
            raise InputError(f"{where}unknown key {unknown[0]!r}: allowed keys are {', '.join(sorted(ALLOWED_KEYS))}")
        target_length = int(target_length)
        if target_length <= geometry.original_length:
            raise InputError(
                f"target length {target_length} is not above the model's window {geometry.original_length}: choose a longer target"
            )
        s = scale_ratio(geometry, target_length)
        kind = str(spec.get("kind", "longrope2")).strip().lower()
        if kind not in KINDS:
            raise InputError(f"{where}kind must be one of {', '.join(KINDS)}, got {spec.get('kind')!r}")

        step = spec.get("step", 0.01)
        if isinstance(step, str):  # YAML 1.1 reads 1e-2 as a string
            try:
                step = float(step)
            except ValueError:
                pass
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not (math.isfinite(step) and step > 0):
            raise InputError(f"{where}step must be a positive number (the grid of λ values, e.g. 0.01), got {step!r}")
        step = float(step)

        default_lower, default_upper = ("s", "2s") if kind == "longrope2" else (1.0, "1 + s")
        lower = eval_bound(spec.get("lower", default_lower), s, "lower", where)
        upper = eval_bound(spec.get("upper", default_upper), s, "upper", where)
        if lower <= 0:
            raise InputError(f"{where}lower resolves to {lower:g} at s = {s:g}: every λ must be positive")
        if lower > upper:
            raise InputError(f"{where}lower ({lower:g}) is above upper ({upper:g}) at s = {s:g}: no λ fits the bounds")
        lo_k, hi_k = math.ceil(lower / step - _EPS), math.floor(upper / step + _EPS)
        if lo_k > hi_k:
            raise InputError(f"{where}no grid value (step {step:g}) lies within [{lower:g}, {upper:g}]: widen the bounds or refine the step")

        monotone = spec.get("monotone", True)
        if not isinstance(monotone, bool):
            raise InputError(f"{where}monotone must be true or false, got {monotone!r}")

        n = geometry.n_freq
        critical_range: tuple[int, int] | None = None
        if kind == "longrope2":
            if not monotone:
                raise InputError(f"{where}monotone: false is not supported for kind longrope2 (its λ is non-decreasing by construction)")
            lo_spec, hi_spec = spec.get("critical_lower", "auto"), spec.get("critical_upper", "auto")
            c_lo = _critical_bound(lo_spec, critical_index_lower(geometry), "critical_lower", where)
            c_hi = _critical_bound(hi_spec, theoretical_critical_index(geometry), "critical_upper", where)
            if c_hi > n - 1:  # at least one searched dimension
                if not _is_auto(hi_spec):
                    raise InputError(f"{where}critical_upper ({c_hi}) must be below the number of frequencies ({n})")
                c_hi = n - 1
            if c_lo > c_hi and _is_auto(lo_spec):
                c_lo = c_hi
            if c_lo > c_hi:
                raise InputError(f"{where}critical_lower ({c_lo}) must not exceed critical_upper ({c_hi})")
            critical_range = (c_lo, c_hi)
        else:
            for key in ("critical_lower", "critical_upper"):
                if key in spec:
                    raise InputError(f"{where}{key} applies only to kind longrope2")

        attention_policy = spec.get("attention", "longrope")
        try:
            m = attention_factor(attention_policy, s, geometry.original_length)
        except InputError as e:
            raise InputError(f"{where}attention: {e}") from None

        seeds = spec.get("seeds", ["pi", "ntk", "yarn"] + ([NTK_SHAPED] if kind == "longrope2" else []))
        if isinstance(seeds, str):
            seeds = [seeds]
        if not isinstance(seeds, list) or not seeds or not all(isinstance(x, str) for x in seeds):
            raise InputError(f"{where}seeds must be a non-empty list of names (pi, ntk, yarn, llama3, ntk-shaped)")
        known = [b for b in baseline_names() if not get_method(b).dynamic] + [NTK_SHAPED]
        seed_names: list[str] = []
        for x in seeds:
            key = x.strip().lower()
            if key == NTK_SHAPED:
                if kind != "longrope2":
                    raise InputError(f"{where}seed 'ntk-shaped' needs kind longrope2 (it is shaped by the critical index)")
            else:
                try:
                    method = get_method(key)
                except InputError:
                    method = None
                if method is None or method.dynamic or not method.baseline:
                    raise InputError(f"{where}unknown seed {x!r}: seeds are {', '.join(known)}")
                key = method.name
            if key not in seed_names:
                seed_names.append(key)

        n_mut = spec.get("n_mutated_seeds", None)
        if n_mut is not None and (isinstance(n_mut, bool) or not isinstance(n_mut, int) or n_mut < 0):
            raise InputError(f"{where}n_mutated_seeds must be a non-negative integer or null (fill the population), got {n_mut!r}")

        space = cls(
            name=name,
            geometry=geometry,
            target_length=target_length,
            n_freq=n,
            step=step,
            attention=m,
            kind=kind,
            lower=lower,
            upper=upper,
            monotone=monotone,
            critical_range=critical_range,
            seed_names=seed_names,
            n_mutated_seeds=n_mut,
            spec=copy.deepcopy(spec),
            source=source,
        )
        if not space.seeds():
            raise InputError(f"{where}no seed can be repaired into the space: check lower/upper and the seeds list")
        return space

    # ------------------------------------------------------------ serialization

    def to_dict(self) -> dict[str, Any]:
        """The resolved space (JSON-serializable): the spec it came from and every resolved number."""
        g = self.geometry
        return {
            "name": self.name,
            "source": self.source,
            "spec": copy.deepcopy(self.spec),
            "kind": self.kind,
            "geometry": {"rotary_dim": g.rotary_dim, "base": g.base, "original_length": g.original_length},
            "target_length": self.target_length,
            "scale": scale_ratio(g, self.target_length),
            "n_freq": self.n_freq,
            "step": self.step,
            "lower": self.lower,
            "upper": self.upper,
            "monotone": self.monotone,
            "critical_range": list(self.critical_range) if self.critical_range else None,
            "attention": self.attention,
            "seeds": list(self.seed_names),
            "n_mutated_seeds": self.n_mutated_seeds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], geometry: RopeGeometry, target_length: int) -> "SearchSpace":
        """Rebuild a space written by :meth:`to_dict`; refuses one resolved for another geometry or target."""
        try:
            spec, name, source = d["spec"], d["name"], d.get("source", "")
        except (KeyError, TypeError):
            raise InputError("the stored search space is malformed (no 'spec' or 'name'): it was not written by longsearch") from None
        space = cls.from_spec(spec, geometry, target_length, name=name, source=source)
        mine = space.to_dict()
        for key in ("geometry", "target_length", "kind", "step", "lower", "upper", "critical_range", "attention", "seeds"):
            if key in d and _differs(d[key], mine[key]):
                raise InputError(
                    f"the stored search space was resolved with {key} = {d[key]!r}, not {mine[key]!r}: "
                    "it belongs to another model, target or space"
                )
        return space

    # ------------------------------------------------------------ grid and bounds

    @property
    def scale(self) -> float:
        return scale_ratio(self.geometry, self.target_length)

    @property
    def grid_bounds(self) -> tuple[int, int]:
        """Lowest and highest allowed λ as grid indices (λ = k·step)."""
        return math.ceil(self.lower / self.step - _EPS), math.floor(self.upper / self.step + _EPS)

    def snap(self, values: np.ndarray) -> np.ndarray:
        """Round to the grid and clip into [lower, upper] (grid values only)."""
        lo_k, hi_k = self.grid_bounds
        k = np.clip(np.round(np.asarray(values, dtype=np.float64) / self.step), lo_k, hi_k)
        return self.from_grid(k)

    def from_grid(self, k: np.ndarray) -> np.ndarray:
        """λ values of grid indices, rounded so that they print cleanly."""
        return np.round(np.asarray(k, dtype=np.float64) * self.step, 10)

    def searched_start(self, d_rcd: int | None) -> int:
        """First searched index: d_rcd for longrope2, 0 for free."""
        return 0 if d_rcd is None else int(d_rcd)

    # ------------------------------------------------------------ candidates

    def build(self, tail: np.ndarray, d_rcd: int | None) -> np.ndarray:
        """Full λ from the searched values (indices ≥ d_rcd, or all for free) and d_rcd; repairs them."""
        lam = np.empty(self.n_freq)
        start = self.searched_start(d_rcd)
        lam[start:] = np.asarray(tail, dtype=np.float64)
        if start:
            lam[:start] = lam[start]
        return self.repair(lam, d_rcd)

    def repair(self, lam: np.ndarray, d_rcd: int | None = None) -> np.ndarray:
        """Bring any λ into the space: on the grid, within bounds, non-decreasing where required.

        For longrope2 the head below d_rcd is recomputed as λ_{d_rcd}^(i/d_rcd). With no ``d_rcd``
        the critical index is the one whose repaired vector is nearest to ``lam`` in log space
        (a vector already in the space keeps its own).
        """
        lam = self._as_vector(lam)
        if self.kind != "longrope2":
            return self._repair_tail(lam)
        if d_rcd is None:
            d_rcd = self._nearest_critical(lam)
        lo, hi = self.critical_range  # type: ignore[misc]
        d = int(min(max(int(d_rcd), lo), hi))
        out = lam.copy()
        out[d:] = self._repair_tail(lam[d:])
        if d:
            i = np.arange(d, dtype=np.float64)
            out[:d] = out[d] ** (i / d)
        return out

    def _repair_tail(self, values: np.ndarray) -> np.ndarray:
        v = self.snap(values)
        if self.monotone:
            v = np.maximum.accumulate(v)
        return v

    def _nearest_critical(self, lam: np.ndarray) -> int:
        own = self._structural_critical(lam)
        if own is not None:
            return own
        lo, hi = self.critical_range  # type: ignore[misc]
        logs = np.log(np.maximum(lam, 1e-12))
        best_d, best_dist = lo, math.inf
        for d in range(lo, hi + 1):
            cand = self.repair(lam, d)
            dist = float(np.sum((np.log(cand) - logs) ** 2))
            if dist < best_dist - 1e-12:
                best_d, best_dist = d, dist
        return best_d

    def _structural_critical(self, lam: np.ndarray) -> int | None:
        """The largest d in range for which λ has the longrope2 structure at d exactly, else None."""
        lo, hi = self.critical_range  # type: ignore[misc]
        lo_k, hi_k = self.grid_bounds
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

    def contains(self, lam: np.ndarray) -> bool:
        """Whether λ is already a point of the space (repair would not change it)."""
        lam = self._as_vector(lam)
        return bool(np.allclose(self.repair(lam), lam, rtol=0, atol=1e-9))

    def key(self, lam: np.ndarray) -> tuple[int, ...]:
        """Dedup key: every λ_i as a grid index (round(λ_i / step)). Equal keys are never evaluated twice."""
        lam = self._as_vector(lam)
        return tuple(int(x) for x in np.round(lam / self.step))

    def critical_index(self, lam: np.ndarray) -> int | None:
        """d_rcd of a candidate (that of its repair if λ is not in the space); None for spaces without one."""
        if self.kind != "longrope2":
            return None
        lam = self._as_vector(lam)
        d = self._structural_critical(lam)
        return d if d is not None else self._nearest_critical(lam)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, int | None]:
        """A uniformly random point: d_rcd uniform; searched values uniform on the grid (sorted if monotone)."""
        d = None
        if self.critical_range:
            d = int(rng.integers(self.critical_range[0], self.critical_range[1] + 1))
        lo_k, hi_k = self.grid_bounds
        k = rng.integers(lo_k, hi_k + 1, size=self.n_freq - self.searched_start(d))
        if self.monotone:
            k = np.sort(k)
        return self.build(self.from_grid(k), d), d

    # ------------------------------------------------------------ seeds

    def seeds(self) -> dict[str, np.ndarray]:
        """``"seed:NAME"`` → the seed repaired into the space, in the order of the spec.

        Seeds that repair onto the same point become one entry ``"seed:A+B"`` (e.g. in longrope2
        every λ ≤ s is lifted to s, so PI and YaRN may meet).

        ``ntk-shaped`` expands to LongRoPE2's NTK-shaped vectors λ_i = s^(i/d) (capped at ``upper``)
        at the lowest, middle and highest d_rcd: ``seed:ntk-shaped@D``.
        """
        names: dict[tuple[int, ...], list[str]] = {}
        vectors: dict[tuple[int, ...], np.ndarray] = {}
        for name, lam, d in self._raw_seeds():
            fixed = self.repair(lam, d)
            k = self.key(fixed)
            if k not in vectors:
                vectors[k] = fixed
                names[k] = []
            names[k].append(name)
        # seeds that repair onto the same point are one candidate named after all of them
        return {"seed:" + "+".join(names[k]): vectors[k] for k in vectors}

    def _raw_seeds(self) -> list[tuple[str, np.ndarray, int | None]]:
        seeds: list[tuple[str, np.ndarray, int | None]] = []
        for name in self.seed_names:
            if name == NTK_SHAPED:
                lo, hi = self.critical_range  # type: ignore[misc]
                for d in sorted({lo, (lo + hi) // 2, hi}):
                    i = np.arange(self.n_freq, dtype=np.float64)
                    base = max(self.lower, self.scale)
                    lam = np.minimum(base ** (i / max(d, 1)), self.upper)
                    seeds.append((f"{NTK_SHAPED}@{d}", lam, d))
            else:
                seeds.append((name, rescale(name, self.geometry, self.target_length).lam, None))
        return seeds

    # ------------------------------------------------------------ normalized encoding (nevergrad, optuna)

    @property
    def n_params(self) -> int:
        """Length of the unit-cube encoding: [d_rcd,] then one value per possibly-searched index."""
        if self.critical_range:
            return 1 + self.n_freq - self.critical_range[0]
        return self.n_freq

    def decode_unit(self, u: np.ndarray) -> tuple[np.ndarray, int | None]:
        """A point of [0, 1]^n_params → (repaired λ, d_rcd). Monotone values are sorted (uniform prior over monotone vectors)."""
        u = np.clip(np.asarray(u, dtype=np.float64).reshape(-1), 0.0, 1.0)
        if u.size != self.n_params:
            raise ValueError(f"expected {self.n_params} unit parameters, got {u.size}")
        d = None
        values = u
        if self.critical_range:
            lo, hi = self.critical_range
            d = int(min(hi, lo + math.floor(u[0] * (hi - lo + 1))))
            values = u[1 + (d - lo):]
        vals = self.lower + values * (self.upper - self.lower)
        if self.monotone:
            vals = np.sort(vals)
        return self.build(vals, d), d

    def encode_unit(self, lam: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`decode_unit` for a point of the space (used to inject the seeds)."""
        lam = self.repair(lam)
        width = max(self.upper - self.lower, 1e-12)
        if not self.critical_range:
            return np.clip((lam - self.lower) / width, 0.0, 1.0)
        lo, hi = self.critical_range
        d = self.critical_index(lam)
        assert d is not None
        u = np.empty(self.n_params)
        u[0] = (d - lo + 0.5) / (hi - lo + 1)
        # the unused slots (indices lo..d-1) take the first searched value; decode ignores them
        u[1:] = np.clip((np.concatenate([np.full(d - lo, lam[d]), lam[d:]]) - self.lower) / width, 0.0, 1.0)
        return u

    # ------------------------------------------------------------ helpers

    def _as_vector(self, lam: np.ndarray) -> np.ndarray:
        arr = np.asarray(lam, dtype=np.float64).reshape(-1)
        if arr.size != self.n_freq:
            raise InputError(f"λ has {arr.size} values, the space has {self.n_freq} rotary frequencies")
        if not np.all(np.isfinite(arr)):
            raise InputError("λ contains a non-finite value")
        return arr

    def describe(self) -> str:
        """One line for the CLI."""
        crit = f", d_rcd ∈ [{self.critical_range[0]}, {self.critical_range[1]}]" if self.critical_range else ""
        return (
            f"{self.name} ({self.kind}): λ ∈ [{self.lower:g}, {self.upper:g}] step {self.step:g}"
            f"{', non-decreasing' if self.monotone else ''}{crit}, m = {self.attention:.4f}"
        )


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def _critical_bound(value: Any, auto: int, key: str, where: str) -> int:
    if _is_auto(value):
        return auto
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{where}{key} must be 'auto' or a non-negative integer index, got {value!r}")
    return value


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) != set(b) or any(_differs(a[k], b[k]) for k in a)
    return a != b


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read search space file {str(path)!r}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}: not valid YAML{at}; fix the file or use a preset") from None
    if data is None:
        raise InputError(f"{path}: the file is empty; a search space needs at least 'kind'")
    if not isinstance(data, dict):
        raise InputError(f"{path}: a search space must be a YAML mapping of keys (kind, step, lower, upper, ...)")
    return data
