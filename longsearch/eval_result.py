"""An evaluation's result: its cells (needles, final segment, cost) and the CSV and Markdown report written from them.

:func:`longsearch.evaluate.run_eval` fills an :class:`EvalResult`; :func:`longsearch.evaluate.write_eval` writes it
(with :func:`render_csv`, :func:`render_report` and the plots of :func:`longsearch.plots.eval_plots`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .lengths import format_length
from .task_result import TaskSuite


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
    same_as: str | None = None  # the method whose cell this is (the same λ and m at this length): computed once


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
    same_as: str | None = None  # as in NeedleCell


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
    same_as: str | None = None  # the method whose probe stands for this one (the other serving mode of one method)


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
    tasks: TaskSuite | None = None  # the RULER-style tasks (eval --suite / --tasks), when asked for

    @property
    def labels(self) -> list[str]:
        return [m["label"] for m in self.methods]

    def serving(self, label: str) -> str:
        """The serving mode of a method's row (``per-forward``, ``long-everywhere``), or ``every``."""
        return str(next(m for m in self.methods if m["label"] == label).get("serving") or "every")

    def method_of(self, label: str) -> str:
        """The label a method's serving-mode rows share (the row's own label for a method with one row)."""
        return str(next(m for m in self.methods if m["label"] == label).get("method") or label)

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
                "serving": self.serving(label),
                "length": n,
                "needle_nll": _num(self.needle_mean(label, n)[0]),
                "needle_accuracy": _num(self.needle_mean(label, n)[1]),
                "segment_nll": _num(self.segment(label, n).nll),
                "segment_ppl": _num(self.segment(label, n).ppl),
            }
            for label in self.labels
            for n in self.lengths
        ]
        out = {
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
        if self.tasks is not None:
            out["tasks"] = self.tasks.to_dict(self.labels)
        return out


def _num(v: Any) -> Any:
    """JSON has no NaN: failed cells are null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def render_csv(result: EvalResult) -> str:
    """One tidy row per measurement: kind (needle, needle-mean, segment), method, length, depth, nll, ppl, accuracy, …"""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "kind",
            "method",
            "length",
            "depth",
            "nll",
            "ppl",
            "accuracy",
            "n",
            "seconds",
            "error",
            *(["task"] if result.tasks is not None else []),
        ]
    )
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
    if result.tasks is not None:
        w.writerows(result.tasks.csv_rows(result.labels))
    return buf.getvalue()


def _f(v: float) -> str:
    return "" if v is None or not math.isfinite(v) else repr(float(v))


def _cell(v: float, fmt: str) -> str:
    return "–" if v is None or not math.isfinite(v) else format(v, fmt)


def _template_note(s: dict[str, Any]) -> str:
    """How ``--template auto`` chose (empty for a template named on the command line)."""
    check = s.get("template_check")
    if s.get("template_requested") != "auto" or not check:
        return ""
    measured = ", ".join(
        f"{t} {_cell(m['accuracy'] if m['accuracy'] is not None else math.nan, '.2f')}" for t, m in check["templates"].items()
    )
    return (
        f" (chosen by `--template auto`: the templates plain RoPE answers at least {check['threshold']:g} of inside the "
        f"window; measured: {measured})"
    )


def _serving_note(result: EvalResult) -> str:
    """What the serving modes are, and which rows are one method served two ways."""
    modes = result.settings.get("serving") or []
    if not modes:
        return ""
    lines = [
        "\nServing modes: **per-forward** is transformers, which picks the factors each forward by its length; "
        "**long-everywhere** is vLLM (`--max-model-len`) and llama.cpp (`-c`), which pick once from the served context: "
        "above the window, the long factors (the λ for the target) at every length, short prompts included. "
        f"Shown: {', '.join(modes)}. Rows marked `every` behave alike in every engine (plain RoPE, static baselines: "
        "their λ applies at every length in transformers too, attention-side methods).\n"
    ]
    shared = sorted({(c.method, c.same_as) for c in result.needles if c.same_as}, key=lambda x: result.labels.index(x[0]))
    if shared:
        by: dict[tuple[str, str], list[str]] = {}
        for c in result.needles:
            if c.same_as and format_length(c.length) not in by.setdefault((c.method, c.same_as), []):
                by[(c.method, c.same_as)].append(format_length(c.length))
        lines.append(
            "\nCells computed once (the same λ and m at that length): "
            + "; ".join(f"{m} = {t} at {', '.join(by[(m, t)])}" for m, t in shared)
            + ".\n"
        )
    return "".join(lines)


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
        f"Needles: template `{s['template']}`{_template_note(s)}, haystack `{s['haystack']}` (held out from search), "
        f"seed {s['seed']}, samples per cell: {s['samples']}, depths: {', '.join(f'{d:g}' for d in result.depths)}.\n\n",
        f"Final segment: the last {s['segment_tokens']} tokens of one held-out document, scored with n − {s['segment_tokens']} "
        "tokens of context at every length n. A perplexity that falls with n shows the longer context is used; "
        "a flat one shows it is merely tolerated.\n",
        "\n## Methods\n\n",
        "| method | kind | serving | dynamic | attention factor | target | source |\n|---|---|---|---|---:|---:|---|\n",
        *(
            f"| {m['label']} | {m['kind']} | {m.get('serving') or 'every'} | {'yes' if m['dynamic'] else 'no'} | "
            f"{_cell(m['attention_factor'], '.4f') if m['attention_factor'] is not None else '–'} | "
            f"{format_length(m['target_length']) if m['target_length'] else '–'} | {m['source']} |\n"
            for m in result.methods
        ),
        "\nDynamic methods are applied as they behave at each length (LongRoPE factors: short factors up to the "
        "original window, long ones above it; dynamic NTK: λ from the current length).\n",
        _serving_note(result),
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
    if result.tasks is not None:
        lines.append(result.tasks.render_markdown(result.labels))
    if plots:
        lines.append("\n## Plots\n\n")
        lines += [f"![{p}]({p})\n" for p in plots]
    return "".join(lines)


__all__ = ["CostCell", "EvalResult", "NeedleCell", "SegmentCell", "render_csv", "render_report"]
