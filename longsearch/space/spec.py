"""Reading a search space's YAML: presets, bound expressions in s, and the checks every kind shares.

Each function validates one key (or one group of keys) and raises an :class:`~longsearch.errors.InputError`
whose message names the key and, through ``where`` (``"FILE: "``), the file. Kinds call the helpers they
need for their own keys (``parse_critical_range``, ``parse_range``, ``parse_flag``).

>>> eval_bound("1 + 0.4*ln(s)", 8.0) == 1 + 0.4 * math.log(8.0)
True
>>> parse_grid({"lower": "s", "upper": "2s"}, 8.0, (1.0, "1 + s"), "")
Grid(step=0.01, lower=8.0, upper=16.0, monotone=True)
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Collection, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..rope import attention_factor, baseline_names, get_method
from .grid import Grid

PRESETS_PACKAGE = "longsearch.search_spaces"


# ---------------------------------------------------------------- presets and files


def preset_names() -> list[str]:
    """Names of the shipped presets (``hybrid``, ``longrope2``, ``longrope``, ``yarn``)."""
    root = resources.files(PRESETS_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """The file of a shipped preset."""
    return Path(str(resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml")))


def find_space(name_or_path: str) -> tuple[Path, str, str]:
    """(file, name, source) of a preset name or a YAML path; ``source`` is ``preset:NAME`` or the path."""
    path = Path(str(name_or_path)).expanduser()
    looks_like_path = path.suffix.lower() in (".yaml", ".yml") or "/" in str(name_or_path) or path.exists()
    if looks_like_path:
        if not path.is_file():
            raise InputError(f"search space file {str(path)!r} not found: give a YAML file or a preset ({', '.join(preset_names())})")
        return path, path.stem, str(path)
    name = str(name_or_path).strip().lower()
    if name not in preset_names():
        raise InputError(f"unknown search space {name_or_path!r}: choose a preset ({', '.join(preset_names())}) or give a YAML file")
    return preset_path(name), name, f"preset:{name}"


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a space's YAML file; a one-line InputError for an unreadable, invalid or empty file."""
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


# ---------------------------------------------------------------- the shared keys


def parse_grid(spec: Mapping[str, Any], s: float, default_bounds: tuple[Any, Any], where: str) -> Grid:
    """``step``, ``lower``, ``upper`` (numbers or expressions in s; ``default_bounds`` when absent) and ``monotone``."""
    step = spec.get("step", 0.01)
    if isinstance(step, str):  # YAML 1.1 reads 1e-2 as a string
        try:
            step = float(step)
        except ValueError:
            pass
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not (math.isfinite(step) and step > 0):
        raise InputError(f"{where}step must be a positive number (the grid of λ values, e.g. 0.01), got {step!r}")
    step = float(step)
    lower = eval_bound(spec.get("lower", default_bounds[0]), s, "lower", where)
    upper = eval_bound(spec.get("upper", default_bounds[1]), s, "upper", where)
    if lower <= 0:
        raise InputError(f"{where}lower resolves to {lower:g} at s = {s:g}: every λ must be positive")
    if lower > upper:
        raise InputError(f"{where}lower ({lower:g}) is above upper ({upper:g}) at s = {s:g}: no λ fits the bounds")
    lo_k, hi_k = Grid(step, lower, upper).bounds
    if lo_k > hi_k:
        raise InputError(f"{where}no grid value (step {step:g}) lies within [{lower:g}, {upper:g}]: widen the bounds or refine the step")
    return Grid(step, lower, upper, parse_flag(spec.get("monotone", True), "monotone", where))


def parse_attention(policy: Any, s: float, original_length: int, where: str) -> tuple[float, tuple[float, float] | None]:
    """(m, m_range): a fixed m from a policy (``longrope``, ``yarn``, ``none``, a number), or a searched range
    ``{min, max}`` (expressions in s) whose m is its low end."""
    if isinstance(policy, dict):
        unknown_m = sorted(set(policy) - {"min", "max"})
        if unknown_m or not {"min", "max"} <= set(policy):
            raise InputError(f"{where}attention as a range needs exactly the keys min and max (e.g. {{min: 1, max: '1 + 0.4*ln(s)'}})")
        m_lo = eval_bound(policy["min"], s, "attention min", where)
        m_hi = eval_bound(policy["max"], s, "attention max", where)
        if not 0 < m_lo <= m_hi:
            raise InputError(f"{where}attention range [{m_lo:g}, {m_hi:g}] must satisfy 0 < min ≤ max")
        return m_lo, (m_lo, m_hi)
    try:
        return attention_factor(policy, s, original_length), None
    except InputError as e:
        raise InputError(f"{where}attention: {e}") from None


