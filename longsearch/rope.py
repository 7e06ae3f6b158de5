"""RoPE math as rescale vectors. Pure functions: no model objects, no config parsing.

Every method is a rescale vector λ (length d/2) and an attention factor m:
θ̂_i = θ_i / λ_i with θ_i = b^(−2i/d), and cos/sin are multiplied by m.

>>> g = RopeGeometry(rotary_dim=128, base=500000.0, original_length=8192)
>>> critical_index(g)
35
>>> r = rescale("yarn", g, target_length=131072)
>>> r.lam.shape, round(r.m, 4)
((64,), 1.2773)

A method is looked up by name in :data:`METHODS`; dynamic methods (``dynamic-ntk``) depend on the
current length and are evaluated through :func:`schedule`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class RopeGeometry:
    """What the math needs to know of a model: rotary dim d, base b, original window L."""

    rotary_dim: int
    base: float
    original_length: int

    def __post_init__(self) -> None:
        if self.rotary_dim <= 0 or self.rotary_dim % 2:
            raise InputError(f"rotary dimension must be a positive even number, got {self.rotary_dim}")
        if not self.base > 1:
            raise InputError(f"RoPE base must be greater than 1, got {self.base}")
        if self.original_length <= 0:
            raise InputError(f"original window must be positive, got {self.original_length}")

    @property
    def n_freq(self) -> int:
        """Number of rotary frequencies, d/2: the length of every λ."""
        return self.rotary_dim // 2


@dataclass(frozen=True)
class Rescale:
    """The one currency: λ (one divisor per frequency) and the attention factor m."""

    lam: np.ndarray
    m: float = 1.0

    def __post_init__(self) -> None:
        lam = np.asarray(self.lam, dtype=np.float64)
        object.__setattr__(self, "lam", lam)
        object.__setattr__(self, "m", float(self.m))


# ---------------------------------------------------------------- geometry


def frequency_exponents(g: RopeGeometry) -> np.ndarray:
    """2i/d for i = 0 … d/2−1."""
    return np.arange(0, g.rotary_dim, 2, dtype=np.float64) / g.rotary_dim


def inv_freq(g: RopeGeometry) -> np.ndarray:
    """θ_i = b^(−2i/d)."""
    return 1.0 / (g.base ** frequency_exponents(g))


def periods(g: RopeGeometry) -> np.ndarray:
    """Period of each frequency in tokens, T_i = 2π·b^(2i/d)."""
    return 2 * math.pi * g.base ** frequency_exponents(g)


def critical_index(g: RopeGeometry) -> int:
    """Theoretical critical index d_tcd = ⌈(d/2)·log_b(L/2π)⌉: the first frequency whose period exceeds L."""
    return _index_for_period(g, g.original_length / (2 * math.pi))


def critical_index_lower(g: RopeGeometry) -> int:
    """Lower end of LongRoPE2's search range for the real critical index: ⌈(d/2)·log_b(L/(2π·10))⌉."""
    return _index_for_period(g, g.original_length / (2 * math.pi * 10))


def _index_for_period(g: RopeGeometry, x: float) -> int:
    value = math.ceil(g.n_freq * math.log(x) / math.log(g.base))
    return int(min(max(value, 0), g.n_freq))


def scale_ratio(g: RopeGeometry, target_length: int) -> float:
    """s = L'/L."""
    return target_length / g.original_length


def extension_ratio(g: RopeGeometry, target_length: int) -> float:
    """s = L'/L for the baselines, at least 1: a target inside the original window needs no extension, and a ratio
    below 1 would speed the frequencies up (PI "for 2k" on a 32k window: λ = 1/16). Every baseline is the identity
    there (λ = 1, m = 1)."""
    return max(1.0, scale_ratio(g, target_length))


# ---------------------------------------------------------------- attention factor


def yarn_mscale(s: float, mscale: float = 1.0) -> float:
    """YaRN's 0.1·mscale·ln s + 1 (1 when s ≤ 1)."""
    return 1.0 if s <= 1 else 0.1 * mscale * math.log(s) + 1.0


def attention_factor(policy: str | float, s: float, original_length: int) -> float:
    """m under a policy: ``"longrope"`` √(1 + ln s / ln L), ``"yarn"`` 0.1·ln s + 1, ``"none"`` 1, or a number."""
    if isinstance(policy, (int, float)) and not isinstance(policy, bool):
        if not math.isfinite(policy) or policy <= 0:
            raise InputError(f"attention factor must be a positive number, got {policy}")
        return float(policy)
    name = str(policy).strip().lower()
    if name == "longrope":
        return 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(original_length))
    if name == "yarn":
        return yarn_mscale(s)
    if name in ("none", "1"):
        return 1.0
    try:
        return attention_factor(float(name), s, original_length)
    except ValueError:
        raise InputError(f"unknown attention-factor policy {policy!r}: use longrope, yarn, none or a positive number") from None


