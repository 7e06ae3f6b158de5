"""How a generated answer is judged: RULER's two string-match rules.

Both are case-insensitive substring tests of each reference in the output (RULER's definition):

- ``"all"`` — the fraction of references present (1.0 only when every one is there); RULER's
  ``string_match_all``, used by every task here;
- ``"part"`` — 1.0 when at least one reference is present; RULER's ``string_match_part`` (its QA tasks).

>>> match_all("The numbers are 1234567 and 7654321.", ["1234567", "7654321", "1111111"])
0.6666666666666666
>>> match_part("It is 1234567.", ["1234567", "7654321"])
1.0

A substring test credits a reference that appears inside a longer word; the generators draw references so that
no other word of the same document contains one (see :func:`longsearch.ruler.words.contains_any`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import InputError


def _present(output: str, references: Sequence[str]) -> list[bool]:
    text = output.lower()
    return [str(r).lower() in text for r in references]


def match_all(output: str, references: Sequence[str]) -> float:
    """The fraction of ``references`` found in ``output`` (case-insensitive substrings); 0.0 without references."""
    found = _present(output, references)
    return sum(found) / len(found) if found else 0.0


def match_part(output: str, references: Sequence[str]) -> float:
    """1.0 when any of ``references`` is found in ``output`` (case-insensitive substrings), else 0.0."""
    return 1.0 if any(_present(output, references)) else 0.0


MATCHERS: dict[str, Callable[[str, Sequence[str]], float]] = {"all": match_all, "part": match_part}


def match_score(rule: str, output: str, references: Sequence[str]) -> float:
    """``output`` judged by the named rule (``"all"`` or ``"part"``)."""
    if rule not in MATCHERS:
        raise InputError(f"unknown match rule {rule!r}: use one of {', '.join(MATCHERS)}")
    return MATCHERS[rule](output, references)


__all__ = ["MATCHERS", "match_all", "match_part", "match_score"]
