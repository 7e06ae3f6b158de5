"""The eval command: every method at every length, on held-out needles and on one fixed final segment.

For each method (the original RoPE ``none``, named baselines, factors files) and each length:

- **needles**: answer-token NLL and greedy accuracy from :func:`longsearch.scoring.score`, on needle
  sets built from held-out prose with a seed of their own (default 777, never a search seed), one
  cell per depth × length;
- **final segment**: the perplexity of the same last ``segment`` tokens of one held-out document,
  with the preceding ``n − segment`` tokens as context. Falling with n means longer context is used,
  flat means it is merely tolerated.

Dynamic methods (dynamic NTK, LongRoPE's short/long switch) are applied as schedules, so each length
sees the λ it would see in use.

>>> from longsearch.models import load_model                           # doctest: +SKIP
>>> lm = load_model(None)                                               # doctest: +SKIP
>>> methods = build_methods(lm.geometry, baselines=["yarn"], target_length=1024)  # doctest: +SKIP
>>> result = run_eval(lm, methods, lengths=[256, 512, 1024])           # doctest: +SKIP
>>> write_eval(result, "outputs/eval-demo")                             # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_dir, atomic_write_json, atomic_write_text, destination_exists
from .errors import InputError, ModelError, NeedleError, RunError
from .factors import RopeFactors, load_factors
from .lengths import format_length
from .rope import RopeGeometry, baseline_names, get_method
from .rope import schedule as method_schedule

log = logging.getLogger(__name__)

DEFAULT_SEED = 777
DEFAULT_DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_SAMPLES = 4
DEFAULT_SEGMENT = 256

#: progress(done, total, what) — called after every grid cell
ProgressFn = Callable[[int, int, str], None]


# ---------------------------------------------------------------- methods


@dataclass
class EvalMethod:
    """One row of the evaluation: a label, how the model applies it, and where it came from."""

    label: str
    kind: str  # "none", "baseline", "factors" or "attention" (an attention-side method: spec is an AttentionMethod)
    spec: Any  # a Schedule or RopeFactors, as models.apply_rope takes it; an AttentionMethod for "attention"
    dynamic: bool
    source: str
    attention_factor: float | None = None
    target_length: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "dynamic": self.dynamic,
            "source": self.source,
            "attention_factor": self.attention_factor,
            "target_length": self.target_length,
        }


def parse_baselines(text: str | Sequence[str] | None) -> list[str]:
    """``"pi,ntk,yarn,rerope,self-extend:group_size=8"`` -> canonical names (RoPE baselines) and attention-side
    baselines as written (``name`` or ``name:key=value:…``); an unknown name is an InputError listing the valid ones."""
    from .attention import ATTENTION_METHODS, parse_attention_baseline

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
) -> list[EvalMethod]:
    """``none`` first, then the baselines (λ for ``target_length``), then each factors file (checked against the model).

    ``attention_memory``: bytes the score maps of one block of queries may take in the attention-side baselines
    (default :data:`longsearch.attention.DEFAULT_BLOCK_MEMORY`)."""
    methods = [EvalMethod("none", "none", method_schedule("none", geometry, geometry.original_length), False, "original RoPE", 1.0)]
    names = parse_baselines(list(baselines)) if baselines else []
    if names and target_length is None:
        raise InputError("baselines need a target length: pass --target (default: the largest of --lengths)")
    from .attention import ATTENTION_METHODS, make_attention_method, parse_attention_baseline

    for name in names:
        if name == "none":
            continue
        assert target_length is not None  # refused above
        attention_name, params = parse_attention_baseline(name)
        if attention_name in ATTENTION_METHODS:
            am = make_attention_method(attention_name, geometry, target_length, **params)
            if attention_memory is not None:
                am.block_memory = int(attention_memory)
            methods.append(
                EvalMethod(am.label, "attention", am, False, f"{am.describe()} for {format_length(target_length)}", None, target_length)
            )
            continue
        sched = method_schedule(name, geometry, target_length)
        dynamic = get_method(name).dynamic
        m_base = sched(target_length).m
        source = f"rope.{name} for {format_length(target_length)}"
        if target_length <= geometry.original_length:  # every baseline is the identity there (rope.extension_ratio)
            source += f" (the identity: {format_length(target_length)} is inside the {format_length(geometry.original_length)} window)"
        methods.append(EvalMethod(name, "baseline", sched, dynamic, source, m_base, target_length))
    for f in factor_files:
        path = Path(f)
        factors = load_factors(path, geometry=geometry, target_length=target_length)
        label = _factor_label(path, factors)
        methods.append(EvalMethod(label, "factors", factors, True, str(path), factors.attention_factor, factors.target_length))
    seen: dict[str, int] = {}
    for m in methods:  # unique labels (they name files and columns)
        n = seen.get(m.label, 0)
        seen[m.label] = n + 1
        if n:
            m.label = f"{m.label}-{n + 1}"
    return methods


def validate_settings(samples: int, segment: int, template: str) -> None:
    """Refuse bad --samples / --segment / --template before anything is loaded."""
    from .needles import get_template

    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    if segment < 1:
        raise InputError(f"--segment must be a positive number of tokens, got {segment}")
    get_template(template)


# ---------------------------------------------------------------- results


@dataclass
class NeedleCell:
    """One method × length × depth: the scorer's numbers for its needle set."""

    method: str
    length: int
    depth: float
    nll: float
    ppl: float
    accuracy: float
    n_samples: int
    seconds: float
    error: str | None = None