def parse_seed_names(
    seeds: Any,
    where: str,
    special: Mapping[str, tuple[str, list[str]]],
    own: Collection[str],
    refuse: Callable[[str, str], str | None],
) -> list[str]:
    """Seed names, normalized and deduplicated: static baselines of rope.py (``pi``, ``ntk``, ...) and the
    ``special`` seeds some kinds expand themselves (name → (why it needs them, the kinds that take it)), of
    which this kind takes ``own``. ``refuse(name, given)`` is a kind's refusal of a baseline (None: taken)."""
    if isinstance(seeds, str):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(x, str) for x in seeds):
        raise InputError(f"{where}seeds must be a non-empty list of names (pi, ntk, yarn, llama3, ntk-shaped)")
    known = [b for b in baseline_names() if not get_method(b).dynamic] + list(special)
    names: list[str] = []
    for x in seeds:
        key = x.strip().lower()
        if key in special:
            if key not in own:
                why, owners = special[key]
                raise InputError(f"{where}seed {key!r} needs kind {' or '.join(owners)} ({why})")
        else:
            try:
                method = get_method(key)
            except InputError:
                method = None
            if method is None or method.dynamic or not method.baseline:
                raise InputError(f"{where}unknown seed {x!r}: seeds are {', '.join(known)}")
            key = method.name
            refusal = refuse(key, x)
            if refusal is not None:
                raise InputError(f"{where}{refusal}")
        if key not in names:
            names.append(key)
    return names


def parse_n_mutated(value: Any, where: str) -> int | None:
    """``n_mutated_seeds``: None (fill the population) or a non-negative count."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InputError(f"{where}n_mutated_seeds must be a non-negative integer or null (fill the population), got {value!r}")
    return value


# ---------------------------------------------------------------- helpers for kinds' own keys


def parse_flag(value: Any, key: str, where: str) -> bool:
    """A YAML boolean (``monotone``, ``truncate``)."""
    if not isinstance(value, bool):
        raise InputError(f"{where}{key} must be true or false, got {value!r}")
    return value


def parse_range(value: Any, key: str, where: str) -> tuple[float, float]:
    """``[min, max]`` of positive finite numbers (``beta_fast``, ``beta_slow``)."""
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value)
    )
    if not ok or value[0] > value[1]:
        raise InputError(f"{where}{key} must be a range [min, max] of positive numbers, got {value!r}")
    return float(value[0]), float(value[1])


def parse_critical_range(spec: Mapping[str, Any], auto: tuple[int, int], n_freq: int, where: str) -> tuple[int, int]:
    """``critical_lower`` / ``critical_upper``: ``auto`` (the ends of ``auto``) or indices; at least the last
    frequency stays searched (an ``auto`` upper end is lowered to n − 1, an ``auto`` lower end to the upper)."""
    lo_spec, hi_spec = spec.get("critical_lower", "auto"), spec.get("critical_upper", "auto")
    c_lo = _critical_bound(lo_spec, auto[0], "critical_lower", where)
    c_hi = _critical_bound(hi_spec, auto[1], "critical_upper", where)
    if c_hi > n_freq - 1:  # at least one searched dimension
        if not _is_auto(hi_spec):
            raise InputError(f"{where}critical_upper ({c_hi}) must be below the number of frequencies ({n_freq})")
        c_hi = n_freq - 1
    if c_lo > c_hi and _is_auto(lo_spec):
        c_lo = c_hi
    if c_lo > c_hi:
        raise InputError(f"{where}critical_lower ({c_lo}) must not exceed critical_upper ({c_hi})")
    return c_lo, c_hi


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def _critical_bound(value: Any, auto: int, key: str, where: str) -> int:
    if _is_auto(value):
        return auto
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{where}{key} must be 'auto' or a non-negative integer index, got {value!r}")
    return value


# ---------------------------------------------------------------- stored spaces


def differs(a: Any, b: Any) -> bool:
    """Whether two resolved values (numbers to 1e-9, lists, dicts) differ, as read back from JSON."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(differs(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) != set(b) or any(differs(a[k], b[k]) for k in a)
    return a != b
