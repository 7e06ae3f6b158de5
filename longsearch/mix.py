"""Needle mixes: needle sets at several served lengths, weighted, scored as one — where the factors will be used.

Serving engines apply the long factors to every prompt once the served context exceeds the original window
(vLLM chooses once from ``--max-model-len``, llama.cpp from its context size; only transformers switches per
forward), so searched factors must hold at every length up to the target, the window itself included. A
:class:`NeedleMix` holds one needle set per length (shortest first) and a weight per set; its score is the weighted
mean of the sets' mean answer NLLs, all with the same (λ, m) at every position.

>>> mix = build_mix(tok, lengths=[256, 512, 1024, 2048], weights=None, samples=16, template="passkey", seed=0)  # doctest: +SKIP
>>> s = score_mix(model, mix, rescale, stop_at=0.8)                                                          # doctest: +SKIP

Racing: sets run shortest first (the cheapest token-forwards first). Every per-document NLL is ≥ 0, so after the
sets before j gave means m_k, set j needs a mean below ``(bar − Σ_{k<j} w_k m_k) / w_j`` for the total to end below
the bar; it is raced against that, and a set stopped by its race makes the whole score a lower bound (censored). The
documents run are always a prefix of the mix's documents in order, so a journaled document count gives back the
token-forwards exactly (:meth:`NeedleMix.token_cost`) — resume stays exact.

On disk a mix is ``needles/mix.json`` (lengths, weights) and one needle-set directory per length
(``needles/L{length}/``); a run written before mixes holds one needle set in ``needles/`` itself, read as a mix of
one set (the target) with weight 1.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_json
from .errors import InputError, RunError
from .lengths import format_length, parse_length
from .needles import NeedleSample, NeedleSet, load_needle_set
from .ruler.signal import build_signal_set

MIX_FILE = "mix.json"
#: Default share of the score given to the target length; the rest is spread evenly over the shorter served lengths.
TARGET_WEIGHT = 0.5
#: Shorter served lengths get this share of the target's documents (at least 2): they guard retention, the target
#: decides the search.
SHORT_SAMPLES_SHARE = 0.5


@dataclass
class NeedleMix:
    """Needle sets at several lengths (ascending) with weights summing to 1."""

    parts: list[NeedleSet]
    weights: list[float]

    def __post_init__(self) -> None:
        if not self.parts:
            raise InputError("a needle mix needs at least one needle set")
        if len(self.parts) != len(self.weights):
            raise InputError(f"{len(self.parts)} needle sets but {len(self.weights)} weights: give one weight per length")
        lengths = [p.length for p in self.parts]
        if lengths != sorted(set(lengths)):
            raise InputError(f"served lengths must be distinct and ascending, got {lengths}")
        w = np.asarray(self.weights, dtype=float)
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise InputError(f"served-length weights must be positive numbers, got {list(self.weights)}")
        self.weights = [float(x) for x in w / w.sum()]

    @classmethod
    def single(cls, needle_set: NeedleSet) -> NeedleMix:
        return cls([needle_set], [1.0])

    @property
    def lengths(self) -> list[int]:
        return [p.length for p in self.parts]

    @property
    def length(self) -> int:
        """The longest (the target)."""
        return self.parts[-1].length

    @property
    def template(self) -> str:
        return self.parts[-1].template

    @property
    def samples(self) -> list[NeedleSample]:
        """Every document, shortest set first (the order they are scored in)."""
        return [s for p in self.parts for s in p.samples]

    def doc_tokens(self) -> list[int]:
        return [p.length for p in self.parts for _ in p.samples]

    def token_forwards(self, docs: int | None) -> int:
        """Tokens run by the first ``docs`` documents (all of them for None)."""
        t = self.doc_tokens()
        return int(sum(t if docs is None else t[: int(docs)]))

    def token_cost(self, docs: int | None) -> float:
        """Share of the mix's token-forwards the first ``docs`` documents make (1.0 for None)."""
        if docs is None:
            return 1.0
        return self.token_forwards(docs) / max(1, self.token_forwards(None))

    def describe(self) -> str:
        return ", ".join(f"{format_length(p.length)}×{len(p.samples)} (w {w:.2f})" for p, w in zip(self.parts, self.weights, strict=True))

    def save(self, path: str | Path) -> None:
        """``path/mix.json`` and one set per length under ``path/L{length}/`` (a plain set for a mix of one)."""
        path = Path(path)
        if len(self.parts) == 1 and self.weights == [1.0]:
            self.parts[0].save(path)
            return
        path.mkdir(parents=True, exist_ok=True)
        for p in self.parts:
            p.save(path / f"L{p.length}")
        atomic_write_json(path / MIX_FILE, {"kind": "longsearch.needle_mix", "lengths": self.lengths, "weights": self.weights})