@dataclass
class SegmentCell:
    """One method × length: the NLL of the fixed final segment with ``length − tokens`` tokens of context."""

    method: str
    length: int
    nll: float
    ppl: float
    tokens: int
    seconds: float
    error: str | None = None


@dataclass
class CostCell:
    """One method × length: one needle document's forward (median of a few) and the extra memory it peaked at.

    ``times`` are the timed forwards in the order they ran; the k-th of every method at one length ran in the
    same round (methods interleaved), so their ratios to plain attention's k-th are paired."""

    method: str
    length: int
    seconds: float
    peak_bytes: float
    memory: str  # how the peak was measured: "cuda allocator" or "process RSS"
    error: str | None = None
    times: list[float] = field(default_factory=list)


@dataclass
class EvalResult:
    model: str
    geometry: dict[str, Any]
    lengths: list[int]
    depths: list[float]
    methods: list[dict[str, Any]]
    needles: list[NeedleCell]
    segments: list[SegmentCell]
    settings: dict[str, Any]
    command: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    costs: list[CostCell] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return [m["label"] for m in self.methods]

    def cell(self, method: str, length: int, depth: float) -> NeedleCell:
        for c in self.needles:
            if c.method == method and c.length == length and math.isclose(c.depth, depth):
                return c
        raise KeyError((method, length, depth))

    def needle_mean(self, method: str, length: int) -> tuple[float, float]:
        """Mean needle NLL and accuracy over depths (NaN when every cell failed)."""
        cells = [c for c in self.needles if c.method == method and c.length == length and c.error is None]
        if not cells:
            return float("nan"), float("nan")
        return float(np.mean([c.nll for c in cells])), float(np.mean([c.accuracy for c in cells]))

    def segment(self, method: str, length: int) -> SegmentCell:
        for s in self.segments:
            if s.method == method and s.length == length:
                return s
        raise KeyError((method, length))

    def cost_ratio(self, method: str, length: int) -> tuple[float, float]:
        """(time, peak memory) of ``method`` at ``length`` relative to plain attention (``none``); NaN if unknown.

        Time: the median over rounds of the paired ratio (both forwards ran in the same round)."""
        cells = {c.method: c for c in self.costs if c.length == length and c.error is None}
        mine, base = cells.get(method), cells.get("none")
        if mine is None or base is None:
            return float("nan"), float("nan")
        if mine.times and len(mine.times) == len(base.times) and min(base.times) > 0:
            t = float(np.median(np.asarray(mine.times) / np.asarray(base.times)))  # paired by round
        else:
            t = mine.seconds / base.seconds if base.seconds > 0 else float("nan")
        m = mine.peak_bytes / base.peak_bytes if base.peak_bytes > 0 else float("nan")
        return t, m

    def accuracy_grid(self, method: str) -> np.ndarray:
        """depth × length accuracies (NaN for failed cells)."""
        grid = np.full((len(self.depths), len(self.lengths)), np.nan)
        for c in self.needles:
            if c.method == method and c.error is None:
                grid[self.depths.index(c.depth), self.lengths.index(c.length)] = c.accuracy
        return grid

    def to_dict(self) -> dict[str, Any]:
        summary = [
            {
                "method": label,
                "length": n,
                "needle_nll": _num(self.needle_mean(label, n)[0]),
                "needle_accuracy": _num(self.needle_mean(label, n)[1]),
                "segment_nll": _num(self.segment(label, n).nll),
                "segment_ppl": _num(self.segment(label, n).ppl),
            }
            for label in self.labels
            for n in self.lengths
        ]
        return {
            "kind": "longsearch.eval",
            "version": 1,
            "created": self.created,
            "command": self.command,
            "model": self.model,
            "geometry": self.geometry,
            "lengths": self.lengths,
            "depths": self.depths,
            "settings": self.settings,
            "methods": self.methods,
            "summary": summary,
            "needles": [{k: _num(v) for k, v in asdict(c).items()} for c in self.needles],
            "segments": [{k: _num(v) for k, v in asdict(s).items()} for s in self.segments],
            "costs": [{k: _num(v) for k, v in asdict(c).items()} for c in self.costs],
        }


