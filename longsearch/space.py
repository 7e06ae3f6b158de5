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
* ``hybrid`` — longsearch's own (the default): a critical index d ∈ [critical_lower, critical_upper]
  (default the whole range 0 … d/2−1); for i ≥ d, λ_i ∈ [lower, upper] non-decreasing on the grid
  (LongRoPE2's tail); below d a head from a searched family — λ_i = 1 up to a searched start a, then
  a ramp to λ_d whose shape q blends YaRN's (harmonic, q = 0) and the NTK shape (geometric, q = 1) —
  and m searched in ``attention: {min, max}``. PI (d = 0), NTK (a = 0, q = 1, d = d/2−1), YaRN
  (a = its low, d = its high, q = 0, its m) and LongRoPE2's NTK-shaped vectors are points of it.
* ``yarn`` — the YaRN family: β_fast, β_slow and m searched (three numbers).

Every candidate is a :class:`Point`: λ, m, and the structural parameters that produced λ
(``d_rcd``, ``head_start``, ``head_shape``, ``beta_fast``, ``beta_slow``) — the one source of truth
for them. The optimizers work on points through :meth:`SearchSpace.seed_points`,
:meth:`~SearchSpace.sample_point`, :meth:`~SearchSpace.decode_point` /
:meth:`~SearchSpace.encode_point`, :meth:`~SearchSpace.point_key` and the GA operators
:meth:`~SearchSpace.mutate` / :meth:`~SearchSpace.crossover`; the λ-level helpers (``repair``,
``seeds``, ``key``, ...) remain for the ``free`` and ``longrope2`` kinds.
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
    critical_index_lower,
    get_method,
    rescale,
    scale_ratio,
    yarn_method,
)
from .rope import (
    critical_index as theoretical_critical_index,
)

log = logging.getLogger(__name__)

PRESETS_PACKAGE = "longsearch.search_spaces"
KINDS = ("longrope2", "free", "hybrid", "yarn")
TAIL_KINDS = ("longrope2", "free", "hybrid")  # kinds whose λ has a per-frequency searched part
STRUCTURED_KINDS = ("longrope2", "hybrid")  # kinds with a critical index
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
    "beta_fast",
    "beta_slow",
    "truncate",
}
# Seeds the spaces know: every static baseline of rope.py, plus LongRoPE2's NTK-shaped vectors.
NTK_SHAPED = "ntk-shaped"
# hybrid: YaRN's ramp (its high index, its m) with the head kept exact ¼, ½ and ¾ of the way from YaRN's
# low index to its high index.
YARN_RAMPS = "yarn-ramps"
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
    """Evaluate a bound: a number, or arithmetic in s such as ``"s"``, ``"2s"``, ``"1 + s"``, ``"1 + 0.4*ln(s)"``."""
    hint = "write a number or an expression in s such as '2s', '1 + s', '1.5*s' or '1 + 0.4*ln(s)'"
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


_FUNCTIONS = {"ln": math.log, "log": math.log, "sqrt": math.sqrt}


def _eval_node(node: ast.AST, s: float) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id == "s":
        return s
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and len(node.args) == 1
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](_eval_node(node.args[0], s))
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


# ---------------------------------------------------------------- points

CROSSOVER_GENE_PROBABILITY = 0.3 * 0.5


@dataclass(frozen=True, eq=False)
class Point:
    """A candidate of a space: λ, m, and the structural parameters λ was built from (JSON-ready)."""

    lam: np.ndarray
    m: float
    params: dict[str, Any] = field(default_factory=dict)


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


def _clip(x: float, lo: float, hi: float) -> float:
    return float(min(max(x, lo), hi))


def _log_lerp(bounds: tuple[float, float], u: float) -> float:
    lo, hi = bounds
    return float(math.exp(math.log(lo) + float(u) * (math.log(hi) - math.log(lo))))


