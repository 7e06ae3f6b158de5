"""What the RULER-style tasks are made of: numbers, UUIDs, keys, variable names, real and made-up words, noise.

Everything is drawn from a ``numpy.random.Generator`` passed in, so a task's documents depend on its seed only.
The word pool is read from the shipped public-domain prose (no word list is downloaded).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import NeedleError

#: The passkey filler of the field (Mohtashami & Jaggi 2023; RULER's "noise" haystack), one sentence group.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_HEX = "0123456789abcdef"
_POOL_SKIP_MOST_FREQUENT = 50  # "the", "and", "of", …: a model's prior for them would help it guess
_MAX_DRAWS = 100_000


def noise_text(min_chars: int) -> str:
    """:data:`NOISE` repeated to at least ``min_chars`` characters (sentences separated by one space)."""
    reps = max(1, -(-int(min_chars) // (len(NOISE) + 1)))
    return " ".join([NOISE] * reps)


def number(rng: np.random.Generator, digits: int, taken: set[str] | None = None) -> str:
    """A ``digits``-digit decimal number (no leading zero), not in ``taken`` (which it joins)."""
    return _distinct(lambda: str(int(rng.integers(10 ** (digits - 1), 10**digits))), taken)


def uuid(rng: np.random.Generator, taken: set[str] | None = None) -> str:
    """A random version-4-shaped UUID (8-4-4-4-12 lowercase hex digits) drawn from ``rng``."""

    def draw() -> str:
        h = [_HEX[int(x)] for x in rng.integers(0, 16, 32)]
        h[12] = "4"
        h[16] = _HEX[8 + int(rng.integers(0, 4))]
        s = "".join(h)
        return f"{s[:8]}-{s[8:12]}-{s[12:16]}-{s[16:20]}-{s[20:]}"

    return _distinct(draw, taken)


def variable_name(rng: np.random.Generator, taken: set[str] | None = None, letters: int = 5) -> str:
    """``letters`` random capital letters (RULER's variable names), not in ``taken``."""
    return _distinct(lambda: "".join(_LETTERS[int(i)] for i in rng.integers(0, 26, letters)), taken)


def made_up_word(rng: np.random.Generator, taken: set[str] | None = None) -> str:
    """A pronounceable made-up word of two or three consonant–vowel syllables, sometimes closed by a consonant."""

    def draw() -> str:
        n = 2 + int(rng.integers(0, 2))
        word = "".join(_CONSONANTS[int(rng.integers(len(_CONSONANTS)))] + _VOWELS[int(rng.integers(len(_VOWELS)))] for _ in range(n))
        if rng.random() < 0.5:
            word += _CONSONANTS[int(rng.integers(len(_CONSONANTS)))]
        return word

    return _distinct(draw, taken)


def _distinct(draw, taken: set[str] | None) -> str:
    for _ in range(_MAX_DRAWS):
        value = draw()
        if taken is None or value not in taken:
            if taken is not None:
                taken.add(value)
            return value
    raise NeedleError("could not draw distinct values for a task document")  # pragma: no cover - huge spaces


@functools.lru_cache(maxsize=1)
def word_pool() -> tuple[str, ...]:
    """Lower-case words of 3–9 letters that occur at least 3 times in the shipped prose (KJV + The Devil's
    Dictionary), without the 50 most frequent ones; sorted, so the pool does not depend on anything but the text."""
    from ..needles import load_haystack_text

    text = load_haystack_text("all")
    counts = Counter(w for w in re.findall(r"[A-Za-z]+", text) if w.islower())
    frequent = {w for w, _ in counts.most_common(_POOL_SKIP_MOST_FREQUENT)}
    return tuple(sorted(w for w, n in counts.items() if 3 <= len(w) <= 9 and n >= 3 and w not in frequent))


def contains_any(word: str, references: Iterable[str]) -> bool:
    """Whether ``word`` contains one of ``references`` (or equals it), case-insensitively: such a word in an output
    would make the substring match rule credit a reference that was not given."""
    w = word.lower()
    return any(r.lower() in w for r in references)


class WordStream:
    """Distinct words of :func:`word_pool` in an order drawn from ``rng``: ``take(n)`` gives the next ``n`` that are
    not in ``taken`` and contain no word of ``avoid`` (set it once the references are drawn)."""

    def __init__(self, rng: np.random.Generator, taken: set[str] | None = None, pool: Sequence[str] | None = None) -> None:
        self.words = word_pool() if pool is None else tuple(pool)
        self.order = rng.permutation(len(self.words))
        self.pos = 0
        self.taken = taken if taken is not None else set()
        self.avoid: tuple[str, ...] = ()

    def take(self, n: int) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            if self.pos >= len(self.order):
                raise NeedleError(
                    f"the word pool ({len(self.words)} words from the shipped prose) has too few distinct words for one "
                    "document of this length: use a shorter length"
                )
            w = self.words[int(self.order[self.pos])]
            self.pos += 1
            if w in self.taken or contains_any(w, self.avoid):
                continue
            self.taken.add(w)
            out.append(w)
        return out


__all__ = [
    "NOISE",
    "WordStream",
    "contains_any",
    "made_up_word",
    "noise_text",
    "number",
    "uuid",
    "variable_name",
    "word_pool",
]