def _num(v: Any) -> Any:
    """JSON has no NaN: failed cells are null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# ---------------------------------------------------------------- the fixed final segment


def segment_document(tokenizer, n_tokens: int, haystack: str = "heldout") -> np.ndarray:
    """One held-out document of exactly ``n_tokens`` tokens: the tokenizer's special prefix (BOS), then prose."""
    from .needles import load_haystack

    text, _ = load_haystack(haystack)
    k = _special_prefix_len(tokenizer)
    prefix = [int(i) for i in tokenizer("a", add_special_tokens=True)["input_ids"]][:k]
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
    template: str = "magic-number",
    haystack: str = "heldout",
    segment: int = DEFAULT_SEGMENT,
    progress: ProgressFn | None = None,
    command: str = "",
    cost_repeats: int = 3,
) -> EvalResult:
    """Score every method × length × depth on needles and every method × length on the final segment.

    ``lm`` is a :class:`~longsearch.models.LoadedModel`. Needle sets are built once per length and depth
    (the same for every method) from ``haystack`` with ``seed``. ``cost_repeats`` > 0 also times one needle
    document per method and length (median of that many forwards) and records its peak extra memory.
    """
    from .needles import build_needle_set

    lengths = sorted(dict.fromkeys(int(n) for n in lengths))
    depths = [float(d) for d in depths]
    if not lengths:
        raise InputError("no lengths to evaluate: give --lengths such as 1k,2k,4k")
    if not methods:
        raise InputError("no methods to evaluate")
    validate_settings(samples, segment, template)
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

    if progress is not None:
        progress(0, total, "building needle sets")
    sets = {
        (n, d): build_needle_set(lm.tokenizer, n, samples, template=template, seed=seed, depths=[d], haystack=haystack)
        for n in lengths
        for d in depths
    }
    document = segment_document(lm.tokenizer, lengths[-1], haystack)
    prefix = _special_prefix_len(lm.tokenizer)
    needles: list[NeedleCell] = []
    segments: list[SegmentCell] = []
    costs: list[CostCell] = []
    for m in methods:
        for n in lengths:
            for d in depths:
                ns = sets[(n, d)]
                try:  # the spec is a schedule or factors: it carries its own target; the set its length
                    s = _score_method(lm, ns, m)
                    cell = NeedleCell(m.label, n, d, float(s.nll), float(s.ppl), float(s.accuracy), len(ns), float(s.seconds), s.error)
                except ModelError as e:  # out of memory at this length: record it, go on with the rest
                    cell = NeedleCell(m.label, n, d, math.nan, math.nan, math.nan, len(ns), 0.0, str(e))
                needles.append(cell)
                tick(f"{m.label} · {format_length(n)} · depth {d:g}")
            t0 = time.perf_counter()
            try:
                nll = _segment_method(lm, m, document, prefix, n, seg)
                err = None
            except _OOM_ERRORS as e:  # a length too long for this device: record it, go on with the rest
                nll, err = float("nan"), f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                _empty_cache()
            segments.append(
                SegmentCell(m.label, n, nll, math.exp(nll) if math.isfinite(nll) else float("nan"), seg, time.perf_counter() - t0, err)
            )
            tick(f"{m.label} · {format_length(n)} · segment")
    if cost_repeats > 0:
        for n in lengths:
            costs += _cost_probe(lm, methods, sets[(n, depths[0])].samples[0], cost_repeats)
            tick(f"cost · {format_length(n)}")
    g = lm.geometry
    settings = {
        "samples": samples,
        "seed": seed,
        "template": template,
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


def _score_method(lm: Any, ns: Any, m: EvalMethod) -> Any:
    """The needle score of one method: a RoPE spec patched in, or an attention-side method around the forward."""
    from .scoring import score

    if m.kind != "attention":
        return score(lm, ns, m.spec)
    from .attention import attention_method, nbce_score

    if m.spec.name == "nbce":
        return nbce_score(lm, ns, m.spec)
    with attention_method(lm.model, m.spec):
        return score(lm, ns, None)


def _segment_method(lm: Any, m: EvalMethod, document: np.ndarray, prefix: int, n: int, seg: int) -> float:
    from .models import patched

    if m.kind != "attention":
        with patched(lm.model, m.spec, m.target_length or n):
            return segment_nll(lm.model, document, prefix, n, seg)
    from .attention import attention_method, nbce_segment_nll

    if m.spec.name == "nbce":
        return nbce_segment_nll(lm, document, prefix, n, seg, m.spec)
    with attention_method(lm.model, m.spec):
        return segment_nll(lm.model, document, prefix, n, seg)


def _forward_once(lm: Any, m: EvalMethod, sample: Any) -> None:
    """One needle document through the model the way ``m`` runs it (what the cost probe measures)."""
    import torch

    from .models import patched

    if m.kind == "attention" and m.spec.name == "nbce":
        from .attention import nbce_logprobs

        p = _special_prefix_len(lm.tokenizer)
        q = int(sample.meta.get("question_start", sample.answer_start))
        ids = sample.input_ids
        nbce_logprobs(lm.model, ids[:p], ids[p:q], ids[q : sample.answer_end], lm.geometry.original_length, m.spec)
        return
    x = torch.as_tensor(sample.input_ids, dtype=torch.long, device=lm.device)[None]
    if m.kind == "attention":
        from .attention import attention_method

        ctx: Any = attention_method(lm.model, m.spec)
    else:
        ctx = patched(lm.model, m.spec, m.target_length or len(sample.input_ids))
    with ctx, torch.inference_mode():
        lm.model(input_ids=x, logits_to_keep=1, use_cache=False)


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
                _forward_once(lm, m, sample)
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
            _forward_once(lm, m, sample)
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


def _special_prefix_len(tokenizer) -> int:
    """How many special tokens (BOS) the tokenizer puts before the text (0 for none)."""
    with_special = [int(i) for i in tokenizer("a", add_special_tokens=True)["input_ids"]]
    plain = [int(i) for i in tokenizer("a", add_special_tokens=False)["input_ids"]]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return start
    return 0


def segment_nll(model, document: np.ndarray, prefix: int, length: int, tokens: int) -> float:
    """Mean NLL of the last ``tokens`` tokens of ``document`` given the ``length − tokens`` positions before them.

    The input is the document's special prefix (``prefix`` tokens, e.g. BOS) and then its last
    ``length − prefix`` tokens: exactly ``length`` positions that always end with the same tokens. Only the
    last ``tokens + 1`` positions go through the lm_head.
    """
    import torch

    if not 0 < tokens < length - prefix or length > len(document):
        raise InputError(f"a final segment of {tokens} tokens does not fit a context of {length} tokens")
    ids = np.concatenate([document[:prefix], document[len(document) - (length - prefix) :]])
    device = next(model.parameters()).device
    x = torch.as_tensor(ids, dtype=torch.long, device=device)[None]
    with torch.inference_mode():
        try:
            logits = model(input_ids=x, logits_to_keep=tokens + 1, use_cache=False).logits
        except TypeError:  # a model whose forward has no logits_to_keep
            logits = model(input_ids=x, use_cache=False).logits
        logits = logits[0, -(tokens + 1) : -1].float()
        nll = torch.nn.functional.cross_entropy(logits, x[0, -tokens:], reduction="mean")
    return float(nll.item())


# ---------------------------------------------------------------- writing


def default_out_dir(root: str | Path = "outputs") -> Path:
    return Path(root) / f"eval-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def safe_name(label: str) -> str:
    """A label as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.") or "method"


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


def render_csv(result: EvalResult) -> str:
    """One tidy row per measurement: kind (needle, needle-mean, segment), method, length, depth, nll, ppl, accuracy, …"""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "method", "length", "depth", "nll", "ppl", "accuracy", "n", "seconds", "error"])
    for c in result.needles:
        w.writerow(
            ["needle", c.method, c.length, c.depth, _f(c.nll), _f(c.ppl), _f(c.accuracy), c.n_samples, f"{c.seconds:.3f}", c.error or ""]
        )
    for label in result.labels:
        for n in result.lengths:
            nll, acc = result.needle_mean(label, n)
            w.writerow(
                [
                    "needle-mean",
                    label,
                    n,
                    "",
                    _f(nll),
                    _f(math.exp(nll) if math.isfinite(nll) else nll),
                    _f(acc),
                    len(result.depths),
                    "",
                    "",
                ]
            )
    for s in result.segments:
        w.writerow(["segment", s.method, s.length, "", _f(s.nll), _f(s.ppl), "", s.tokens, f"{s.seconds:.3f}", s.error or ""])
    return buf.getvalue()


def _f(v: float) -> str:
    return "" if v is None or not math.isfinite(v) else repr(float(v))


def _cell(v: float, fmt: str) -> str:
    return "–" if v is None or not math.isfinite(v) else format(v, fmt)


def render_report(result: EvalResult, plots: Sequence[str] = ()) -> str:
    """The Markdown report: settings, methods, and the tables (method × length) with the plots."""
    L = result.lengths
    head = "| method | " + " | ".join(format_length(n) for n in L) + " |\n|---|" + "---:|" * len(L) + "\n"

    def table(fn: Callable[[str, int], str]) -> str:
        return head + "".join(f"| {label} | " + " | ".join(fn(label, n) for n in L) + " |\n" for label in result.labels)

    g = result.geometry
    s = result.settings
    lines = [
        f"# longsearch eval: {result.model}\n\n",
        f"Created {result.created}.\n\n",
        f"Command: `{result.command}`\n\n" if result.command else "",
        f"Model RoPE: rotary dim {g['rotary_dim']}, base {g['base']:g}, original window {format_length(g['original_length'])} "
        f"({g['original_length']} tokens).\n\n",
        f"Needles: template `{s['template']}`, haystack `{s['haystack']}` (held out from search), seed {s['seed']}, "
        f"samples per cell: {s['samples']}, depths: {', '.join(f'{d:g}' for d in result.depths)}.\n\n",
        f"Final segment: the last {s['segment_tokens']} tokens of one held-out document, scored with n − {s['segment_tokens']} "
        "tokens of context at every length n. A perplexity that falls with n shows the longer context is used; "
        "a flat one shows it is merely tolerated.\n",
        "\n## Methods\n\n",
        "| method | kind | dynamic | attention factor | target | source |\n|---|---|---|---:|---:|---|\n",
        *(
            f"| {m['label']} | {m['kind']} | {'yes' if m['dynamic'] else 'no'} | "
            f"{_cell(m['attention_factor'], '.4f') if m['attention_factor'] is not None else '–'} | "
            f"{format_length(m['target_length']) if m['target_length'] else '–'} | {m['source']} |\n"
            for m in result.methods
        ),
        "\nDynamic methods are applied as they behave at each length (LongRoPE factors: short factors up to the "
        "original window, long ones above it; dynamic NTK: λ from the current length).\n",
        "\n## Needle answer NLL (mean over depths; lower is better)\n\n",
        table(lambda m, n: _cell(result.needle_mean(m, n)[0], ".3f")),
        "\n## Greedy needle accuracy (mean over depths)\n\n",
        table(lambda m, n: _cell(result.needle_mean(m, n)[1], ".2f")),
        f"\n## Final-segment perplexity (last {s['segment_tokens']} tokens)\n\n",
        table(lambda m, n: _cell(result.segment(m, n).ppl, ".3f")),
    ]
    if result.costs:
        lines += [
            "\n## Cost relative to plain attention (`none`): time · peak memory\n\n",
            f"Cost: {s.get('cost', '')}; peak memory is the extra {result.costs[0].memory or 'memory'} above the start of the forward.\n\n",
            table(lambda m, n: f"{_cell(result.cost_ratio(m, n)[0], '.2f')} · {_cell(result.cost_ratio(m, n)[1], '.2f')}"),
        ]
    attention = [m for m in result.methods if m["kind"] == "attention"]
    if attention:
        lines.append(
            "\nAttention-side methods (" + ", ".join(m["label"] for m in attention) + ") change attention, not the RoPE "
            "frequencies: they cannot be exported as factors to transformers, vLLM or llama.cpp configs.\n"
        )
    errors = [c for c in result.needles if c.error] + [c for c in result.segments if c.error] + [c for c in result.costs if c.error]
    if errors:
        lines.append("\n## Failed cells\n\n")
        lines += [f"- {c.method} at {format_length(c.length)}: {c.error}\n" for c in errors]
    lines.append("\n## Needle accuracy by depth (rows: depth, columns: length)\n")
    for label in result.labels:
        grid = result.accuracy_grid(label)
        lines.append(f"\n### {label}\n\n| depth | " + " | ".join(format_length(n) for n in L) + " |\n|---|" + "---:|" * len(L) + "\n")
        for i, d in enumerate(result.depths):
            lines.append(f"| {d:g} | " + " | ".join(_cell(v, ".2f") for v in grid[i]) + " |\n")
    if plots:
        lines.append("\n## Plots\n\n")
        lines += [f"![{p}]({p})\n" for p in plots]
    return "".join(lines)


def write_plots(result: EvalResult, out_dir: Path) -> list[str]:
    """nll_vs_length.png, segment_ppl_vs_length.png and accuracy_<method>.png; returns their file names."""
    from .plots import eval_plots

    return eval_plots(result, out_dir)


__all__ = [
    "DEFAULT_DEPTHS",
    "DEFAULT_SEED",
    "CostCell",
    "EvalMethod",
    "EvalResult",
    "NeedleCell",
    "SegmentCell",
    "build_methods",
    "default_out_dir",
    "parse_baselines",
    "parse_depths",
    "render_csv",
    "render_report",
    "run_eval",
    "segment_document",
    "segment_nll",
    "validate_settings",
    "write_eval",
    "write_plots",
]