def load_needle_mix(path: str | Path, tokenizer: Any = None, length: int | None = None) -> NeedleMix:
    """A mix saved by :meth:`NeedleMix.save`, or a plain needle set as a mix of one; ``length``: the target it must end at."""
    path = Path(path)
    mix_file = path / MIX_FILE
    if not mix_file.is_file():
        return NeedleMix.single(load_needle_set(path, tokenizer=tokenizer, length=length))
    try:
        d = json.loads(mix_file.read_text())
        lengths, weights = [int(x) for x in d["lengths"]], [float(x) for x in d["weights"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"{mix_file} is damaged ({e}): the run cannot be resumed; start a new run") from None
    if length is not None and lengths[-1] != int(length):
        raise RunError(f"{mix_file} ends at {lengths[-1]} tokens, not the run's target {length}: start a new run")
    parts = [load_needle_set(path / f"L{n}", tokenizer=tokenizer, length=n) for n in lengths]
    return NeedleMix(parts, weights)


# ---------------------------------------------------------------- which lengths, which weights


def default_lengths(window: int, target: int) -> list[int]:
    """The original window, then doublings of it below the target, then the target (the target alone when it is
    inside the window)."""
    if target <= window:
        return [int(target)]
    out = [int(window)]
    n = 2 * window
    while n < target:
        out.append(n)
        n *= 2
    out.append(int(target))
    return out


def default_weights(lengths: Sequence[int]) -> list[float]:
    """:data:`TARGET_WEIGHT` on the target, the rest evenly on the shorter lengths (1.0 for the target alone)."""
    k = len(lengths)
    if k == 1:
        return [1.0]
    return [(1.0 - TARGET_WEIGHT) / (k - 1)] * (k - 1) + [TARGET_WEIGHT]


def samples_per_length(lengths: Sequence[int], samples: int) -> list[int]:
    """``samples`` documents at the target, :data:`SHORT_SAMPLES_SHARE` of them (at least 2, at most ``samples``) below."""
    short = min(samples, max(2, round(samples * SHORT_SAMPLES_SHARE)))
    return [short] * (len(lengths) - 1) + [int(samples)]


def parse_serve_lengths(text: str | None, window: int, target: int) -> list[int]:
    """``--serve-lengths``: ``auto`` (default: :func:`default_lengths`), ``target`` (the target alone: scoring as before
    served lengths existed), or a comma list of lengths ending at the target (``256,512,2k``)."""
    if text is None or str(text).strip().lower() in ("", "auto"):
        return default_lengths(window, target)
    if str(text).strip().lower() == "target":
        return [int(target)]
    try:
        values = [parse_length(p) for p in str(text).split(",") if p.strip()]
    except (ValueError, InputError) as e:
        raise InputError(f"--serve-lengths {text!r}: {e}; write e.g. auto, target or 256,1k,{format_length(target)}") from None
    if not values or values[-1] != target or values != sorted(set(values)):
        raise InputError(
            f"--serve-lengths {text!r} must be distinct ascending lengths ending at the target {format_length(target)} "
            f"(e.g. {','.join(format_length(n) for n in default_lengths(window, target))}), or auto / target"
        )
    if values[0] < 16:
        raise InputError(f"--serve-lengths {text!r}: {values[0]} tokens is too short for a needle document")
    return values


def parse_serve_weights(text: str | None, lengths: Sequence[int]) -> list[float]:
    """``--serve-weights``: ``auto`` (:func:`default_weights`) or one positive number per served length."""
    if text is None or str(text).strip().lower() in ("", "auto"):
        return default_weights(lengths)
    try:
        values = [float(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise InputError(f"--serve-weights {text!r} is not a comma list of numbers: give one weight per served length") from None
    if len(values) != len(lengths) or any(not math.isfinite(v) or v <= 0 for v in values):
        raise InputError(
            f"--serve-weights {text!r}: give {len(lengths)} positive numbers, one per served length "
            f"({','.join(format_length(n) for n in lengths)})"
        )
    return values


def build_mix(
    tokenizer: Any,
    lengths: Sequence[int],
    weights: Sequence[float] | None,
    samples: int,
    template: str,
    seed: int,
    depths: Any = None,
    haystack: Any = "heldout",
) -> NeedleMix:
    """One needle set per length (seed + index, so the sets do not share passages), :func:`samples_per_length` documents each."""
    counts = samples_per_length(lengths, samples)
    parts = [
        build_signal_set(tokenizer, n, k, template=template, seed=int(seed) + 7919 * i, depths=depths, haystack=haystack)
        for i, (n, k) in enumerate(zip(lengths, counts, strict=True))
    ]
    return NeedleMix(parts, list(weights) if weights is not None else default_weights(lengths))


# ---------------------------------------------------------------- scoring


@dataclass
class MixScore:
    """What :func:`score_mix` returns: the weighted mean and what it is made of (the fields of ``scoring.Score``)."""

    nll: float
    per_sample: list[float]
    accuracy: float
    per_sample_correct: list[bool]
    seconds: float
    error: str | None
    n_scored: int
    censored: bool
    per_length: list[dict[str, Any]]  # per served length: length, weight, nll, accuracy, docs run


def score_mix(model: Any, mix: NeedleMix, spec: Any, stop_at: float | None = None) -> MixScore:
    """The weighted mean answer NLL of ``spec`` applied at every position on every set of ``mix`` (shortest first),
    raced against ``stop_at`` as the module docstring says."""
    from .scoring import score

    t0 = time.perf_counter()
    racing = stop_at is not None and math.isfinite(stop_at)
    done = 0.0  # Σ w_k m_k over the sets scored in full
    per_sample: list[float] = []
    correct: list[bool] = []
    per_length: list[dict[str, Any]] = []
    for ns, w in zip(mix.parts, mix.weights, strict=True):
        bar = None
        if racing:
            assert stop_at is not None
            if done >= stop_at and per_sample:  # the total cannot end below the bar any more
                return _censored(done, per_sample, correct, per_length, t0)
            bar = (stop_at - done) / w
        s = score(model, ns, spec, target_length=ns.length, stop_at=bar)
        per_sample += [float(x) for x in s.per_sample]
        correct += [bool(x) for x in s.per_sample_correct]
        per_length.append({"length": ns.length, "weight": w, "nll": s.nll, "accuracy": s.accuracy, "docs": s.n_scored})
        if s.error is not None or not math.isfinite(s.nll):
            return MixScore(
                math.inf, per_sample, _mean(correct), correct, time.perf_counter() - t0, s.error, len(per_sample), False, per_length
            )
        done += w * s.nll
        if s.censored:
            return _censored(done, per_sample, correct, per_length, t0)
    return MixScore(done, per_sample, _mean(correct), correct, time.perf_counter() - t0, None, len(per_sample), False, per_length)


def _censored(bound: float, per_sample: list[float], correct: list[bool], per_length: list[dict[str, Any]], t0: float) -> MixScore:
    return MixScore(bound, per_sample, _mean(correct), correct, time.perf_counter() - t0, None, len(per_sample), True, per_length)


def _mean(xs: list[bool]) -> float:
    return float(np.mean(xs)) if xs else 0.0


__all__ = [
    "MIX_FILE",
    "SHORT_SAMPLES_SHARE",
    "TARGET_WEIGHT",
    "MixScore",
    "NeedleMix",
    "build_mix",
    "default_lengths",
    "default_weights",
    "load_needle_mix",
    "parse_serve_lengths",
    "parse_serve_weights",
    "samples_per_length",
    "score_mix",
]
