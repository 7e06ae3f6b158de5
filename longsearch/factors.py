"""RopeFactors: the searched (or baseline) result, as a file.

>>> from longsearch.rope import RopeGeometry
>>> g = RopeGeometry(64, 10000.0, 256)
>>> f = RopeFactors.from_method("yarn", g, target_length=2048)
>>> f.scale, f.rotary_dim, len(f.long_factor)
(8.0, 64, 32)
>>> RopeFactors.from_json(f.to_json()) == f
True
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_json, atomic_write_text
from .errors import FactorsError, LongsearchError
from .rope import Rescale, RopeGeometry, Schedule, SwitchSchedule, attention_factor, check_options, get_method

SCHEMA_VERSION = 1


def _vector(values: Any, name: str, n: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise FactorsError(f"{name} must be a list of numbers") from None
    if arr.ndim != 1 or arr.size == 0:
        raise FactorsError(f"{name} must be a flat, non-empty list of numbers")
    if n is not None and arr.size != n:
        raise FactorsError(f"{name} has {arr.size} values but the rotary dimension needs {n} (rotary_dim/2)")
    if not np.all(np.isfinite(arr)):
        raise FactorsError(f"{name} contains a non-finite value (nan or inf): every factor must be a finite number")
    if np.any(arr <= 0):
        raise FactorsError(f"{name} contains a value ≤ 0 at index {int(np.argmax(arr <= 0))}: every factor must be positive")
    return arr


@dataclass
class RopeFactors:
    """Long and short λ for a model geometry and a target length, with m and where they came from."""

    long_factor: np.ndarray
    short_factor: np.ndarray
    original_length: int
    target_length: int
    base: float
    rotary_dim: int
    attention_factor: float
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------ validation and derived values

    def validate(self) -> None:
        if not isinstance(self.rotary_dim, int) or self.rotary_dim <= 0 or self.rotary_dim % 2:
            raise FactorsError(f"rotary_dim must be a positive even integer, got {self.rotary_dim!r}")
        n = self.rotary_dim // 2
        self.long_factor = _vector(self.long_factor, "long_factor", n)
        self.short_factor = _vector(self.short_factor, "short_factor", n)
        if int(self.original_length) <= 0 or int(self.target_length) <= 0:
            raise FactorsError("original_length and target_length must be positive token counts")
        self.original_length = int(self.original_length)
        self.target_length = int(self.target_length)
        if not (math.isfinite(self.base) and self.base > 1):
            raise FactorsError(f"base must be a finite number above 1, got {self.base!r}")
        self.base = float(self.base)
        if not (math.isfinite(self.attention_factor) and self.attention_factor > 0):
            raise FactorsError(f"attention_factor must be a positive finite number, got {self.attention_factor!r}")
        self.attention_factor = float(self.attention_factor)

    @property
    def geometry(self) -> RopeGeometry:
        return RopeGeometry(self.rotary_dim, self.base, self.original_length)

    @property
    def scale(self) -> float:
        return self.target_length / self.original_length

    def schedule(self) -> Schedule:
        """How a model applies these factors: long above the original window, short within it."""
        return SwitchSchedule(self.long_factor, self.short_factor, self.original_length, self.attention_factor)

    def check_geometry(self, g: RopeGeometry, what: str = "the model") -> None:
        """Refuse factors made for another rotary dim (or base / window, which would change their meaning)."""
        if g.rotary_dim != self.rotary_dim:
            raise FactorsError(
                f"these factors have {self.rotary_dim // 2} values (rotary dim {self.rotary_dim}) but {what} has "
                f"rotary dim {g.rotary_dim} ({g.n_freq} values): use factors searched for this model"
            )
        if not math.isclose(g.base, self.base, rel_tol=1e-6):
            raise FactorsError(f"these factors were made for RoPE base {self.base:g} but {what} has base {g.base:g}")
        if g.original_length != self.original_length:
            raise FactorsError(
                f"these factors were made for an original window of {self.original_length} tokens but {what} has {g.original_length}"
            )

    # ------------------------------------------------------------ constructors

    @classmethod
    def searched(cls, g: RopeGeometry, target_length: int, rescale: Rescale, provenance: dict[str, Any] | None = None) -> RopeFactors:
        """Searched factors: ``rescale``'s λ as long factors, ones (the original RoPE) as short, its m.

        The one constructor of a search's result (``best.json``)."""
        return cls(
            long_factor=np.asarray(rescale.lam, dtype=np.float64),
            short_factor=np.ones(g.n_freq),
            original_length=g.original_length,
            target_length=int(target_length),
            base=g.base,
            rotary_dim=g.rotary_dim,
            attention_factor=float(rescale.m),
            provenance=dict(provenance or {}),
        )

    @property
    def long(self) -> Rescale:
        """The long factors and m: what vLLM and llama.cpp apply at every position once the served context exceeds
        the original window."""
        return Rescale(self.long_factor, self.attention_factor)

    @classmethod
    def from_method(
        cls,
        name: str,
        g: RopeGeometry,
        target_length: int,
        attention: str | float | None = None,
        provenance: dict[str, Any] | None = None,
        **options: Any,
    ) -> RopeFactors:
        """A baseline as RopeFactors: its λ as long factors, ones as short, its own m unless ``attention`` says."""
        method = get_method(name)
        if not method.baseline:
            raise FactorsError(f"{name} needs explicit factors; it cannot be built from its name")
        check_options(method, options)
        r = method.fn(g, target_length, **options)
        m = r.m if attention is None else attention_factor(attention, target_length / g.original_length, g.original_length)
        prov = {"method": method.name}
        prov.update(provenance or {})
        return cls(
            long_factor=r.lam,
            short_factor=np.ones(g.n_freq),
            original_length=g.original_length,
            target_length=target_length,
            base=g.base,
            rotary_dim=g.rotary_dim,
            attention_factor=m,
            provenance=prov,
        )

    # ------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "longsearch.RopeFactors",
            "rotary_dim": self.rotary_dim,
            "base": self.base,
            "original_length": self.original_length,
            "target_length": self.target_length,
            "scale": self.scale,
            "attention_factor": self.attention_factor,
            "long_factor": [float(x) for x in self.long_factor],
            "short_factor": [float(x) for x in self.short_factor],
            "provenance": self.provenance,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "factors") -> RopeFactors:
        if not isinstance(d, dict):
            raise FactorsError(f"{source}: expected a JSON object with long_factor, short_factor, …")
        version = d.get("schema_version")
        if version is None:
            raise FactorsError(f"{source}: no schema_version; is this a longsearch factors file?")
        if version != SCHEMA_VERSION:
            raise FactorsError(
                f"{source}: schema_version {version} is not supported (this longsearch reads {SCHEMA_VERSION}); upgrade longsearch"
            )
        missing = [k for k in ("rotary_dim", "base", "original_length", "target_length", "long_factor") if k not in d]
        if missing:
            raise FactorsError(f"{source}: missing key(s) {', '.join(missing)}")
        rotary_dim = d["rotary_dim"]
        if not isinstance(rotary_dim, int):
            raise FactorsError(f"{source}: rotary_dim must be an integer")
        short: Any = d.get("short_factor") or [1.0] * (rotary_dim // 2)
        scale = d["target_length"] / d["original_length"] if d["original_length"] else 0
        m = d.get("attention_factor")
        if m is None:
            m = attention_factor("longrope", scale, int(d["original_length"])) if scale > 0 else 1.0
        try:
            return cls(
                long_factor=d["long_factor"],
                short_factor=short,
                original_length=d["original_length"],
                target_length=d["target_length"],
                base=float(d["base"]),
                rotary_dim=rotary_dim,
                attention_factor=float(m),
                provenance=dict(d.get("provenance") or {}),
            )
        except FactorsError as e:
            raise FactorsError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:
            raise FactorsError(f"{source}: malformed value ({e})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "factors") -> RopeFactors:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise FactorsError(f"{source} is not valid JSON ({e.msg} at line {e.lineno}): pass a factors .json or .csv file") from None
        return cls.from_dict(d, source)

    def save(self, path: str | Path) -> None:
        """Write atomically as JSON."""
        atomic_write_json(path, self.to_dict())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RopeFactors):
            return NotImplemented
        return (
            np.array_equal(self.long_factor, other.long_factor)
            and np.array_equal(self.short_factor, other.short_factor)
            and (self.original_length, self.target_length, self.base, self.rotary_dim, self.attention_factor)
            == (other.original_length, other.target_length, other.base, other.rotary_dim, other.attention_factor)
            and self.provenance == other.provenance
        )


# ---------------------------------------------------------------- LongRoPE reference CSV


def read_csv_factors(path: str | Path) -> np.ndarray:
    """Read a LongRoPE-style CSV: one factor per line (a header line or commas are tolerated)."""
    path = Path(path)
    values: list[float] = []
    try:
        text = path.read_text()
    except OSError as e:
        raise FactorsError(f"cannot read {path}: {e.strerror}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        cells = [c.strip() for c in line.split(",") if c.strip()]
        for cell in cells:
            try:
                values.append(float(cell))
            except ValueError:
                if lineno == 1 and not values:
                    break  # a header
                raise FactorsError(f"{path}:{lineno}: {cell!r} is not a number; a LongRoPE CSV has one factor per line") from None
    if not values:
        raise FactorsError(f"{path} holds no factors: a LongRoPE CSV has one factor per line")
    return _vector(values, str(path))


def write_csv_factors(path: str | Path, values: np.ndarray) -> None:
    """One value per line, as the LongRoPE reference code reads it."""
    atomic_write_text(path, "".join(f"{float(v)!r}\n" for v in values))


def load_factors(path: str | Path, geometry: RopeGeometry | None = None, target_length: int | None = None) -> RopeFactors:
    """Load factors from a longsearch JSON, a run directory (its ``best.json``) or a LongRoPE CSV.

    A CSV carries only λ: ``geometry`` and ``target_length`` (from the model and ``--target``) complete it.
    """
    path = Path(path)
    if path.is_dir():
        best = path / "best.json"
        if not best.exists():
            raise FactorsError(f"{path} is a directory without best.json: pass a run directory or a factors file")
        path = best
    if not path.exists():
        raise FactorsError(f"factors file {path} does not exist")
    if path.suffix.lower() == ".csv":
        values = read_csv_factors(path)
        if geometry is None or target_length is None:
            raise FactorsError(f"{path} is a CSV of factors only: give --model and --target so the rest is known")
        if values.size != geometry.n_freq:
            raise FactorsError(
                f"{path} has {values.size} factors but the model has {geometry.n_freq} rotary frequencies: "
                "use factors searched for this model"
            )
        return RopeFactors(
            long_factor=values,
            short_factor=np.ones(geometry.n_freq),
            original_length=geometry.original_length,
            target_length=target_length,
            base=geometry.base,
            rotary_dim=geometry.rotary_dim,
            attention_factor=attention_factor("longrope", target_length / geometry.original_length, geometry.original_length),
            provenance={"method": "longrope-csv", "source": str(path)},
        )
    try:
        text = path.read_text()
    except OSError as e:
        raise FactorsError(f"cannot read {path}: {e.strerror}") from None
    factors = RopeFactors.from_json(text, source=str(path))
    if geometry is not None:
        factors.check_geometry(geometry)
    return factors


__all__ = ["SCHEMA_VERSION", "LongsearchError", "RopeFactors", "load_factors", "read_csv_factors", "write_csv_factors"]
