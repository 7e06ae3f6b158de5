"""The protocol every search-space kind follows, the point it works on, and loading by kind name.

A kind is a subclass of :class:`SearchSpace` registered in :data:`longsearch.space.KINDS`. It states
its own YAML keys (``KEYS``, read by :meth:`~SearchSpace.parse_keys`), its defaults and the seeds it
expands itself, and implements the point-level operations: repair (:meth:`~SearchSpace._repair`,
behind :meth:`~SearchSpace.make_point`), the unit-cube encoding (``n_params``, ``decode_point``,
``encode_point``), the seeds, the GA operators (``mutate``, ``crossover``), ``describe`` and its
entries of ``to_dict`` (``_resolved``). Everything else — loading, the shared keys, keys, sampling,
dedup, serialization — lives here once.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError
from ..rope import RopeGeometry, scale_ratio
from .grid import Grid
from .spec import differs, find_space, parse_attention, parse_grid, parse_n_mutated, parse_seed_names, read_yaml

DEFAULT_KIND = "longrope2"
SHARED_KEYS = ("kind", "description", "step", "lower", "upper", "monotone", "attention", "seeds", "n_mutated_seeds")
# space.json as release 0.1 wrote it: these entries in this order, those a kind does not have as null;
# a new kind's own entries follow.
LAYOUT = (
    "name",
    "source",
    "spec",
    "kind",
    "geometry",
    "target_length",
    "scale",
    "n_freq",
    "step",
    "lower",
    "upper",
    "monotone",
    "critical_range",
    "attention",
    "attention_range",
    "beta_fast",
    "beta_slow",
    "seeds",
    "n_mutated_seeds",
)
# what a stored space must agree on with the space its spec resolves to now (in this order)
CHECKED_ON_LOAD = (
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
)


@dataclass(frozen=True, eq=False)
class Point:
    """A candidate of a space: λ, m, and the structural parameters λ was built from (JSON-ready)."""

    lam: np.ndarray
    m: float
    params: dict[str, Any] = field(default_factory=dict)


def clip(x: float, lo: float, hi: float) -> float:
    return float(min(max(x, lo), hi))


# kind name → class: filled by the package (``longsearch/space/__init__.py``), which imports every kind, in the
# order of the kinds in messages and of reading their keys. Kept here, empty until then, so that this module
# imports nothing of the kinds that import it.
KINDS: dict[str, type[SearchSpace]] = {}


def _read_kind_keys(
    kind: type[SearchSpace], kinds: dict[str, type[SearchSpace]], spec: dict[str, Any], geometry: RopeGeometry, grid: Grid, where: str
) -> dict[str, Any]:
    """The kind's own keys read (its constructor's keyword arguments); another kind's key is refused by name.
    Keys are taken kind by kind in the order of the registry: the order release 0.1 checked them in, so a spec
    with several faults is still told the same one first."""
    own: dict[str, Any] = {}
    for other in kinds.values():
        if other is kind:
            own = kind.parse_keys(spec, geometry, grid, where)
            continue
        for key in other.KEYS:
            if key in spec and key not in kind.KEYS:
                owners = [n for n, k in kinds.items() if key in k.KEYS]
                raise InputError(f"{where}{key} applies only to kind{'s' if len(owners) > 1 else ''} {' and '.join(owners)}")
    return own


def _special_seeds(kinds: dict[str, type[SearchSpace]]) -> dict[str, tuple[str, list[str]]]:
    """Seed name → (why it needs a kind that expands it, the kinds that do), over the registry."""
    special: dict[str, tuple[str, list[str]]] = {}
    for k in kinds.values():
        for seed, why in k.SPECIAL_SEEDS.items():
            special.setdefault(seed, (why, [n for n, other in kinds.items() if seed in other.SPECIAL_SEEDS]))
    return special


@dataclass(kw_only=True)
class SearchSpace(ABC):
    """A search space resolved for one geometry and target length: the protocol of every kind.

    ``grid`` holds the step, bounds and monotonicity of searched λ values; ``attention`` is m (the low
    end of ``m_range`` when m is searched); ``seed_names`` the seeds of the spec, in order.
    """

    kind: ClassVar[str]
    KEYS: ClassVar[tuple[str, ...]] = ()  # YAML keys of this kind besides SHARED_KEYS
    DEFAULT_BOUNDS: ClassVar[tuple[Any, Any]] = ("s", "2s")
    DEFAULT_ATTENTION: ClassVar[Any] = "longrope"
    DEFAULT_SEEDS: ClassVar[tuple[str, ...]] = ("pi", "ntk", "yarn")
    SPECIAL_SEEDS: ClassVar[Mapping[str, str]] = {}  # seeds this kind expands itself → why they need such a kind

    name: str
    geometry: RopeGeometry
    target_length: int
    grid: Grid
    attention: float
    seed_names: list[str]
    n_mutated_seeds: int | None
    m_range: tuple[float, float] | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    # ------------------------------------------------------------ construction (dispatch by kind)

    @classmethod
    def load(cls, name_or_path: str, geometry: RopeGeometry, target_length: int) -> SearchSpace:
        """A preset by name (``hybrid``, ``longrope2``, ...) or a YAML file path, resolved for the geometry and target."""
        path, name, source = find_space(name_or_path)
        return cls.from_spec(read_yaml(path), geometry, target_length, name=name, source=source)

    @classmethod
    def from_spec(
        cls, spec: dict[str, Any], geometry: RopeGeometry, target_length: int, name: str = "custom", source: str = ""
    ) -> SearchSpace:
        """Validate a space mapping (the YAML's content) and resolve it as the class its ``kind`` names
        (whichever class this is called on); errors name the key and, through ``source``, the file."""
        kinds = KINDS
        where = f"{source}: " if source else ""
        if not isinstance(spec, dict):
            raise InputError(f"{where}a search space must be a YAML mapping of keys (kind, step, lower, upper, ...)")
        allowed = {*SHARED_KEYS, *(key for k in kinds.values() for key in k.KEYS)}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise InputError(f"{where}unknown key {unknown[0]!r}: allowed keys are {', '.join(sorted(allowed))}")
        target_length = int(target_length)
        if target_length <= geometry.original_length:
            raise InputError(
                f"target length {target_length} is not above the model's window {geometry.original_length}: choose a longer target"
            )
        s = scale_ratio(geometry, target_length)
        kind_name = str(spec.get("kind", DEFAULT_KIND)).strip().lower()
        if kind_name not in kinds:
            raise InputError(f"{where}kind must be one of {', '.join(kinds)}, got {spec.get('kind')!r}")
        kind = kinds[kind_name]
        grid = parse_grid(spec, s, kind.DEFAULT_BOUNDS, where)
        own = _read_kind_keys(kind, kinds, spec, geometry, grid, where)
        m, m_range = parse_attention(spec.get("attention", kind.DEFAULT_ATTENTION), s, geometry.original_length, where)
        seeds = spec.get("seeds", list(kind.DEFAULT_SEEDS))
        seed_names = parse_seed_names(seeds, where, _special_seeds(kinds), kind.SPECIAL_SEEDS, kind.refuse_seed)
        n_mut = parse_n_mutated(spec.get("n_mutated_seeds"), where)
        space = kind(
            name=name,
            geometry=geometry,
            target_length=target_length,
            grid=grid,
            attention=m,
            m_range=m_range,
            seed_names=seed_names,
            n_mutated_seeds=n_mut,
            spec=copy.deepcopy(spec),
            source=source,
            **own,
        )
        if not space.seed_points():
            raise InputError(f"{where}no seed can be repaired into the space: check lower/upper and the seeds list")
        return space

    @classmethod
    def from_dict(cls, d: dict[str, Any], geometry: RopeGeometry, target_length: int) -> SearchSpace:
        """Rebuild a space written by :meth:`to_dict`; refuses one resolved for another geometry or target."""
        try:
            spec, name, source = d["spec"], d["name"], d.get("source", "")
        except (KeyError, TypeError):
            raise InputError("the stored search space is malformed (no 'spec' or 'name'): it was not written by longsearch") from None
        space = cls.from_spec(spec, geometry, target_length, name=name, source=source)
        mine = space.to_dict()
        for key in CHECKED_ON_LOAD:
            if key in d and differs(d[key], mine[key]):
                raise InputError(
                    f"the stored search space was resolved with {key} = {d[key]!r}, not {mine[key]!r}: "
                    "it belongs to another model, target or space"
                )
        return space

    # ------------------------------------------------------------ a kind's own keys and seeds

    @classmethod
    def parse_keys(cls, spec: dict[str, Any], geometry: RopeGeometry, grid: Grid, where: str) -> dict[str, Any]:
        """Read and validate this kind's ``KEYS``: the constructor's keyword arguments for them."""
        return {}

    @classmethod
    def refuse_seed(cls, name: str, given: str) -> str | None:
        """Why a static baseline ``name`` (written ``given``) cannot seed this kind; None when it can."""
        return None

    # ------------------------------------------------------------ serialization

    def to_dict(self) -> dict[str, Any]:
        """The resolved space (JSON-serializable): the spec it came from and every resolved number."""
        g = self.geometry
        entries = {
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
            "attention": self.attention,
            "attention_range": list(self.m_range) if self.m_range else None,
            "seeds": list(self.seed_names),
            "n_mutated_seeds": self.n_mutated_seeds,
            **self._resolved(),
        }
        out = {key: entries.get(key) for key in LAYOUT}
        out.update(entries)
        return out

    def _resolved(self) -> dict[str, Any]:
        """This kind's resolved entries of :meth:`to_dict` (JSON-ready)."""
        return {}

    # ------------------------------------------------------------ shared views

    @property
    def n_freq(self) -> int:
        return self.geometry.n_freq

    @property
    def scale(self) -> float:
        return scale_ratio(self.geometry, self.target_length)

    @property
    def step(self) -> float:
        return self.grid.step

    @property
    def lower(self) -> float:
        return self.grid.lower

    @property
    def upper(self) -> float:
        return self.grid.upper

    @property
    def monotone(self) -> bool:
        return self.grid.monotone

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

    # ------------------------------------------------------------ points: what the optimizers work on

    def make_point(self, lam: np.ndarray | None = None, m: float | None = None, **params: Any) -> Point:
        """Bring λ, m and structural parameters into the space (the repair of a point; see each kind)."""
        return self._repair(lam, self.clip_m(self.attention if m is None else m), params)

    @abstractmethod
    def _repair(self, lam: np.ndarray | None, m: float, params: dict[str, Any]) -> Point:
        """The point of this kind nearest to λ and ``params`` (m is already in the space)."""

    def point_key(self, p: Point) -> tuple[int, ...]:
        """Dedup key of a point: λ on the grid and m to 1e-3. Equal keys are never evaluated twice."""
        return (*self.grid.key(self._as_vector(p.lam)), round(p.m * 1000))

    def contains_point(self, p: Point) -> bool:
        """Whether the point is already in the space (its repair would not change it)."""
        q = self.make_point(p.lam, p.m, **p.params)
        return bool(np.allclose(q.lam, p.lam, rtol=0, atol=1e-9) and abs(q.m - p.m) < 1e-12 and q.params == p.params)

    def sample_point(self, rng: np.random.Generator) -> Point:
        """A uniformly random point of the unit encoding (monotone values sorted)."""
        return self.decode_point(rng.random(self.n_params))

    def seed_points(self) -> dict[str, Point]:
        """``"seed:NAME"`` → the seed brought into the space, in the order of the spec; seeds that land on
        the same point are one entry ``"seed:A+B"``."""
        names: dict[tuple[int, ...], list[str]] = {}
        points: dict[tuple[int, ...], Point] = {}
        for name, p in self._raw_seed_points():
            k = self.point_key(p)
            if k not in points:
                points[k], names[k] = p, []
            names[k].append(name)
        return {"seed:" + "+".join(names[k]): points[k] for k in points}

    @abstractmethod
    def _raw_seed_points(self) -> list[tuple[str, Point]]:
        """(name, point) of every seed, in the order of ``seed_names`` (a name may expand to several)."""

    # ------------------------------------------------------------ the unit-cube encoding

    @property
    @abstractmethod
    def n_params(self) -> int:
        """Length of the unit-cube encoding (m last when it is searched)."""

    @abstractmethod
    def decode_point(self, u: np.ndarray) -> Point:
        """A point of [0, 1]^n_params → a point of the space."""

    @abstractmethod
    def encode_point(self, p: Point) -> np.ndarray:
        """Inverse of :meth:`decode_point` for a point of the space (used to inject the seeds)."""

    def _unit(self, u: np.ndarray) -> np.ndarray:
        u = np.clip(np.asarray(u, dtype=np.float64).reshape(-1), 0.0, 1.0)
        if u.size != self.n_params:
            raise ValueError(f"expected {self.n_params} unit parameters, got {u.size}")
        return u

    def _decode_m(self, u: np.ndarray) -> float | None:
        """m from the last unit slot (None when m is fixed)."""
        if self.m_range is None:
            return None
        lo_m, hi_m = self.m_range
        return lo_m + u[-1] * (hi_m - lo_m)

    def _encode_m(self, p: Point, u: np.ndarray) -> None:
        if self.m_range is not None:
            lo_m, hi_m = self.m_range
            u[-1] = (p.m - lo_m) / (hi_m - lo_m) if hi_m > lo_m else 0.5

    # ------------------------------------------------------------ GA operators (see optimizers/ga.py)

    @abstractmethod
    def mutate(self, p: Point, rng: np.random.Generator) -> Point:
        """A mutant of ``p`` in the space (it may equal ``p``; the GA retries until new)."""

    @abstractmethod
    def crossover(self, p1: Point, p2: Point, rng: np.random.Generator) -> Point:
        """A child of two points, mostly ``p1``'s."""

    # ------------------------------------------------------------ helpers

    @abstractmethod
    def describe(self) -> str:
        """One line for the CLI."""

    def _describe_m(self) -> str:
        return f"m ∈ [{self.m_range[0]:.3f}, {self.m_range[1]:.3f}]" if self.m_range else f"m = {self.attention:.4f}"

    def _as_vector(self, lam: np.ndarray) -> np.ndarray:
        arr = np.asarray(lam, dtype=np.float64).reshape(-1)
        if arr.size != self.n_freq:
            raise InputError(f"λ has {arr.size} values, the space has {self.n_freq} rotary frequencies")
        if not np.all(np.isfinite(arr)):
            raise InputError("λ contains a non-finite value")
        return arr