# ---------------------------------------------------------------- methods


def none_method(g: RopeGeometry, target_length: int) -> Rescale:
    """The original RoPE: λ = 1, m = 1."""
    return Rescale(np.ones(g.n_freq), 1.0)


def pi_method(g: RopeGeometry, target_length: int) -> Rescale:
    """Position interpolation (transformers' ``linear``): λ_i = s."""
    s = extension_ratio(g, target_length)
    return Rescale(np.full(g.n_freq, s), 1.0)


def ntk_method(g: RopeGeometry, target_length: int) -> Rescale:
    """NTK-aware: base b·s^(d/(d−2)), i.e. λ_i = s^(2i/(d−2))."""
    s = extension_ratio(g, target_length)
    return Rescale(_ntk_lambda(g, s), 1.0)


def _ntk_lambda(g: RopeGeometry, alpha: float) -> np.ndarray:
    d = g.rotary_dim
    i = np.arange(g.n_freq, dtype=np.float64)
    return alpha ** (2 * i / (d - 2)) if d > 2 else np.ones(g.n_freq)


def dynamic_ntk_method(g: RopeGeometry, target_length: int, current_length: int | None = None) -> Rescale:
    """Dynamic NTK at the current length n (transformers' ``dynamic``): NTK with α = s·n/L − (s−1), n ≥ L.

    ``target_length`` sets s (transformers' ``factor``); with no ``current_length`` it is taken as n.
    """
    s = extension_ratio(g, target_length)
    n = max(current_length if current_length is not None else target_length, g.original_length)
    alpha = s * n / g.original_length - (s - 1)
    return Rescale(_ntk_lambda(g, alpha), 1.0)


def yarn_ramp(g: RopeGeometry, beta_fast: float = 32.0, beta_slow: float = 1.0, truncate: bool = True) -> np.ndarray:
    """ramp_i in [0, 1]: 0 keeps frequency i (high frequencies), 1 interpolates it by s."""
    d, b, L = g.rotary_dim, g.base, g.original_length

    def correction(rotations: float) -> float:
        return d * math.log(L / (2 * math.pi * rotations)) / (2 * math.log(b))

    low, high = correction(beta_fast), correction(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001
    i = np.arange(g.n_freq, dtype=np.float64)
    return np.clip((i - low) / (high - low), 0.0, 1.0)


def yarn_method(
    g: RopeGeometry,
    target_length: int,
    *,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
    attention: float | None = None,
    truncate: bool = True,
) -> Rescale:
    """YaRN: λ_i = 1 / ((1−e_i)/s + e_i) with e_i = 1 − ramp_i; m = 0.1·ln s + 1 (or the mscale ratio)."""
    s = extension_ratio(g, target_length)
    e = 1.0 - yarn_ramp(g, beta_fast, beta_slow, truncate)
    lam = 1.0 / ((1.0 - e) / s + e)
    if attention is not None:
        m = float(attention)
    elif mscale and mscale_all_dim:
        m = yarn_mscale(s, mscale) / yarn_mscale(s, mscale_all_dim)
    else:
        m = yarn_mscale(s)
    return Rescale(lam, m)


def llama3_method(
    g: RopeGeometry,
    target_length: int,
    *,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
) -> Rescale:
    """Llama-3.1 style: keep short wavelengths, divide long ones by s, blend in between; m = 1."""
    s = extension_ratio(g, target_length)
    L = g.original_length
    wavelength = periods(g)
    lam = np.ones(g.n_freq)
    low_wl, high_wl = L / low_freq_factor, L / high_freq_factor
    lam[wavelength > low_wl] = s
    mid = ~(wavelength < high_wl) & ~(wavelength > low_wl)
    t = (L / wavelength[mid] - low_freq_factor) / (high_freq_factor - low_freq_factor)
    lam[mid] = 1.0 / ((1 - t) / s + t)
    return Rescale(lam, 1.0)


def longrope_method(
    g: RopeGeometry,
    target_length: int,
    *,
    long_factor: np.ndarray | list[float] | None = None,
    short_factor: np.ndarray | list[float] | None = None,
    current_length: int | None = None,
    attention: str | float = "longrope",
) -> Rescale:
    """Explicit LongRoPE factors: long λ when the current length exceeds L, short λ (default 1) otherwise.

    m follows ``attention`` (default √(1 + ln s / ln L)) and applies at every length, as in transformers.
    """
    if long_factor is None:
        raise InputError("the longrope method needs explicit long factors: pass a factors file")
    n = current_length if current_length is not None else target_length
    chosen = long_factor if n > g.original_length else short_factor
    lam = np.ones(g.n_freq) if chosen is None else np.asarray(chosen, dtype=np.float64)
    if lam.shape != (g.n_freq,):
        raise InputError(f"factors have length {lam.size}, the model has {g.n_freq} rotary frequencies")
    return Rescale(lam, attention_factor(attention, scale_ratio(g, target_length), g.original_length))


class MethodFn(Protocol):
    def __call__(self, g: RopeGeometry, target_length: int, **options: object) -> Rescale: ...


@dataclass(frozen=True)
class Method:
    """A registered method: its function, whether it depends on the current length, and a description."""

    name: str
    fn: Callable[..., Rescale]
    dynamic: bool = False
    description: str = ""
    baseline: bool = True  # usable from a name alone (no factors file)
    aliases: tuple[str, ...] = field(default=())


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("none", none_method, description="original RoPE (λ = 1)"),
        Method("pi", pi_method, description="position interpolation, λ = s", aliases=("linear",)),
        Method("ntk", ntk_method, description="NTK-aware, base·s^(d/(d−2))", aliases=("ntk-aware",)),
        Method("dynamic-ntk", dynamic_ntk_method, dynamic=True, description="NTK with α from the current length", aliases=("dynamic",)),
        Method("yarn", yarn_method, description="YaRN ramp, m = 0.1·ln s + 1"),
        Method("llama3", llama3_method, description="Llama-3.1 wavelength bands"),
        Method("longrope", longrope_method, dynamic=True, baseline=False, description="explicit searched factors"),
    ]
}
_ALIASES = {alias: m.name for m in METHODS.values() for alias in m.aliases}


