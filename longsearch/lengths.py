"""Token lengths as users write them: ``32768``, ``32k``, ``128K``, ``1m`` (k = 1024, m = 1024²)."""

from __future__ import annotations

import re

from .errors import InputError

_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_length(text: str | int) -> int:
    """Parse a token length.

    >>> parse_length("128k"), parse_length("1m"), parse_length("4096")
    (131072, 1048576, 4096)
    """
    value: float
    if isinstance(text, int):
        value = text
    else:
        match = _PATTERN.match(str(text))
        if not match:
            raise InputError(f"cannot read the length {text!r}: write a number of tokens such as 32768, 32k, 128k or 1m")
        number, unit = match.groups()
        value = float(number) * _UNITS[unit.lower()]
        if value != int(value):
            raise InputError(f"the length {text!r} is not a whole number of tokens: write e.g. 32k or 32768")
        value = int(value)
    if value <= 0:
        raise InputError(f"the length {text!r} must be a positive number of tokens")
    return value


def parse_lengths(text: str) -> list[int]:
    """Parse a comma-separated list of lengths: ``"1k,2k,4k"`` -> ``[1024, 2048, 4096]``."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise InputError(f"no lengths in {text!r}: give a comma-separated list such as 1k,2k,4k")
    return [parse_length(p) for p in parts]


def format_length(n: int) -> str:
    """The short form of a length: 131072 -> '128k', 1000 -> '1000'."""
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}m"
    if n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)
