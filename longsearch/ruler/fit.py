"""Exact token counts: prose windows with pieces inserted at sentence boundaries, and lists filled to the token.

A document is built in token space from pieces, each encoded *in context* (``needles.PieceEncoder``), so lengths
add up by construction. Two ways to make a body exactly ``n`` tokens long:

- :class:`Prose`: a window of exactly ``n − (inserted pieces)`` tokens of haystack text (or noise), starting at
  a sentence and ending between words, with pieces inserted at the sentence boundaries nearest their depths —
  the machinery of :mod:`longsearch.needles`, shared rather than copied;
- :func:`fill_exact`: items that must be there, then filler items while they fit, then a subset of spare
  items whose lengths add up to the remainder exactly (subset sum); when no subset does (every spare item
  has the same length, e.g. UUID needles with a byte tokenizer), the caller pads the remainder with noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import NeedleError
from ..needles import TEMPLATES, DocumentBuilder, PieceEncoder

#: spare items offered to the subset sum, and how many filler items may be taken back to make room
_SPARES = 64
_BACKOFF = 24


class Prose:
    """Exact-length windows of ``text`` for one tokenizer, and pieces inserted into them at sentence boundaries."""

    def __init__(self, tokenizer, length: int, text: str, enc: PieceEncoder | None = None) -> None:
        # needles' builder holds the window machinery; its template is not used here
        self._b = DocumentBuilder(tokenizer, length, TEMPLATES["magic-number"], text)
        if enc is not None:
            self._b.enc = enc
        self.text = text

    def window(self, rng: np.random.Generator, n: int) -> tuple[list[int], int]:
        """Exactly ``n`` tokens of prose from a random place (a sentence start, ending between words where the text
        allows), and the character offset it was taken from."""
        if n <= 0:
            return [], 0
        start = self._b.sentence_start(int(rng.integers(0, len(self.text))))
        ids = self._b.passage(start, n)
        a = self._b.window_start(ids, n)
        window = ids[a : a + n]
        if len(window) != n:  # pragma: no cover - passage() returns at least n + 1 tokens
            raise NeedleError(f"internal error: a prose window of {len(window)} tokens instead of {n}")
        return window, start

    def insert(self, window: list[int], pieces: Sequence[list[int]], depths: Sequence[float]) -> tuple[list[int], list[tuple[int, int]]]:
        """``window`` with ``pieces[k]`` inserted at the boundary nearest ``depths[k]`` (a fraction of the window);
        pieces sharing a boundary keep their order. Returns the tokens and each piece's (start, end) in them."""
        cuts = [self._b.boundary_near(window, round(float(d) * len(window))) for d in depths]
        order = sorted(range(len(pieces)), key=lambda k: (cuts[k], k))
        out: list[int] = []
        spans: dict[int, tuple[int, int]] = {}
        prev = 0
        for k in order:
            out += window[prev : cuts[k]]
            spans[k] = (len(out), len(out) + len(pieces[k]))
            out += pieces[k]
            prev = cuts[k]
        out += window[prev:]
        return out, [spans[k] for k in range(len(pieces))]


def subset_sum(lengths: Sequence[int], target: int) -> list[int] | None:
    """Indices of items whose lengths add up to ``target`` exactly (each item used at most once), or None.

    >>> subset_sum([5, 3, 4], 7)
    [1, 2]
    >>> subset_sum([4, 4], 6) is None
    True
    """
    if target == 0:
        return []
    if target < 0:
        return None
    # reach[t] = (item, previous total) that first reached total t
    reach: dict[int, tuple[int, int]] = {}
    totals = [0]
    for i, n in enumerate(lengths):
        if n <= 0:
            continue
        for t in list(totals):
            u = t + n
            if u <= target and u not in reach:
                reach[u] = (i, t)
                totals.append(u)
        if target in reach:
            break
    if target not in reach:
        return None
    out, t = [], target
    while t:
        i, t = reach[t]
        out.append(i)
    return sorted(out)


@dataclass
class Fill:
    """What :func:`fill_exact` chose: the first ``n_fillers`` filler items drawn, the spare items drawn at
    ``spares`` (indices in draw order), and the tokens still missing (0 unless no subset of spares closes the gap:
    the caller pads them)."""

    n_fillers: int
    spares: list[int]
    pad: int


def fill_exact(fixed: int, n: int, filler: Callable[[], int] | None, spare: Callable[[], int], what: str) -> Fill:
    """Choose items so that ``fixed`` tokens plus theirs make exactly ``n``.

    ``filler()`` draws the next filler item and returns its length in tokens (None: no fillers); ``spare()`` the
    same for a spare item (used to close the gap exactly). The caller keeps what was drawn, in order. Fillers are
    taken while they fit (the first one that does not fit is drawn but unused); then the remainder is closed with a
    subset of up to 64 spares, giving back up to 24 fillers to make room if no subset fits. ``what`` names the task
    in the error raised when ``fixed`` alone exceeds ``n``.
    """
    if fixed > n:
        raise NeedleError(f"{n} tokens cannot hold the {what} task ({fixed} tokens without any filler): use a longer length")
    fillers: list[int] = []
    total = fixed
    if filler is not None:
        while True:
            size = filler()
            if total + size > n:
                break
            fillers.append(size)
            total += size
    kept = len(fillers)
    pool: list[int] = []
    for _ in range(_BACKOFF + 1):
        while len(pool) < _SPARES:
            pool.append(spare())
        chosen = subset_sum(pool, n - total)
        if chosen is not None:
            return Fill(kept, chosen, 0)
        if kept == 0:
            break
        kept -= 1
        total -= fillers[kept]
    # no exact subset: keep every filler that fits and let the caller pad what is left
    return Fill(len(fillers), [], n - fixed - sum(fillers))


__all__ = ["Fill", "Prose", "fill_exact", "subset_sum"]
