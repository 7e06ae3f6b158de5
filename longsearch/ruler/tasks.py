"""The RULER-style task generators: one function per task family, all building exact-length documents.

Every document is ``preamble · body · question + answer`` in token space; the answer closes the document
(``answer_start … answer_end = length``), so a set is a :class:`~longsearch.needles.NeedleSet` the scorer reads
as it is, and its prompt for generation is ``input_ids[:answer_start]``. See :mod:`longsearch.ruler` for the
tasks and how they differ from RULER's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, NeedleError
from ..needles import NeedleSample, NeedleSet, PieceEncoder, draw_key, load_haystack, resolve_depths, tokenizer_fingerprint
from . import words as W
from .fit import Prose, fill_exact

FORMAT = "longsearch-ruler-1"
_MIN_TEXT = 16  # tokens of haystack text a needle task keeps at least
MATCH_RULES = ("all", "part")

# ---------------------------------------------------------------- the task records


@dataclass(frozen=True)
class Task:
    """One task: how its documents are made, how an answer is judged, and which RULER task it stands for.

    ``match``: ``"all"`` (a sample scores the fraction of its references found in the output, RULER's
    string_match_all) or ``"part"`` (1 when any reference is found, RULER's string_match_part). ``scoring``:
    ``"teacher-forced"`` for tasks with one answer (the answer-token NLL and exact match of
    :func:`longsearch.scoring.score`), ``"generate"`` for tasks with several answers (greedy generation judged by
    ``match``). ``params``: the defaults of the knobs :func:`build_task_set` accepts for this task.
    """

    name: str
    family: str
    ruler: str
    description: str
    make: Callable[[_Doc, np.random.Generator, float, dict[str, Any]], NeedleSample] = field(repr=False)
    params: dict[str, Any] = field(default_factory=dict)
    match: str = "all"
    scoring: str = "generate"

    @property
    def single_answer(self) -> bool:
        return self.scoring == "teacher-forced"


class _Doc:
    """What every document of one set shares: the encoder, the length, the haystack and noise windows."""

    def __init__(self, tokenizer, length: int, text: str) -> None:
        self.tok = tokenizer
        self.enc = PieceEncoder(tokenizer)
        self.length = length
        self.text = text
        self._prose: Prose | None = None
        self._noise: Prose | None = None
        self._words: dict[str, list[int]] = {}

    @property
    def prose(self) -> Prose:
        if self._prose is None:
            self._prose = Prose(self.tok, self.length, self.text, self.enc)
        return self._prose

    @property
    def noise(self) -> Prose:
        if self._noise is None:  # generous: a few characters per token, the window's slack, the estimate's probe
            self._noise = Prose(self.tok, self.length, W.noise_text(8 * (self.length + 4096) + 20_000), self.enc)
        return self._noise

    def head(self, preamble: str, needed: int = 0) -> list[int]:
        """The special prefix and ``preamble``; where the rest of the document needs ``needed`` tokens and the whole
        preamble leaves too few, its last sentences are dropped (all of them if need be: a window of a few hundred
        byte tokens cannot hold RULER's instructions, and the testbed was trained with and without them)."""
        text = preamble
        while True:
            ids = self.enc.prefix + (self.enc.plain(text) if text else [])
            if not text or self.length - len(ids) >= needed:
                return ids
            cut = text.rstrip().rfind(". ", 0, len(text.rstrip()) - 1)
            text = text[: cut + 1] if cut > 0 else ""

    def piece(self, text: str) -> list[int]:
        """Tokens of ``text`` inside running text (it starts with its separator, e.g. a space)."""
        return self.enc.in_context(text)

    def word(self, text: str) -> list[int]:
        """Tokens of `` text`` in running text, cached (lists repeat their words)."""
        ids = self._words.get(text)
        if ids is None:
            ids = self._words[text] = self.enc.in_context(" " + text)
        return ids

    def tail(self, question: str, answer: str) -> tuple[list[int], int, str]:
        """Tokens of ``question + answer`` (the question ends where the answer starts), how many of them are the
        answer's, and what those decode to (checked to contain the answer)."""
        q_ids = self.enc.in_context(question)
        qa_ids = self.enc.in_context(question + answer)
        p = 0
        while p < min(len(q_ids), len(qa_ids)) and q_ids[p] == qa_ids[p]:
            p += 1
        decoded = self.enc.decode(qa_ids[p:])
        if p == len(qa_ids) or answer.strip() not in decoded:
            raise NeedleError(f"the tokenizer does not reproduce the answer {answer!r} in context (got {decoded!r})")
        return qa_ids, len(qa_ids) - p, decoded

    def pad(self, rng: np.random.Generator, n: int) -> list[int]:
        """``n`` tokens of noise (closing a list that no subset of items fills exactly)."""
        return self.noise.window(rng, n)[0]

    def finish(
        self, head: list[int], body: list[int], tail: tuple[list[int], int, str], answer: str, references: list[str], meta: dict[str, Any]
    ) -> NeedleSample:
        qa_ids, n_answer, decoded = tail
        doc = np.asarray(head + body + qa_ids, dtype=np.int64)
        if len(doc) != self.length:  # pragma: no cover - guarded by construction
            raise NeedleError(f"internal error: built {len(doc)} tokens instead of {self.length}")
        out = {
            "answer": answer,
            "answer_text": decoded,
            "references": list(references),
            "question_start": self.length - len(qa_ids),
            "max_new_tokens": max_new_tokens(n_answer),
            "body_start": len(head),
            **meta,
        }
        return NeedleSample(doc, self.length - n_answer, self.length, out)

    def body_budget(self, head: list[int], tail: tuple[list[int], int, str], what: str, minimum: int = 1) -> int:
        n = self.length - len(head) - len(tail[0])
        if n < minimum:
            raise NeedleError(
                f"{self.length} tokens cannot hold the {what} task ({self.length - n} tokens without its body, which needs "
                f"{minimum}): use a longer length"
            )
        return n


def max_new_tokens(n_answer: int) -> int:
    """The generation budget of a sample whose canonical answer has ``n_answer`` tokens: a quarter more, at least 4."""
    return n_answer + max(4, math.ceil(n_answer / 4))


def _shift(spans: Sequence[tuple[int, int]], offset: int) -> list[tuple[int, int]]:
    return [(a + offset, b + offset) for a, b in spans]


def _join(items: Sequence[str]) -> str:
    return ", ".join(items)


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------- needle retrieval


def _niah(haystack: str, key: str, value: str) -> Callable[[_Doc, np.random.Generator, float, dict[str, Any]], NeedleSample]:
    """Needles ``One of the special magic {kind}s for {key} is: {value}.`` in prose, noise, or other needles."""

    def make(doc: _Doc, rng: np.random.Generator, depth: float, p: dict[str, Any]) -> NeedleSample:
        queries, n_values, n_distract = int(p["queries"]), int(p["values"]), int(p.get("distractors", 0))
        kind = "uuid" if value == "uuid" else "number"
        keys_taken: set[str] = set()
        values_taken: set[str] = set()

        def next_key() -> str:
            if key == "uuid":
                return W.uuid(rng, keys_taken)
            k = draw_key(rng, keys_taken)
            keys_taken.add(k)
            return k

        def draw_value() -> str:
            return W.uuid(rng, values_taken) if value == "uuid" else W.number(rng, int(p["digits"]), values_taken)

        def needle(k: str, v: str) -> list[int]:
            return doc.piece(f" One of the special magic {kind}s for {k} is: {v}.")

        asked_keys = [next_key() for _ in range(queries)]
        asked = [(k, draw_value()) for k in asked_keys for _ in range(n_values)]
        depths = [float(depth)] + [float(rng.uniform(0.0, 1.0)) for _ in asked[1:]]
        if n_values > 1:  # the answer lists the values in the order they appear
            order = sorted(range(len(asked)), key=lambda i: (depths[i], i))
            asked, depths = [asked[i] for i in order], [depths[i] for i in order]
        references = [v for _, v in asked]
        # wording: the project's magic-number template, in the plural where several values are asked for
        if queries == 1 and n_values == 1:
            preamble = (
                f"A special magic {kind} is hidden within the following text. Make sure to memorize it. "
                f"I will quiz you about the {kind} afterwards."
            )
            k0 = asked_keys[0]
            question = (
                f" What is the special magic {kind} for {k0} mentioned in the provided text? "
                f"The special magic {kind} for {k0} mentioned in the provided text is "
            )
        else:
            preamble = (
                f"Some special magic {kind}s are hidden within the following text. Make sure to memorize them. "
                f"I will quiz you about the {kind}s afterwards."
            )
            what = "all the special magic" if queries == 1 else "the special magic"
            ks = _and(asked_keys)
            question = (
                f" What are {what} {kind}s for {ks} mentioned in the provided text? The special magic {kind}s for {ks} "
                "mentioned in the provided text are "
            )
        answer = _join(references)
        tail = doc.tail(question, answer)
        asked_ids = [needle(k, v) for k, v in asked]
        distract = [] if haystack == "needles" else [(next_key(), draw_value()) for _ in range(n_distract)]
        pieces = asked_ids + [needle(k, v) for k, v in distract]
        room = len(tail[0]) + sum(len(x) for x in pieces) + (0 if haystack == "needles" else _MIN_TEXT)
        head = doc.head(preamble, room)
        n_body = doc.body_budget(head, tail, f"{len(asked)}-needle", room - len(tail[0]))
        meta: dict[str, Any] = {"keys": asked_keys, "values": references, "depth": round(float(depth), 6)}
        if haystack == "needles":
            body, spans, distract_at, pad = _needle_haystack(doc, rng, n_body, asked_ids, depths, next_key, draw_value, needle)
            meta["pad_tokens"] = pad
        else:
            all_depths = depths + [float(rng.uniform(0.0, 1.0)) for _ in distract]
            n_text = n_body - sum(len(x) for x in pieces)
            if n_text < 1:
                raise NeedleError(f"{doc.length} tokens cannot hold {len(pieces)} needles and any text: use a longer length")
            source = doc.noise if haystack == "noise" else doc.prose
            window, offset = source.window(rng, n_text)
            body, spans = source.insert(window, pieces, all_depths)
            distract_at = [(k, v, s) for (k, v), s in zip(distract, spans[len(asked) :], strict=True)]
            meta["haystack_char_offset"] = offset
        spans = _shift(spans[: len(asked)], len(head))
        meta["needle_start"], meta["needle_end"] = spans[0]
        meta["needles"] = [{"key": k, "value": v, "start": s[0], "end": s[1]} for (k, v), s in zip(asked, spans, strict=True)]
        meta["distractors"] = [
            {"key": k, "value": v, "needle_start": s[0] + len(head), "needle_end": s[1] + len(head)} for k, v, s in distract_at
        ]
        meta["depth_actual"] = round((spans[0][0] - len(head)) / max(1, n_body), 6)
        return doc.finish(head, body, tail, answer, references, meta)

    return make


def _needle_haystack(doc: _Doc, rng, n_body, asked_ids, depths, next_key, draw_value, needle):
    """A body made of needles only: distractor needles with other keys fill it to the token, the asked needles
    among them at their depths (as a fraction of the list); noise closes a gap no set of needles fits."""
    fillers: list[tuple[str, str, list[int]]] = []
    spares: list[tuple[str, str, list[int]]] = []

    def draw(into: list[tuple[str, str, list[int]]]) -> int:
        k, v = next_key(), draw_value()
        into.append((k, v, needle(k, v)))
        return len(into[-1][2])

    fill = fill_exact(sum(len(x) for x in asked_ids), n_body, lambda: draw(fillers), lambda: draw(spares), "needle-haystack")
    items = fillers[: fill.n_fillers] + [spares[i] for i in fill.spares]
    order = rng.permutation(len(items))  # the spares that closed the gap go anywhere, not all at the end
    items = [items[int(i)] for i in order]
    # the asked needles go in at their depths, in depth order (the order they were given)
    slots = [min(len(items), round(d * len(items))) for d in depths]
    body: list[int] = doc.pad(rng, fill.pad) if fill.pad else []
    asked_spans: list[tuple[int, int]] = []
    distract: list[tuple[str, str, tuple[int, int]]] = []
    a = 0
    for i in range(len(items) + 1):
        while a < len(asked_ids) and slots[a] == i:
            asked_spans.append((len(body), len(body) + len(asked_ids[a])))
            body += asked_ids[a]
            a += 1
        if i < len(items):
            k, v, ids = items[i]
            distract.append((k, v, (len(body), len(body) + len(ids))))
            body += ids
    return body, asked_spans, distract, fill.pad


# ---------------------------------------------------------------- variable tracking


def _variable_tracking(doc: _Doc, rng: np.random.Generator, depth: float, p: dict[str, Any]) -> NeedleSample:
    """Chains ``VAR A = 12345. VAR B = VAR A. …`` in noise; name every variable that holds the asked value."""
    chains, hops = int(p["chains"]), int(p["hops"])
    names: set[str] = set()
    values: set[str] = set()
    links: list[list[str]] = [[W.variable_name(rng, names) for _ in range(hops + 1)] for _ in range(chains)]
    vals = [W.number(rng, int(p["digits"]), values) for _ in range(chains)]
    pieces: list[list[int]] = []
    depths: list[float] = []
    labels: list[tuple[int, int]] = []
    for c, chain in enumerate(links):
        for h, name in enumerate(chain):
            rhs = vals[c] if h == 0 else f"VAR {chain[h - 1]}"
            pieces.append(doc.piece(f" VAR {name} = {rhs}."))
            labels.append((c, h))
        depths += sorted(float(x) for x in rng.uniform(0.0, 1.0, hops + 1))  # each chain in order
    value, references = vals[0], links[0]
    preamble = (
        "Memorize every variable assignment hidden in the following text: you will be asked which variables end up holding a given value."
    )
    question = (
        f" Question: which variables in the text above are assigned the value {value}, directly or through other "
        f"variables? Answer: the variables assigned the value {value} are "
    )
    answer = _join(references)
    tail = doc.tail(question, answer)
    need = sum(len(x) for x in pieces) + _MIN_TEXT
    head = doc.head(preamble, len(tail[0]) + need)
    n_body = doc.body_budget(head, tail, "variable-tracking", need)
    window, offset = doc.noise.window(rng, n_body - sum(len(x) for x in pieces))
    body, spans = doc.noise.insert(window, pieces, depths)
    spans = _shift(spans, len(head))
    statements = [{"chain": c, "hop": h, "name": links[c][h], "start": s[0], "end": s[1]} for (c, h), s in zip(labels, spans, strict=True)]
    meta = {
        "value": value,
        "chains": [{"value": v, "names": chain} for v, chain in zip(vals, links, strict=True)],
        "statements": statements,
        "needle_start": spans[0][0],
        "needle_end": spans[0][1],
        "depth": round(float(depths[0]), 6),
        "haystack_char_offset": offset,
    }
    return doc.finish(head, body, tail, answer, references, meta)


# ---------------------------------------------------------------- aggregation


def _references(stream_take: Callable[[int], list[str]], n: int) -> list[str]:
    """``n`` words none of which contains another (so that naming one cannot count as naming another)."""
    out: list[str] = []
    while len(out) < n:
        (w,) = stream_take(1)
        if not W.contains_any(w, out) and not any(r in w or w in r for r in out):
            out.append(w)
    return out


def _cwe_params(p: dict[str, Any], capacity: int, pool: int) -> tuple[int, int, int]:
    """(common words, occurrences of each, occurrences of each uncommon word): RULER's 10, 30, 3 where the list holds
    twice the common block; scaled down in shorter lists, uncommon occurrences raised where the pool runs short."""
    n_c, f_c, f_u = int(p["common"]), int(p["freq_common"]), int(p["freq_uncommon"])
    if p.get("scale", True) and capacity < 2 * n_c * f_c:
        n_c = min(n_c, max(2, capacity // 20))
        f_c = min(f_c, max(3, capacity // (2 * n_c)))
        f_u = max(1, min(f_u, f_c // 4))
    if p.get("scale", True):
        need = (capacity - n_c * f_c) / max(1, f_u)
        if need > 0.8 * pool:  # long lists: each uncommon word comes back more often, always well below the common
            f_u = math.ceil((capacity - n_c * f_c) / (0.8 * pool))
            f_c = max(f_c, 3 * f_u + 3)
    return n_c, f_c, f_u


def _common_words(doc: _Doc, rng: np.random.Generator, depth: float, p: dict[str, Any]) -> NeedleSample:
    """A list of words where a few occur many times more often than the rest: name the most common ones."""
    pool = W.word_pool()
    per_word = float(np.mean([len(doc.word(w)) for w in pool[:: max(1, len(pool) // 64)]]))
    preamble = "Below is a list of words. Some of them occur many more times than the others: count them.\nThe list:"
    q_probe = len(doc.piece("\nQuestion: what are the 10 most common words in the list above? Answer: the 10 most common words are"))
    room = doc.length - len(doc.head(preamble)) - q_probe - int(p["common"]) * (per_word + 1)
    n_c, f_c, f_u = _cwe_params(p, max(0, int(room / per_word)), len(pool))
    stream = W.WordStream(rng)
    references = sorted(_references(stream.take, n_c))  # the canonical answer: alphabetical
    stream.avoid = tuple(references)
    question = f"\nQuestion: what are the {n_c} most common words in the list above? Answer: the {n_c} most common words are "
    answer = _join(references)
    tail = doc.tail(question, answer)
    fixed = sum(f_c * len(doc.word(w)) for w in references)
    head = doc.head(preamble, len(tail[0]) + fixed)
    n_body = doc.body_budget(head, tail, "common-words", fixed)
    uncommon: list[str] = []
    singles: list[str] = []

    def draw(into: list[str], times: int) -> int:
        (w,) = stream.take(1)
        into.append(w)
        return times * len(doc.word(w))

    fill = fill_exact(fixed, n_body, lambda: draw(uncommon, f_u), lambda: draw(singles, 1), "common-words")
    used_uncommon = uncommon[: fill.n_fillers]
    used_singles = [singles[i] for i in fill.spares]
    occurrences = [w for w in references for _ in range(f_c)] + [w for w in used_uncommon for _ in range(f_u)] + used_singles
    seq = [occurrences[int(i)] for i in rng.permutation(len(occurrences))]
    body = (doc.pad(rng, fill.pad) if fill.pad else []) + [t for w in seq for t in doc.word(w)]
    meta = {
        "common": n_c,
        "freq_common": f_c,
        "freq_uncommon": f_u,
        "n_words": len(seq),
        "n_distinct": len(references) + len(used_uncommon) + len(used_singles),
        "pad_tokens": fill.pad,
    }
    return doc.finish(head, body, tail, answer, references, meta)


def _append(into: list[str], w: str, doc: _Doc) -> int:
    into.append(w)
    return len(doc.word(w))


def _zipf_min_words(top: int) -> int:
    """The fewest words a frequent-words text can have: the top words 2, 3, … top + 1 times."""
    return sum(range(2, top + 2))


def _zipf_counts(n_words: int, alpha: float, top: int) -> list[int]:
    """Occurrences by rank for a text of about ``n_words`` words, proportional to rank^−alpha, ranks with at least two
    occurrences; the first ``top + 1`` strictly decreasing, so the ``top`` most frequent are well defined."""
    zeta = float(np.sum(np.arange(1, 100_000, dtype=np.float64) ** (-alpha)))
    counts = []
    k = 1
    while True:
        c = int(n_words * k ** (-alpha) / zeta)
        if c < 2 and k > top:
            break
        counts.append(c)
        k += 1
    counts[top - 1] = max(counts[top - 1], 2)
    for i in range(top - 2, -1, -1):
        counts[i] = max(counts[i], counts[i + 1] + 1)
    for i in range(top, len(counts)):
        counts[i] = min(counts[i], counts[top - 1] - 1)
    return [c for c in counts if c >= 2]


def _frequent_words(doc: _Doc, rng: np.random.Generator, depth: float, p: dict[str, Any]) -> NeedleSample:
    """Made-up words with Zipf-distributed frequencies: name the most frequent ones, most frequent first."""
    alpha, top = float(p["alpha"]), int(p["top"])
    taken: set[str] = set()
    probe_rng = np.random.default_rng(0)  # the length estimate must not move the sample's own draws
    per_word = float(np.mean([len(doc.word(W.made_up_word(probe_rng))) for _ in range(64)]))
    preamble = "Read the following coded text and keep track of how often each coded word occurs.\nThe coded text:"
    references: list[str] = []
    while len(references) < top:
        w = W.made_up_word(rng, taken)
        if not any(r in w or w in r for r in references):
            references.append(w)
    question = (
        f"\nQuestion: what are the {top} most frequent coded words in the text above? Answer: the {top} most frequent coded words are "
    )
    answer = _join(references)
    tail = doc.tail(question, answer)
    need = int(_zipf_min_words(top) * per_word) + 1
    head = doc.head(preamble, len(tail[0]) + need)
    n_body = doc.body_budget(head, tail, "frequent-words", need)

    def fresh() -> str:
        while True:
            w = W.made_up_word(rng, taken)
            if not W.contains_any(w, references):
                return w

    n_words = int(n_body / per_word)
    for _ in range(50):
        counts = _zipf_counts(n_words, alpha, top)
        ranked = references + [fresh() for _ in counts[top:]]
        fixed = sum(c * len(doc.word(w)) for w, c in zip(ranked, counts, strict=True))
        if fixed <= n_body:
            break
        n_words = int(n_words * 0.9)
    else:  # pragma: no cover
        raise NeedleError(f"{doc.length} tokens cannot hold the frequent-words task: use a longer length")
    singles: list[str] = []

    def single() -> int:
        singles.append(fresh())
        return len(doc.word(singles[-1]))

    # singletons (the tail of the distribution) fill the text; the ones that close it exactly are drawn apart
    drawn: list[str] = []
    fill = fill_exact(fixed, n_body, single, lambda: _append(drawn, fresh(), doc), "frequent-words")
    used_singles = singles[: fill.n_fillers] + [drawn[i] for i in fill.spares]
    occurrences = [w for w, c in zip(ranked, counts, strict=True) for _ in range(c)] + used_singles
    seq = [occurrences[int(i)] for i in rng.permutation(len(occurrences))]
    body = (doc.pad(rng, fill.pad) if fill.pad else []) + [t for w in seq for t in doc.word(w)]
    meta = {
        "alpha": alpha,
        "counts": {w: c for w, c in zip(ranked[: top + 1], counts[: top + 1], strict=False)},
        "n_words": len(seq),
        "n_distinct": len(ranked) + len(used_singles),
        "pad_tokens": fill.pad,
    }
    return doc.finish(head, body, tail, answer, references, meta)


# ---------------------------------------------------------------- the registry

_NIAH = {"queries": 1, "values": 1, "digits": 7}

TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "niah-single-1",
            "retrieval",
            "niah_single_1",
            "one keyed 7-digit number in noise sentences",
            _niah("noise", "word", "number"),
            dict(_NIAH),
            scoring="teacher-forced",
        ),
        Task(
            "niah-single-2",
            "retrieval",
            "niah_single_2",
            "one keyed 7-digit number in prose",
            _niah("essay", "word", "number"),
            dict(_NIAH),
            scoring="teacher-forced",
        ),
        Task(
            "niah-single-3",
            "retrieval",
            "niah_single_3",
            "one keyed UUID in prose",
            _niah("essay", "word", "uuid"),
            dict(_NIAH),
            scoring="teacher-forced",
        ),
        Task(
            "niah-multikey-1",
            "retrieval",
            "niah_multikey_1",
            "one keyed number in prose among 3 distractor needles with other keys",
            _niah("essay", "word", "number"),
            {**_NIAH, "distractors": 3},
            scoring="teacher-forced",
        ),
        Task(
            "niah-multikey-2",
            "retrieval",
            "niah_multikey_2",
            "one keyed number in a haystack made only of needles with other keys",
            _niah("needles", "word", "number"),
            dict(_NIAH),
            scoring="teacher-forced",
        ),
        Task(
            "niah-multikey-3",
            "retrieval",
            "niah_multikey_3",
            "one UUID keyed by a UUID in a haystack made only of such needles",
            _niah("needles", "uuid", "uuid"),
            dict(_NIAH),
            scoring="teacher-forced",
        ),
        Task(
            "niah-multivalue",
            "retrieval",
            "niah_multivalue",
            "four numbers for one key in prose: all four must be given",
            _niah("essay", "word", "number"),
            {**_NIAH, "values": 4},
        ),
        Task(
            "niah-multiquery",
            "retrieval",
            "niah_multiquery",
            "four keys asked at once, one number each, in prose",
            _niah("essay", "word", "number"),
            {**_NIAH, "queries": 4},
        ),
        Task(
            "vt",
            "multi-hop",
            "vt",
            "a chain of 4 variable assignments in noise: name the 5 variables holding the value",
            _variable_tracking,
            {"chains": 1, "hops": 4, "digits": 5},
        ),
        Task(
            "cwe",
            "aggregation",
            "cwe",
            "a list of words where 10 occur 30 times and the rest 3 times (scaled down below ~600 words): name the 10",
            _common_words,
            {"common": 10, "freq_common": 30, "freq_uncommon": 3, "scale": True},
        ),
        Task(
            "fwe",
            "aggregation",
            "fwe",
            "made-up words with Zipf (alpha 2) frequencies: name the 3 most frequent",
            _frequent_words,
            {"alpha": 2.0, "top": 3},
        ),
    ]
}

#: the RULER categories not built here, and why
NOT_BUILT = {
    "qa_1": "RULER's QA reads SQuAD paragraphs and questions: a data set longsearch does not ship or download",
    "qa_2": "RULER's QA reads HotpotQA paragraphs and questions: a data set longsearch does not ship or download",
}

SUITES = {"ruler": tuple(TASKS)}


def get_task(name: str) -> Task:
    key = str(name).strip().lower().replace("_", "-")
    if key in TASKS:
        return TASKS[key]
    if key in ("qa-1", "qa-2"):
        raise InputError(f"the task {name!r} is not available: {NOT_BUILT[key.replace('-', '_')]}")
    raise InputError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")


def task_names(spec: str | Sequence[str]) -> list[str]:
    """``"ruler"`` (every task), ``"vt,cwe"``, or a list → checked, distinct task names in the order given."""
    parts = spec.replace("+", ",").split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in parts:
        key = str(part).strip().lower()
        if not key:
            continue
        for name in SUITES.get(key, (key,)):
            task = get_task(name)
            if task.name not in names:
                names.append(task.name)
    if not names:
        raise InputError(f"no task given in {spec!r}: name a suite (ruler) or tasks ({', '.join(TASKS)})")
    return names


def task_params(task: Task, params: dict[str, Any] | None) -> dict[str, Any]:
    """The task's defaults with ``params`` over them; a knob the task does not have is refused by name."""
    out = dict(task.params)
    for k, v in (params or {}).items():
        if k not in out:
            raise InputError(f"the task {task.name!r} has no parameter {k!r}: it takes {', '.join(out) or 'none'}")
        out[k] = v
    return out


# ---------------------------------------------------------------- building a set


def build_task_set(
    tokenizer,
    task: str,
    length: int,
    n_samples: int,
    seed: int = 0,
    depths: list[float] | str | None = "spread",
    haystack: str | Sequence[str | Path] = "heldout",
    *,
    params: dict[str, Any] | None = None,
    tokenizer_name: str | None = None,
) -> NeedleSet:
    """``n_samples`` documents of task ``task``, each exactly ``length`` tokens of ``tokenizer``.

    The result is a :class:`~longsearch.needles.NeedleSet` (its ``template`` is the task name): save it with
    ``.save(dir)``, score single-answer tasks with :func:`longsearch.scoring.score` and any task with
    :func:`longsearch.ruler.score_task`. Each sample's meta holds ``references`` (what generation is judged
    against), ``answer`` (the canonical answer the document ends with), ``max_new_tokens`` and the task's details.
    ``depths``: where the (first) asked needle goes, as in :func:`~longsearch.needles.build_needle_set`
    (default ``"spread"``: one depth in each of ``n_samples`` equal slices); unused by the list tasks and by
    ``vt`` (its statements go at random depths, in order). ``haystack``: the prose of the ``essay`` tasks.
    The same arguments give the same set, byte for byte.

    >>> from longsearch.tiny.tokenizer import build_tokenizer
    >>> ts = build_task_set(build_tokenizer(), "vt", length=512, n_samples=2, seed=0)
    >>> [s.length for s in ts.samples], ts.samples[0].meta["references"] == ts.samples[0].meta["chains"][0]["names"]
    ([512, 512], True)
    """
    t = get_task(task)
    p = task_params(t, params)
    length, n_samples = int(length), int(n_samples)
    if n_samples < 1:
        raise InputError(f"a task set needs at least one sample, got {n_samples}")
    if length < 64:
        raise InputError(f"task documents of {length} tokens are too short: use at least a few hundred tokens")
    text, hay_meta = load_haystack(haystack)
    rng = np.random.default_rng(int(seed))
    depth_list, depth_meta = resolve_depths(depths, n_samples, rng)
    doc = _Doc(tokenizer, length, text)
    samples = []
    for d in depth_list:
        s = t.make(doc, rng, d, p)
        s.meta = {"task": t.name, "match": t.match, **s.meta}
        samples.append(s)
    name, vh = tokenizer_fingerprint(tokenizer)
    meta = {
        "format": FORMAT,
        "task": t.name,
        "ruler_task": t.ruler,
        "family": t.family,
        "match": t.match,
        "scoring": t.scoring,
        "params": p,
        "haystack": hay_meta,
        "depths": depth_meta,
        "special_prefix": [int(i) for i in doc.enc.prefix],
    }
    return NeedleSet(samples, length, t.name, int(seed), tokenizer_name or name, vh, meta)


def is_task_set(ns: NeedleSet) -> bool:
    """Whether a needle set was built by :func:`build_task_set` (so its samples carry references and a match rule)."""
    return ns.meta.get("format") == FORMAT


__all__ = [
    "MATCH_RULES",
    "NOT_BUILT",
    "SUITES",
    "TASKS",
    "Task",
    "build_task_set",
    "get_task",
    "is_task_set",
    "max_new_tokens",
    "task_names",
    "task_params",
]
