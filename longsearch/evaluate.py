"""The eval command: every method at every length, on held-out needles and on one fixed final segment.

For each method (the original RoPE ``none``, named baselines, factors files) and each length:

- **needles**: answer-token NLL and greedy accuracy from :func:`longsearch.scoring.score`, on needle
  sets built from held-out prose with a seed of their own (default 777, never a search seed), one
  cell per depth × length;
- **final segment**: the perplexity of the same last ``segment`` tokens of one held-out document,
  with the preceding ``n − segment`` tokens as context. Falling with n means longer context is used,
  flat means it is merely tolerated.

**Serving modes** (:data:`~longsearch.eval_methods.SERVING_MODES`). Engines pick short or long factors
differently: transformers per forward (``per-forward``: LongRoPE's long factors once a forward exceeds the
original window, dynamic NTK's λ from each forward's length), vLLM and llama.cpp once at start-up from the served
context (``long-everywhere``: the λ for the target at every length, in-window prompts included). By default a
method whose behaviour depends on the mode (searched factors, dynamic NTK) gets one row per mode; plain RoPE, the
static baselines (pi, ntk, yarn, llama3: every engine applies their λ at every length, transformers included) and
the attention-side methods get one row. Cells two rows would compute alike (the same λ and m at a length: both
modes of searched factors above the window) are computed once, and each mode's cost probe is measured once.

**Defaults that fit the model.** ``template="auto"`` picks the needle templates the model solves inside its own
window with plain RoPE, by the same check ``evolve --template auto`` makes (:func:`choose_template`); the final
segment defaults to :func:`default_segment` tokens, and the lengths to the window and its doublings up to the
target (:func:`default_lengths`), so in-window lengths are in the grid.

Every method is an :class:`~longsearch.eval_methods.EvalMethod` (RoPE factors patched in, or an attention-side
method): the loop asks each one alike for its needle score, its final-segment NLL and one forward for the cost
probe. The cells go into an :class:`~longsearch.eval_result.EvalResult`, which :func:`write_eval` writes.

>>> from longsearch.models import load_model                           # doctest: +SKIP
>>> lm = load_model(None)                                               # doctest: +SKIP
>>> methods = build_methods(lm.geometry, baselines=["yarn"], target_length=1024)  # doctest: +SKIP
>>> result = run_eval(lm, methods, lengths=[256, 512, 1024])           # doctest: +SKIP
>>> write_eval(result, "outputs/eval-demo")                             # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_dir, atomic_write_json, atomic_write_text, destination_exists
from .attention import ATTENTION_METHODS, make_attention_method, parse_attention_baseline
from .errors import InputError, ModelError, NeedleError, RunError
from .eval_methods import EVERY_MODE, SERVING_MODES, EvalMethod, RopeEval, attention_eval, segment_nll
from .eval_result import CostCell, EvalResult, NeedleCell, SegmentCell, render_csv, render_report
from .factors import RopeFactors, load_factors
from .lengths import format_length
from .needles import build_needle_set, load_haystack, special_prefix, template_names
from .plots import eval_plots
from .rope import Rescale, RopeGeometry, baseline_names, get_method, rescale
from .rope import schedule as method_schedule

log = logging.getLogger(__name__)

DEFAULT_SEED = 777
DEFAULT_DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_SAMPLES = 4
#: The final segment is at most this many tokens (see :func:`default_segment`).
MAX_DEFAULT_SEGMENT = 256
#: Aliases of the serving modes: the engines that behave so.
SERVING_ALIASES = {"transformers": "per-forward", "vllm": "long-everywhere", "llama.cpp": "long-everywhere", "llama-cpp": "long-everywhere"}

#: progress(done, total, what) — called after every grid cell
ProgressFn = Callable[[int, int, str], None]


# ---------------------------------------------------------------- methods


def parse_baselines(text: str | Sequence[str] | None) -> list[str]:
    """``"pi,ntk,yarn,rerope,self-extend:group_size=8"`` -> canonical names (RoPE baselines) and attention-side
    baselines as written (``name`` or ``name:key=value:…``); an unknown name is an InputError listing the valid ones."""
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else [p for t in text for p in str(t).split(",")]
    valid = [*baseline_names(), *ATTENTION_METHODS]
    names: list[str] = []
    for raw in (p.strip() for p in parts):
        if not raw:
            continue
        attention_name, _ = parse_attention_baseline(raw)
        if attention_name in ATTENTION_METHODS:
            if raw not in names:
                names.append(raw)
            continue
        try:
            method = get_method(raw)
        except InputError:
            method = None
        if method is None or not method.baseline:
            raise InputError(f"unknown baseline {raw!r}: choose from {', '.join(valid)} (searched factors go in --factors)")
        if method.name not in names:
            names.append(method.name)
    return names


def parse_depths(text: str | Sequence[float] | None) -> list[float]:
    """A count (``"5"`` -> 0.1, 0.3, …, 0.9: evenly from 0.1 to 0.9) or a list of fractions in [0, 1] (``"0,0.5,1"``)."""
    if text is None:
        return list(DEFAULT_DEPTHS)
    if not isinstance(text, str):
        values = [float(x) for x in text]
    else:
        s = text.strip()
        if re.fullmatch(r"\d+", s):
            k = int(s)
            if not 1 <= k <= 50:
                raise InputError(f"--depths {s}: give a count between 1 and 50, or fractions such as 0.1,0.5,0.9")
            return [0.5] if k == 1 else [round(0.1 + 0.8 * i / (k - 1), 4) for i in range(k)]
        try:
            values = [float(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"cannot read --depths {text!r}: give a count (5) or fractions in [0, 1] such as 0.1,0.5,0.9") from None
    if not values:
        raise InputError("--depths is empty: give a count (5) or fractions in [0, 1]")
    for v in values:
        if not 0.0 <= v <= 1.0:
            raise InputError(f"needle depth {v} is outside [0, 1]: 0 is the start of the haystack, 1 its end")
    return sorted(dict.fromkeys(values))


def parse_serving(text: str | Sequence[str] | None) -> list[str]:
    """``"per-forward,long-everywhere"`` (the default, None) -> the serving modes in that order; the engines' names
    are aliases (``transformers`` = per-forward, ``vllm`` and ``llama.cpp`` = long-everywhere)."""
    if text is None:
        return list(SERVING_MODES)
    parts = text.split(",") if isinstance(text, str) else [p for t in text for p in str(t).split(",")]
    modes: list[str] = []
    for raw in (p.strip().lower() for p in parts):
        if not raw:
            continue
        mode = SERVING_ALIASES.get(raw, raw)
        if mode not in SERVING_MODES:
            raise InputError(
                f"unknown serving mode {raw!r}: choose per-forward (transformers), long-everywhere (vLLM, llama.cpp) or both, comma-separated"
            )
        if mode not in modes:
            modes.append(mode)
    if not modes:
        raise InputError("--serving is empty: give per-forward, long-everywhere or both")
    return modes


def default_segment(original_length: int) -> int:
    """The final segment's default length: a quarter of the model's window, at most :data:`MAX_DEFAULT_SEGMENT`.

    The segment must leave room for context inside the window: NBCE runs it as the question after every chunk of
    context, and a segment as long as the window leaves none (the testbed's window is 256 tokens: 64 here leave
    192 per chunk). A quarter leaves three quarters of the window for context. 256 tokens already average the
    NLL over enough tokens to be steady, so larger windows keep 256 (the cost of the lm_head grows with it)."""
    return max(1, min(MAX_DEFAULT_SEGMENT, int(original_length) // 4))


def default_lengths(original_length: int, target_length: int) -> list[int]:
    """The lengths eval scores when ``--lengths`` is not given: the original window (where the serving modes
    differ most), its doublings below the target, and the target."""
    lengths = {int(original_length), int(target_length)}
    n = int(original_length) * 2
    while n < target_length:
        lengths.add(n)
        n *= 2
    return sorted(lengths)


def resolve_lengths(
    lengths: Sequence[int] | None, geometry: RopeGeometry, target_length: int | None, factor_files: Sequence[str | Path] = ()
) -> tuple[list[int], int]:
    """(lengths, target) from what the command line gives: the lengths as given, or :func:`default_lengths` up to the
    target; the target as given, else the largest length given, else the largest target of the factors files."""
    if lengths:
        ns = sorted(dict.fromkeys(int(n) for n in lengths))
        return ns, int(target_length) if target_length is not None else max(ns)
    if target_length is None:
        targets = [load_factors(Path(f), geometry=geometry).target_length for f in factor_files]
        if not targets:
            raise InputError("give --lengths (e.g. 256,1k,4k), --target, or factors whose target sets the lengths")
        target_length = max(targets)
    return default_lengths(geometry.original_length, int(target_length)), int(target_length)


def _factor_label(path: Path, factors: RopeFactors) -> str:
    if path.is_dir():
        return path.name
    if path.stem in ("best", "factors") and path.parent.name:
        return path.parent.name
    return path.stem


def build_methods(
    geometry: RopeGeometry,
    baselines: Sequence[str] = (),
    factor_files: Sequence[str | Path] = (),
    target_length: int | None = None,
    attention_memory: int | None = None,
    serving: Sequence[str] = SERVING_MODES,
) -> list[EvalMethod]:
    """``none`` first, then the baselines (λ for ``target_length``), then each factors file (checked against the model).

    ``serving``: the modes of :data:`~longsearch.eval_methods.SERVING_MODES` to show. A method whose behaviour
    depends on the mode gets one row per mode, labelled ``name (mode)`` when there are several (``name`` alone
    otherwise): searched factors (per-forward: short up to the window, long above; long-everywhere: long at every
    length) and dynamic NTK (per-forward: λ from each length; long-everywhere: the λ for the target, as vLLM
    fixes it). The others get one row. ``attention_memory``: bytes the score maps of one block of queries may
    take in the attention-side baselines (default :data:`longsearch.attention.DEFAULT_BLOCK_MEMORY`)."""
    modes = parse_serving(list(serving))
    taken: dict[str, int] = {}

    def unique(label: str) -> str:  # labels name files and columns
        n = taken.get(label, 0) + 1
        taken[label] = n
        return label if n == 1 else f"{label}-{n}"

    methods: list[EvalMethod] = [
        RopeEval(unique("none"), "none", method_schedule("none", geometry, geometry.original_length), False, "original RoPE", 1.0)
    ]
    names = parse_baselines(list(baselines)) if baselines else []
    if names and target_length is None:
        raise InputError("baselines need a target length: pass --target (default: the largest of --lengths)")
    for name in names:
        if name == "none":
            continue
        assert target_length is not None  # refused above
        attention_name, params = parse_attention_baseline(name)
        if attention_name in ATTENTION_METHODS:
            am = make_attention_method(attention_name, geometry, target_length, **params)
            if attention_memory is not None:
                am.block_memory = int(attention_memory)
            method = attention_eval(am, f"{am.describe()} for {format_length(target_length)}", target_length)
            method.label = unique(method.label)
            methods.append(method)
            continue
        sched = method_schedule(name, geometry, target_length)
        dynamic = get_method(name).dynamic
        m_base = sched(target_length).m
        source = f"rope.{name} for {format_length(target_length)}"
        if target_length <= geometry.original_length:  # every baseline is the identity there (rope.extension_ratio)
            source += f" (the identity: {format_length(target_length)} is inside the {format_length(geometry.original_length)} window)"
        if not dynamic:  # one λ at every length, in every engine
            methods.append(RopeEval(unique(name), "baseline", sched, False, source, m_base, target_length))
            continue
        fixed = rescale(name, geometry, target_length, current_length=target_length)
        methods += _modes(modes, RopeEval(unique(name), "baseline", sched, True, source, m_base, target_length), fixed)
    for f in factor_files:
        path = Path(f)
        factors = load_factors(path, geometry=geometry, target_length=target_length)
        label = unique(_factor_label(path, factors))
        per_forward = RopeEval(label, "factors", factors, True, str(path), factors.attention_factor, factors.target_length)
        if np.array_equal(factors.long_factor, factors.short_factor):  # no switch: the same in every mode
            methods.append(per_forward)
        else:
            methods += _modes(modes, per_forward, factors.long)
    return methods


def _modes(modes: Sequence[str], per_forward: RopeEval, long: Rescale) -> list[EvalMethod]:
    """A mode-dependent method's rows: ``per_forward`` as transformers applies it, and ``long`` (λ, m for the target)
    at every length as vLLM and llama.cpp do; one row per mode asked for, the second's cost measured as the first's."""
    name = per_forward.label
    rows: dict[str, RopeEval] = {
        "per-forward": per_forward,
        "long-everywhere": RopeEval(
            name,
            per_forward.kind,
            long,
            False,
            f"{per_forward.source}: the long factors (λ for {format_length(per_forward.target_length or 0)}) at every length",
            float(long.m),
            per_forward.target_length,
        ),
    }
    chosen = [rows[m] for m in modes]
    for m, row in zip(modes, chosen, strict=True):
        row.serving, row.method = m, name
        if len(modes) > 1:
            row.label = f"{name} ({m})"
    for row in chosen[1:]:
        row.cost_as = chosen[0]
    return list(chosen)


def validate_settings(samples: int, segment: int | None, template: str) -> None:
    """Refuse bad --samples / --segment / --template before anything is loaded (``segment`` None: the default;
    ``template``: ``auto``, a name or several joined by ``+`` or ``,``)."""
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    if segment is not None and segment < 1:
        raise InputError(f"--segment must be a positive number of tokens, got {segment}")
    if str(template).strip().lower() != "auto":
        template_names(template)


# ---------------------------------------------------------------- template auto


@dataclass(frozen=True)
class _Seed:
    seed: int


@dataclass(frozen=True)
class _TemplateCheck:
    """What :func:`longsearch.plan.measure_signal` reads of a plan (:class:`longsearch.plan.SignalInputs`)."""

    geometry: RopeGeometry
    tokenizer: Any
    config: _Seed
    depths: str = "spread"
    templates: list[str] | None = None


def choose_template(lm: Any, seed: int = DEFAULT_SEED) -> tuple[str, dict[str, Any]]:
    """``--template auto``: the needle templates the model solves inside its own window with plain RoPE, measured
    and chosen by :func:`longsearch.plan.measure_signal` and :func:`longsearch.plan.signal_templates` (as ``evolve
    --template auto`` chooses), on the model already loaded. Returns the templates (``"a+b"``) and the measurement;
    InputError when the model solves none."""
    from .executors import InProcessPool, Scorer
    from .plan import DEFAULTS, measure_signal, signal_templates

    check = _TemplateCheck(lm.geometry, lm.tokenizer, _Seed(int(seed)), str(DEFAULTS["depths"]))
    signal = measure_signal(check, InProcessPool.around(Scorer.around(lm, lm.geometry.original_length)))
    if not signal["solved"]:
        measured = "; ".join(f"{t} {m['accuracy'] or 0:.2f}" for t, m in signal["templates"].items())
        raise InputError(
            f"--template auto: the model solves none of the needle templates inside its {lm.geometry.original_length}-token "
            f"window with plain RoPE (accuracy {measured}; threshold {signal['threshold']}): name one with --template"
        )
    return signal_templates(check, signal), signal


# ---------------------------------------------------------------- the fixed final segment


def segment_document(tokenizer, n_tokens: int, haystack: str = "heldout") -> np.ndarray:
    """One held-out document of exactly ``n_tokens`` tokens: the tokenizer's special prefix (BOS), then prose."""
    text, _ = load_haystack(haystack)
    prefix = special_prefix(tokenizer)
    need = n_tokens - len(prefix)
    chars = max(4 * need, 4096)
    while True:
        ids = [int(i) for i in tokenizer(text[:chars], add_special_tokens=False)["input_ids"]]
        if len(ids) > need or chars >= len(text):
            break
        chars *= 2
    if len(ids) < need:
        raise NeedleError(
            f"the held-out haystack has only {len(ids)} tokens, fewer than the {n_tokens} the longest length needs: give shorter --lengths"
        )
    return np.asarray(prefix + ids[:need], dtype=np.int64)