def get_method(name: str) -> Method:
    """Look a method up by name or alias, with a clear error for an unknown one."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise InputError(f"unknown RoPE method {name!r}: choose one of {known}")
    return METHODS[key]


def method_options(method: Method) -> list[str]:
    """The options a method takes (beyond the geometry, the target and, for dynamic methods, the current length)."""
    params = list(inspect.signature(method.fn).parameters.values())[2:]
    return [p.name for p in params if p.name != "current_length"]


def check_options(method: Method, options: dict[str, object]) -> None:
    """Refuse an option the method does not take, naming it (as transformers does per RoPE type)."""
    known = method_options(method)
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        takes = f"it takes {', '.join(known)}" if known else "it takes no options"
        raise InputError(f"the {method.name} method has no option {', '.join(map(repr, unknown))}: {takes}")


def rescale(name: str, g: RopeGeometry, target_length: int, current_length: int | None = None, **options: object) -> Rescale:
    """λ and m of a named method. Dynamic methods use ``current_length`` (default: the target)."""
    method = get_method(name)
    check_options(method, options)
    if method.dynamic:
        options["current_length"] = current_length
    return method.fn(g, target_length, **options)


class Schedule(Protocol):
    """A method as the model sees it: from the current sequence length to (λ, m)."""

    def __call__(self, seq_len: int) -> Rescale: ...


@runtime_checkable
class SwitchingSchedule(Schedule, Protocol):
    """A schedule that is one of two (λ, m) split at a length, which it says up front: ``long`` above
    ``split`` tokens, ``short`` up to it. The patched model then picks between them on the device, without
    reading the length back to the host (as transformers' longrope does)."""

    def switch(self) -> tuple[Rescale, Rescale, int]:
        """(long, short, split)."""
        ...


@dataclass(frozen=True)
class StaticSchedule:
    """The same (λ, m) at every length."""

    value: Rescale

    def __call__(self, seq_len: int) -> Rescale:
        return self.value

    def switch(self) -> tuple[Rescale, Rescale, int]:
        return self.value, self.value, 0


@dataclass(frozen=True)
class SwitchSchedule:
    """LongRoPE's switch: ``long`` when seq_len > original_length, else ``short``; one m for both."""

    long: np.ndarray
    short: np.ndarray
    original_length: int
    m: float

    def __call__(self, seq_len: int) -> Rescale:
        return Rescale(self.long if seq_len > self.original_length else self.short, self.m)

    def switch(self) -> tuple[Rescale, Rescale, int]:
        return Rescale(self.long, self.m), Rescale(self.short, self.m), self.original_length


@dataclass(frozen=True)
class MethodSchedule:
    """A registered method evaluated at each length (how dynamic methods behave)."""

    name: str
    geometry: RopeGeometry
    target_length: int
    options: tuple[tuple[str, object], ...] = ()

    def __call__(self, seq_len: int) -> Rescale:
        return rescale(self.name, self.geometry, self.target_length, current_length=seq_len, **dict(self.options))


def schedule(name: str, g: RopeGeometry, target_length: int, **options: object) -> Schedule:
    """A schedule for a named method: static methods give one (λ, m); dynamic ones follow the length."""
    method = get_method(name)
    check_options(method, options)
    if method.dynamic:
        return MethodSchedule(method.name, g, target_length, tuple(sorted(options.items())))
    return StaticSchedule(method.fn(g, target_length, **options))


def baseline_names() -> list[str]:
    """Methods that need nothing but a name (usable as ``--baselines``)."""
    return [m.name for m in METHODS.values() if m.baseline]