def _log_unlerp(bounds: tuple[float, float], x: float) -> float:
    lo, hi = bounds
    return 0.5 if hi <= lo else float((math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo)))


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
    m_range: tuple[float, float] | None = None
    beta_fast: tuple[float, float] | None = None
    beta_slow: tuple[float, float] | None = None
    truncate: bool = True
    spec: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    # ------------------------------------------------------------ construction

    @classmethod
    def load(cls, name_or_path: str, geometry: RopeGeometry, target_length: int) -> SearchSpace:
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
    ) -> SearchSpace:
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

        default_lower, default_upper = (1.0, "1 + s") if kind == "free" else ("s", "2s")
        lower = eval_bound(spec.get("lower", default_lower), s, "lower", where)
        upper = eval_bound(spec.get("upper", default_upper), s, "upper", where)
        if lower <= 0:
            raise InputError(f"{where}lower resolves to {lower:g} at s = {s:g}: every λ must be positive")
        if lower > upper:
            raise InputError(f"{where}lower ({lower:g}) is above upper ({upper:g}) at s = {s:g}: no λ fits the bounds")
        lo_k, hi_k = math.ceil(lower / step - _EPS), math.floor(upper / step + _EPS)
        if lo_k > hi_k:
            raise InputError(
                f"{where}no grid value (step {step:g}) lies within [{lower:g}, {upper:g}]: widen the bounds or refine the step"
            )

        monotone = spec.get("monotone", True)
        if not isinstance(monotone, bool):
            raise InputError(f"{where}monotone must be true or false, got {monotone!r}")

        n = geometry.n_freq
        critical_range: tuple[int, int] | None = None
        if kind in STRUCTURED_KINDS:
            if not monotone:
                raise InputError(f"{where}monotone: false is not supported for kind {kind} (its λ is non-decreasing by construction)")
            lo_spec, hi_spec = spec.get("critical_lower", "auto"), spec.get("critical_upper", "auto")
            auto_lo, auto_hi = (critical_index_lower(geometry), theoretical_critical_index(geometry)) if kind == "longrope2" else (0, n - 1)
            c_lo = _critical_bound(lo_spec, auto_lo, "critical_lower", where)
            c_hi = _critical_bound(hi_spec, auto_hi, "critical_upper", where)
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
                    raise InputError(f"{where}{key} applies only to kinds {' and '.join(STRUCTURED_KINDS)}")

        beta_fast = beta_slow = None
        truncate = True
        if kind == "yarn":
            beta_fast = _range(spec.get("beta_fast", [2.0, 128.0]), "beta_fast", where)
            beta_slow = _range(spec.get("beta_slow", [0.125, 4.0]), "beta_slow", where)
            truncate = spec.get("truncate", True)
            if not isinstance(truncate, bool):
                raise InputError(f"{where}truncate must be true or false, got {truncate!r}")
        else:
            for key in ("beta_fast", "beta_slow", "truncate"):
                if key in spec:
                    raise InputError(f"{where}{key} applies only to kind yarn")

        attention_policy = spec.get("attention", "longrope" if kind in ("free", "longrope2") else {"min": 1, "max": "1 + 0.4*ln(s)"})
        m_range: tuple[float, float] | None = None
        if isinstance(attention_policy, dict):
            unknown_m = sorted(set(attention_policy) - {"min", "max"})
            if unknown_m or not {"min", "max"} <= set(attention_policy):
                raise InputError(f"{where}attention as a range needs exactly the keys min and max (e.g. {{min: 1, max: '1 + 0.4*ln(s)'}})")
            m_lo = eval_bound(attention_policy["min"], s, "attention min", where)
            m_hi = eval_bound(attention_policy["max"], s, "attention max", where)
            if not 0 < m_lo <= m_hi:
                raise InputError(f"{where}attention range [{m_lo:g}, {m_hi:g}] must satisfy 0 < min ≤ max")
            m_range = (m_lo, m_hi)
            m = m_lo
        else:
            try:
                m = attention_factor(attention_policy, s, geometry.original_length)
            except InputError as e:
                raise InputError(f"{where}attention: {e}") from None

        default_seeds = {
            "longrope2": ["pi", "ntk", "yarn", NTK_SHAPED],
            "free": ["pi", "ntk", "yarn"],
            "hybrid": ["pi", "ntk", "yarn", NTK_SHAPED],
            "yarn": ["yarn"],
        }[kind]
        seeds = spec.get("seeds", default_seeds)
        if isinstance(seeds, str):
            seeds = [seeds]
        if not isinstance(seeds, list) or not seeds or not all(isinstance(x, str) for x in seeds):
            raise InputError(f"{where}seeds must be a non-empty list of names (pi, ntk, yarn, llama3, ntk-shaped)")
        known = [b for b in baseline_names() if not get_method(b).dynamic] + [NTK_SHAPED, YARN_RAMPS]
        seed_names: list[str] = []
        for x in seeds:
            key = x.strip().lower()
            if key == NTK_SHAPED:
                if kind not in STRUCTURED_KINDS:
                    raise InputError(f"{where}seed 'ntk-shaped' needs kind longrope2 or hybrid (it is shaped by the critical index)")
            elif key == YARN_RAMPS:
                if kind != "hybrid":
                    raise InputError(f"{where}seed 'yarn-ramps' needs kind hybrid (it keeps part of the head exact)")
            else:
                try:
                    method = get_method(key)
                except InputError:
                    method = None
                if method is None or method.dynamic or not method.baseline:
                    raise InputError(f"{where}unknown seed {x!r}: seeds are {', '.join(known)}")
                key = method.name
                if kind == "yarn" and key != "yarn":
                    raise InputError(f"{where}seed {x!r} is not a point of the YaRN family: kind yarn takes the seed yarn only")
            if key not in seed_names:
                seed_names.append(key)

        n_mut = spec.get("n_mutated_seeds")
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
            m_range=m_range,
            beta_fast=beta_fast,
            beta_slow=beta_slow,
            truncate=truncate,
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
            "attention_range": list(self.m_range) if self.m_range else None,
            "beta_fast": list(self.beta_fast) if self.beta_fast else None,
            "beta_slow": list(self.beta_slow) if self.beta_slow else None,
            "seeds": list(self.seed_names),
            "n_mutated_seeds": self.n_mutated_seeds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], geometry: RopeGeometry, target_length: int) -> SearchSpace:
        """Rebuild a space written by :meth:`to_dict`; refuses one resolved for another geometry or target."""
        try:
            spec, name, source = d["spec"], d["name"], d.get("source", "")
        except (KeyError, TypeError):
            raise InputError("the stored search space is malformed (no 'spec' or 'name'): it was not written by longsearch") from None
        space = cls.from_spec(spec, geometry, target_length, name=name, source=source)
        mine = space.to_dict()
        for key in (
            "geometry",
            "target_length",
            "kind",
            "step",
            "lower",
            "upper",
            "critical_range",
            "attention",
            "attention_range",
            "beta_fast",
            "beta_slow",
            "seeds",
        ):
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
        """:meth:`sample_point` as (λ, d_rcd)."""
        p = self.sample_point(rng)
        return p.lam, p.params.get("d_rcd")

    # ------------------------------------------------------------ seeds

    def seeds(self) -> dict[str, np.ndarray]:
        """``"seed:NAME"`` → the λ of each seed point (:meth:`seed_points`).

        ``ntk-shaped`` expands to LongRoPE2's NTK-shaped vectors λ_i = s^(i/d) (capped at ``upper``)
        at the lowest, middle and highest d_rcd: ``seed:ntk-shaped@D``.
        """
        return {name: p.lam for name, p in self.seed_points().items()}

    # ------------------------------------------------------------ λ-level views (free and longrope2)

    def decode_unit(self, u: np.ndarray) -> tuple[np.ndarray, int | None]:
        """:meth:`decode_point` as (λ, d_rcd)."""
        p = self.decode_point(u)
        return p.lam, p.params.get("d_rcd")

    def encode_unit(self, lam: np.ndarray) -> np.ndarray:
        """:meth:`encode_point` of the point that λ repairs to (free and longrope2)."""
        return self.encode_point(self.make_point(lam))

    # ------------------------------------------------------------ points: what the optimizers work on

    @property
    def searches_m(self) -> bool:
        """Whether m is searched (``attention: {min, max}``) rather than fixed."""
        return self.m_range is not None

    def clip_m(self, m: float) -> float:
        """m brought into the space: the fixed m, or clipped into the searched range."""
        if self.m_range is None:
            return self.attention
        lo, hi = self.m_range
        return float(min(max(float(m), lo), hi))

    def make_point(self, lam: np.ndarray | None = None, m: float | None = None, **params: Any) -> Point:
        """Bring λ, m and structural parameters into the space (the repair of a point).

        ``free``: λ repaired. ``longrope2``: λ repaired at ``d_rcd`` (nearest when not given).
        ``hybrid``: needs ``d_rcd`` (and ``head_start``, ``head_shape``, default 0 and 1); the tail λ[d:]
        is repaired, the head is rebuilt from the parameters. ``yarn``: λ from ``beta_fast``/``beta_slow``.
        """
        m = self.clip_m(self.attention if m is None else m)
        if self.kind == "yarn":
            bf = _clip(float(params.get("beta_fast", 32.0)), *self.beta_fast)  # type: ignore[misc]
            bs = _clip(float(params.get("beta_slow", 1.0)), *self.beta_slow)  # type: ignore[misc]
            if bs >= bf:  # the fast boundary must turn more often than the slow one
                bf, bs = max(bf, bs), min(bf, bs)
                if bs >= bf:
                    bs = bf / 2
            bf, bs = round(bf, 4), round(bs, 4)
            lam_y = yarn_method(self.geometry, self.target_length, beta_fast=bf, beta_slow=bs, attention=m, truncate=self.truncate).lam
            return Point(lam_y, m, {"beta_fast": bf, "beta_slow": bs})
        if lam is None:
            raise ValueError("make_point needs λ for this kind of space")
        if self.kind == "free":
            return Point(self.repair(lam), m, {})
        if self.kind == "longrope2":
            d = params.get("d_rcd")
            x = self.repair(lam, d)
            return Point(x, m, {"d_rcd": self.critical_index(x) if d is None else self._clip_d(d)})
        lam = self._as_vector(lam)
        d = self._clip_d(params["d_rcd"])
        a = int(min(max(int(params.get("head_start", 0)), 0), d))
        q = round(_clip(float(params.get("head_shape", 1.0)), 0.0, 1.0), 4)
        out = np.empty(self.n_freq)
        out[d:] = self._repair_tail(lam[d:])
        out[:d] = hybrid_head(d, a, q, float(out[d]))
        return Point(out, m, {"d_rcd": d, "head_start": a, "head_shape": q})

    def _clip_d(self, d: Any) -> int:
        lo, hi = self.critical_range  # type: ignore[misc]
        return int(min(max(int(d), lo), hi))

    def point_key(self, p: Point) -> tuple[int, ...]:
        """Dedup key of a point: λ on the grid and m to 1e-3. Equal keys are never evaluated twice."""
        return (*self.key(p.lam), round(p.m * 1000))

    def contains_point(self, p: Point) -> bool:
        """Whether the point is already in the space (its repair would not change it)."""
        q = self.make_point(p.lam, p.m, **p.params)
        return bool(np.allclose(q.lam, p.lam, rtol=0, atol=1e-9) and abs(q.m - p.m) < 1e-12 and q.params == p.params)

    def sample_point(self, rng: np.random.Generator) -> Point:
        """A uniformly random point of the unit encoding (monotone values sorted)."""
        return self.decode_point(rng.random(self.n_params))

    def seed_points(self) -> dict[str, Point]:
        """``"seed:NAME"`` → the seed brought into the space, in the order of the spec; seeds that land on
        the same point are one entry ``"seed:A+B"``. In ``hybrid`` PI, NTK and YaRN are exact points with
        their own m; in ``free`` / ``longrope2`` m is the space's."""
        names: dict[tuple[int, ...], list[str]] = {}
        points: dict[tuple[int, ...], Point] = {}
        for name, p in self._raw_seed_points():
            k = self.point_key(p)
            if k not in points:
                points[k], names[k] = p, []
            names[k].append(name)
        return {"seed:" + "+".join(names[k]): points[k] for k in points}

    def _raw_seed_points(self) -> list[tuple[str, Point]]:
        out: list[tuple[str, Point]] = []
        if self.kind == "yarn":
            r = rescale("yarn", self.geometry, self.target_length)
            return [("yarn", self.make_point(None, r.m, beta_fast=32.0, beta_slow=1.0))]
        longrope_m = attention_factor("longrope", self.scale, self.geometry.original_length)
        for name in self.seed_names:
            if name == YARN_RAMPS:
                y = self._fit_hybrid(rescale("yarn", self.geometry, self.target_length).lam, 1.0)
                low, high = int(y.params["head_start"]), int(y.params["d_rcd"])
                r = rescale("yarn", self.geometry, self.target_length)
                for a in sorted({low + (high - low) * k // 4 for k in (1, 2, 3)} - {low}):
                    p = self.make_point(y.lam, r.m, d_rcd=high, head_start=a, head_shape=0.0)
                    out.append((f"{YARN_RAMPS}@{a}", p))
                continue
            if name == NTK_SHAPED:
                lo = critical_index_lower(self.geometry) if self.kind == "hybrid" else self.critical_range[0]  # type: ignore[index]
                hi = theoretical_critical_index(self.geometry) if self.kind == "hybrid" else self.critical_range[1]  # type: ignore[index]
                for d in sorted({lo, (lo + hi) // 2, hi}):
                    d = self._clip_d(d)
                    i = np.arange(self.n_freq, dtype=np.float64)
                    base = max(self.lower, self.scale)
                    lam = np.minimum(base ** (i / max(d, 1)), self.upper)
                    out.append((f"{NTK_SHAPED}@{d}", self.make_point(lam, longrope_m, d_rcd=d, head_start=0, head_shape=1.0)))
                continue
            r = rescale(name, self.geometry, self.target_length)
            if self.kind == "hybrid":
                out.append((name, self._fit_hybrid(r.lam, r.m)))
            elif self.kind == "longrope2":
                out.append((name, self.make_point(r.lam, r.m)))
            else:
                out.append((name, self.make_point(r.lam, r.m)))
        return out

    def _fit_hybrid(self, lam: np.ndarray, m: float) -> Point:
        """The hybrid point nearest to λ in log space (exact for PI, NTK and YaRN)."""
        lo, hi = self.critical_range  # type: ignore[misc]
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

    # ------------------------------------------------------------ unit encoding of points

    def _unit_layout(self) -> tuple[int, int, bool]:
        """(structural slots, value slots, m slot) of the unit encoding."""
        n_m = self.searches_m
        if self.kind == "yarn":
            return 2, 0, n_m
        if self.kind == "free":
            return 0, self.n_freq, n_m
        lo = self.critical_range[0]  # type: ignore[index]
        return (1 if self.kind == "longrope2" else 3), self.n_freq - lo, n_m

    @property
    def n_params(self) -> int:
        """Length of the unit-cube encoding: structure (d_rcd, head start and shape; or β_fast, β_slow),
        one value per possibly-searched frequency, then m when it is searched."""
        k, v, has_m = self._unit_layout()
        return k + v + int(has_m)

    def decode_point(self, u: np.ndarray) -> Point:
        """A point of [0, 1]^n_params → a point of the space (monotone values sorted)."""
        u = np.clip(np.asarray(u, dtype=np.float64).reshape(-1), 0.0, 1.0)
        if u.size != self.n_params:
            raise ValueError(f"expected {self.n_params} unit parameters, got {u.size}")
        k, v, has_m = self._unit_layout()
        m = None
        if has_m:
            lo_m, hi_m = self.m_range  # type: ignore[misc]
            m = lo_m + u[-1] * (hi_m - lo_m)
        if self.kind == "yarn":
            bf = _log_lerp(self.beta_fast, u[0])  # type: ignore[arg-type]
            bs = _log_lerp(self.beta_slow, u[1])  # type: ignore[arg-type]
            return self.make_point(None, m, beta_fast=bf, beta_slow=bs)
        values = u[k : k + v]
        params: dict[str, Any] = {}
        start = 0
        if self.kind in STRUCTURED_KINDS:
            lo, hi = self.critical_range  # type: ignore[misc]
            d = int(min(hi, lo + math.floor(u[0] * (hi - lo + 1))))
            params["d_rcd"] = d
            values = values[d - lo :]
            start = d
            if self.kind == "hybrid":
                params["head_start"] = int(min(d, math.floor(u[1] * (d + 1))))
                params["head_shape"] = float(u[2])
        vals = self.lower + values * (self.upper - self.lower)
        if self.monotone:
            vals = np.sort(vals)
        lam = np.empty(self.n_freq)
        lam[start:] = vals
        lam[:start] = vals[0] if vals.size else self.lower
        return self.make_point(lam, m, **params)

    def encode_point(self, p: Point) -> np.ndarray:
        """Inverse of :meth:`decode_point` for a point of the space (used to inject the seeds)."""
        k, v, has_m = self._unit_layout()
        u = np.zeros(self.n_params)
        if has_m:
            lo_m, hi_m = self.m_range  # type: ignore[misc]
            u[-1] = (p.m - lo_m) / (hi_m - lo_m) if hi_m > lo_m else 0.5
        if self.kind == "yarn":
            u[0] = _log_unlerp(self.beta_fast, p.params["beta_fast"])  # type: ignore[arg-type]
            u[1] = _log_unlerp(self.beta_slow, p.params["beta_slow"])  # type: ignore[arg-type]
            return np.clip(u, 0.0, 1.0)
        width = max(self.upper - self.lower, 1e-12)
        if self.kind == "free":
            u[:v] = (p.lam - self.lower) / width
            return np.clip(u, 0.0, 1.0)
        lo, hi = self.critical_range  # type: ignore[misc]
        d = int(p.params["d_rcd"])
        u[0] = (d - lo + 0.5) / (hi - lo + 1)
        if self.kind == "hybrid":
            u[1] = (int(p.params["head_start"]) + 0.5) / (d + 1)
            u[2] = float(p.params["head_shape"])
        # the unused slots (indices lo..d-1) take the first searched value; decode ignores them
        u[k : k + v] = (np.concatenate([np.full(d - lo, p.lam[d]), p.lam[d:]]) - self.lower) / width
        return np.clip(u, 0.0, 1.0)

    # ------------------------------------------------------------ GA operators (see optimizers/ga.py)

    def mutate(self, p: Point, rng: np.random.Generator) -> Point:
        """A mutant of ``p`` in the space (it may equal ``p``; the GA retries until new).

        ``yarn``: β_fast, β_slow, m each perturbed with probability ½ (at least one) in the unit encoding.
        Per-frequency kinds: one operator, and with probability ½ a second, out of
        ``genes`` (LongRoPE: each searched λ_i redrawn with probability 0.3 between its neighbours),
        ``segment`` (a contiguous run of λ scaled or shifted — the move that changes a plateau's interior),
        ``critical`` (d_rcd moved by up to 3, with the tail kept in place or slid along with it),
        ``head`` (hybrid: the head's start moved or its shape changed) and ``attention`` (m, when searched).
        """
        if self.kind == "yarn":
            u = self.encode_point(p)
            mask = rng.random(u.size) < 0.5
            if not mask.any():
                mask[int(rng.integers(u.size))] = True
            u = np.clip(u + mask * rng.normal(0.0, 0.12, u.size), 0.0, 1.0)
            return self.decode_point(u)
        ops = ["genes", "segment"]
        if self.kind in STRUCTURED_KINDS and self.critical_range[0] < self.critical_range[1]:  # type: ignore[index]
            ops.append("critical")
        if self.kind == "hybrid":
            ops.append("head")
        if self.searches_m:
            ops.append("attention")
        chosen = [ops[int(rng.integers(len(ops)))]]
        if rng.random() < 0.5:
            other = [o for o in ops if o != chosen[0]]
            chosen.append(other[int(rng.integers(len(other)))])
        lam, m, params = p.lam.copy(), p.m, dict(p.params)
        for op in chosen:
            start = int(params.get("d_rcd", 0))
            if op == "genes":
                lam = self._redraw_genes(lam, start, rng)
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
            elif op == "critical":
                lo, hi = self.critical_range  # type: ignore[misc]
                delta = int(rng.choice([-3, -2, -1, 1, 2, 3]))
                new_d = int(min(max(start + delta, lo), hi))
                if rng.random() < 0.5 and new_d != start:  # slide the tail along with d_rcd
                    tail = lam[start:]
                    lam[new_d:] = np.concatenate([tail, np.full(max(0, start - new_d), tail[-1])])[: self.n_freq - new_d]
                params["d_rcd"] = new_d
                if self.kind == "hybrid":
                    params["head_start"] = min(int(params["head_start"]), new_d)
            elif op == "head":
                if rng.random() < 0.5:
                    params["head_start"] = int(params["head_start"]) + int(rng.choice([-2, -1, 1, 2]))
                else:
                    params["head_shape"] = float(params["head_shape"]) + rng.normal(0.0, 0.25)
            elif op == "attention":
                m = m * math.exp(rng.normal(0.0, 0.06))
        return self.make_point(lam, m, **params)

    def _redraw_genes(self, lam: np.ndarray, start: int, rng: np.random.Generator) -> np.ndarray:
        lo_k, hi_k = self.grid_bounds
        x = lam.copy()
        mask = rng.random(self.n_freq - start) < 0.3
        for offset in np.flatnonzero(mask):
            i = start + int(offset)
            if self.monotone:
                left = x[i - 1] if i > start else self.lower
                right = x[i + 1] if i < self.n_freq - 1 else self.upper
                a = max(lo_k, math.ceil(min(left, right) / self.step - 1e-9))
                b = min(hi_k, math.floor(max(left, right) / self.step + 1e-9))
            else:
                a, b = lo_k, hi_k
            if b >= a:
                x[i] = float(self.from_grid(np.asarray(rng.integers(a, b + 1))))
        return x

    def crossover(self, p1: Point, p2: Point, rng: np.random.Generator) -> Point:
        """LongRoPE's gene-wise crossover: each λ_i (and each structural parameter, and m) taken from the
        second parent with probability 0.15, then repaired; ``yarn``: each number from either parent (½)."""
        if self.kind == "yarn":
            u1, u2 = self.encode_point(p1), self.encode_point(p2)
            mask = rng.random(u1.size) < 0.5
            return self.decode_point(np.where(mask, u2, u1))
        mask = rng.random(self.n_freq) < CROSSOVER_GENE_PROBABILITY
        lam = np.where(mask, p2.lam, p1.lam)
        params = dict(p1.params)
        for key in sorted(params):
            if key in p2.params and rng.random() < CROSSOVER_GENE_PROBABILITY:
                params[key] = p2.params[key]
        m = p2.m if self.searches_m and rng.random() < CROSSOVER_GENE_PROBABILITY else p1.m
        return self.make_point(lam, m, **params)

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
        m = f"m ∈ [{self.m_range[0]:.3f}, {self.m_range[1]:.3f}]" if self.m_range else f"m = {self.attention:.4f}"
        if self.kind == "yarn":
            bf, bs = self.beta_fast, self.beta_slow
            assert bf is not None and bs is not None  # a yarn space has both
            return f"{self.name} (yarn family): β_fast ∈ [{bf[0]:g}, {bf[1]:g}], β_slow ∈ [{bs[0]:g}, {bs[1]:g}], {m}"
        head = ", head: exact up to a searched start, then a ramp between YaRN's and the NTK shape" if self.kind == "hybrid" else ""
        return (
            f"{self.name} ({self.kind}): λ ∈ [{self.lower:g}, {self.upper:g}] step {self.step:g}"
            f"{', non-decreasing' if self.monotone else ''}{crit}{head}, {m}"
        )


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def _critical_bound(value: Any, auto: int, key: str, where: str) -> int:
    if _is_auto(value):
        return auto
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{where}{key} must be 'auto' or a non-negative integer index, got {value!r}")
    return value


def _range(value: Any, key: str, where: str) -> tuple[float, float]:
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value)
    )
    if not ok or value[0] > value[1]:
        raise InputError(f"{where}{key} must be a range [min, max] of positive numbers, got {value!r}")
    return float(value[0]), float(value[1])


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b, strict=True))
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