# ---------------------------------------------------------------- the run


def run_eval(
    lm: Any,
    methods: Sequence[EvalMethod],
    lengths: Sequence[int],
    *,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    samples: int = DEFAULT_SAMPLES,
    seed: int = DEFAULT_SEED,
    template: str = "auto",
    haystack: str = "heldout",
    segment: int | None = None,
    progress: ProgressFn | None = None,
    command: str = "",
    cost_repeats: int = 3,
) -> EvalResult:
    """Score every method × length × depth on needles and every method × length on the final segment.

    ``lm`` is a :class:`~longsearch.models.LoadedModel`. Needle sets are built once per length and depth
    (the same for every method) from ``haystack`` with ``seed``; ``template="auto"`` chooses the templates first
    (:func:`choose_template`), ``segment=None`` is :func:`default_segment` of the model's window. ``cost_repeats``
    > 0 also times one needle document per method and length (median of that many forwards) and records its peak
    extra memory. Cells of a method that applies at a length the same λ and m as an earlier one are that one's
    (``same_as`` names it); a method's ``cost_as`` stands for its cost.
    """
    lengths = sorted(dict.fromkeys(int(n) for n in lengths))
    depths = [float(d) for d in depths]
    if not lengths:
        raise InputError("no lengths to evaluate: give --lengths such as 1k,2k,4k")
    if not methods:
        raise InputError("no methods to evaluate")
    validate_settings(samples, segment, template)
    if segment is None:
        segment = default_segment(lm.geometry.original_length)
    seg = min(int(segment), lengths[0] // 2)
    if seg < segment:
        log.warning("final segment shortened to %d tokens: the shortest length is %d", seg, lengths[0])

    total = len(methods) * len(lengths) * (len(depths) + 1) + (len(lengths) if cost_repeats > 0 else 0)
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    requested, signal = str(template).strip().lower(), None
    if requested == "auto":
        if progress is not None:
            progress(0, total, "template auto: which needle templates the model solves in its window")
        template, signal = choose_template(lm, seed)
    if progress is not None:
        progress(0, total, "building needle sets")
    sets = {
        (n, d): build_needle_set(lm.tokenizer, n, samples, template=template, seed=seed, depths=[d], haystack=haystack)
        for n in lengths
        for d in depths
    }
    document = segment_document(lm.tokenizer, lengths[-1], haystack)
    prefix = len(special_prefix(lm.tokenizer))
    needles: list[NeedleCell] = []
    segments: list[SegmentCell] = []
    costs: list[CostCell] = []
    computed: dict[tuple[int, bytes, float], str] = {}  # (length, λ, m) -> the label whose cells hold them
    for m in methods:
        for n in lengths:
            key = _rope_key(m, n)
            twin = computed.get(key) if key is not None else None
            if twin is not None:  # the same RoPE as an earlier row at this length: the same numbers
                for d in depths:
                    cell = next(c for c in needles if c.method == twin and c.length == n and c.depth == d)
                    needles.append(replace(cell, method=m.label, same_as=twin))
                    tick(f"{m.label} · {format_length(n)} · depth {d:g} (= {twin})")
                segment_cell = next(c for c in segments if c.method == twin and c.length == n)
                segments.append(replace(segment_cell, method=m.label, same_as=twin))
                tick(f"{m.label} · {format_length(n)} · segment (= {twin})")
                continue
            if key is not None:
                computed[key] = m.label
            for d in depths:
                ns = sets[(n, d)]
                try:
                    s = m.needle_score(lm, ns)
                    cell = NeedleCell(m.label, n, d, float(s.nll), float(s.ppl), float(s.accuracy), len(ns), float(s.seconds), s.error)
                except ModelError as e:  # out of memory at this length: record it, go on with the rest
                    cell = NeedleCell(m.label, n, d, math.nan, math.nan, math.nan, len(ns), 0.0, str(e))
                needles.append(cell)
                tick(f"{m.label} · {format_length(n)} · depth {d:g}")
            t0 = time.perf_counter()
            try:
                nll = m.segment_nll(lm, document, prefix, n, seg)
                err = None
            except _OOM_ERRORS as e:  # a length too long for this device: record it, go on with the rest
                nll, err = float("nan"), f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                _empty_cache()
            segments.append(
                SegmentCell(m.label, n, nll, math.exp(nll) if math.isfinite(nll) else float("nan"), seg, time.perf_counter() - t0, err)
            )
            tick(f"{m.label} · {format_length(n)} · segment")
    if cost_repeats > 0:
        ids = {id(m) for m in methods}
        twins = {m.label: t.label for m in methods if (t := getattr(m, "cost_as", None)) is not None and id(t) in ids}
        probed = [m for m in methods if m.label not in twins]
        for n in lengths:
            cells = {c.method: c for c in _cost_probe(lm, probed, sets[(n, depths[0])].samples[0], cost_repeats)}
            for m in methods:
                twin = twins.get(m.label)
                costs.append(cells[m.label] if twin is None else replace(cells[twin], method=m.label, same_as=twin))
            tick(f"cost · {format_length(n)}")
    g = lm.geometry
    settings = {
        "samples": samples,
        "seed": seed,
        "template": template,
        "template_requested": requested,
        "template_check": signal,
        "serving": sorted({str(m.describe().get("serving", EVERY_MODE)) for m in methods} - {EVERY_MODE}, key=_mode_order),
        "haystack": haystack,
        "segment_tokens": seg,
        "segment_document_tokens": len(document),
        "device": str(getattr(lm, "device", "")),
        "dtype": str(getattr(lm, "dtype", "")),
        "attn_implementation": str(getattr(getattr(lm.model, "config", None), "_attn_implementation", "")),
    }
    settings["cost"] = (
        f"one needle document per length; {cost_repeats} rounds of one forward per method, methods interleaved; "
        "time ratio = median over rounds of the ratio within a round"
        if cost_repeats
        else "not measured"
    )
    return EvalResult(
        model=str(lm.name),
        geometry={"rotary_dim": g.rotary_dim, "base": g.base, "original_length": g.original_length},
        lengths=lengths,
        depths=depths,
        methods=[m.describe() for m in methods],
        needles=needles,
        segments=segments,
        settings=settings,
        command=command,
        costs=costs,
    )


def _rope_key(method: EvalMethod, length: int) -> tuple[int, bytes, float] | None:
    """(length, λ, m) a method applies at ``length`` (None for a method that does not say)."""
    rope_at = getattr(method, "rope_at", None)
    if rope_at is None:
        return None
    r = rope_at(length)
    return int(length), np.asarray(r.lam, dtype=np.float64).tobytes(), float(r.m)


def _mode_order(mode: str) -> int:
    return SERVING_MODES.index(mode) if mode in SERVING_MODES else len(SERVING_MODES)


def _cost_probe(lm: Any, methods: Sequence[EvalMethod], sample: Any, repeats: int) -> list[CostCell]:
    """Each method's cost on one needle document: peak extra memory of one forward (which also warms it up),
    then ``repeats`` rounds of one timed forward per method, the order rotated each round, so that a machine
    slowing down or speeding up weighs on every method alike."""
    from .memory import PeakMemory

    n = len(sample.input_ids)
    peaks: dict[str, tuple[float, str]] = {}
    errors: dict[str, str] = {}
    for m in methods:
        try:
            with PeakMemory(lm.device) as peak:
                m.forward(lm, sample)
            peaks[m.label] = (float(peak.bytes), peak.how)
        except _OOM_ERRORS as e:
            _empty_cache()
            errors[m.label] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    ok = [m for m in methods if m.label not in errors]
    times: dict[str, list[float]] = {m.label: [] for m in ok}
    for r in range(repeats):
        k = r % len(ok) if ok else 0
        for m in ok[k:] + ok[:k]:
            t0 = time.perf_counter()
            m.forward(lm, sample)
            times[m.label].append(time.perf_counter() - t0)
    cells = []
    for m in methods:
        if m.label in errors:
            cells.append(CostCell(m.label, n, math.nan, math.nan, "", errors[m.label]))
        else:
            b, how = peaks[m.label]
            cells.append(CostCell(m.label, n, float(np.median(times[m.label])), b, how, times=times[m.label]))
    return cells


def _oom_errors() -> tuple[type[BaseException], ...]:
    import torch

    errors: list[type[BaseException]] = [MemoryError]
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None:
        errors.append(oom)
    return tuple(errors)


_OOM_ERRORS = _oom_errors()


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- writing


def default_out_dir(root: str | Path = "outputs") -> Path:
    return Path(root) / f"eval-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def write_eval(result: EvalResult, out: str | Path, force: bool = False) -> list[Path]:
    """Write eval.json, eval.csv, report.md and the PNG plots into ``out`` (refused if it exists, unless ``force``)."""
    out = Path(out)
    if not force and destination_exists(out):
        raise RunError(f"{out} already exists: choose another --out or pass --force to replace it")
    names: list[str] = []
    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / "eval.json", result.to_dict())
        atomic_write_text(tmp / "eval.csv", render_csv(result))
        plots = write_plots(result, tmp)
        atomic_write_text(tmp / "report.md", render_report(result, plots))
        names = ["eval.json", "eval.csv", "report.md", *plots]
    return [out / n for n in names]


def write_plots(result: EvalResult, out_dir: Path) -> list[str]:
    """nll_vs_length.png, segment_ppl_vs_length.png and accuracy_<method>.png; returns their file names."""
    return eval_plots(result, out_dir)


__all__ = [
    "DEFAULT_DEPTHS",
    "DEFAULT_SEED",
    "SERVING_MODES",
    "CostCell",
    "EvalMethod",
    "EvalResult",
    "NeedleCell",
    "RopeEval",
    "SegmentCell",
    "build_methods",
    "choose_template",
    "default_lengths",
    "default_out_dir",
    "default_segment",
    "parse_baselines",
    "parse_depths",
    "parse_serving",
    "render_csv",
    "render_report",
    "resolve_lengths",
    "run_eval",
    "segment_document",
    "segment_nll",
    "validate_settings",
    "write_eval",
    "write_plots",
]
