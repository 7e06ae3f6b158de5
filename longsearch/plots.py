"""Every plot longsearch draws, with matplotlib's Agg backend (no display needed), each written atomically.

- a search (evolve): ``progress.png`` (best score per generation against the baselines) and ``factors.png``
  (the best λ per frequency against PI, NTK and YaRN, with d_tcd and d_rcd marked);
- an evaluation (eval): ``accuracy_vs_length.png`` (one line per method and serving mode),
  ``nll_vs_length.png``, ``segment_ppl_vs_length.png`` and one needle-accuracy heatmap per method (:func:`eval_plots`),
  and with RULER-style tasks one ``tasks_<family>.png`` per task family (:func:`task_family_plots`);
- a finetune run: ``loss.png``, the training loss per window kind (:func:`finetune_loss_plot`);
- the testbed's training (``longsearch testbed train``): ``loss_curve.png``, the loss and the held-out needle
  accuracy per step (:func:`testbed_curve_plot`).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import atomic_write_bytes
from .lengths import format_length

if TYPE_CHECKING:
    from .eval_result import EvalResult
    from .task_result import TaskSuite

_BASELINE_STYLE = {
    "pi": ("tab:orange", "--"),
    "ntk": ("tab:green", "-."),
    "yarn": ("tab:red", ":"),
    "none": ("tab:gray", (0, (1, 3))),
    "llama3": ("tab:purple", "--"),
}


def _figure(width: float = 7.5, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def progress_plot(
    path: str | Path,
    generations: Sequence[int],
    best_scores: Sequence[float],
    baselines: Mapping[str, float],
    title: str = "",
    validation_scores: Sequence[float] | None = None,
) -> Path:
    """Best needle NLL after each generation (steps) and each baseline's NLL as a horizontal line; with
    ``validation_scores``, each generation's best candidate's validation NLL (points) and the lowest of them, the
    factors chosen, circled."""
    fig = _figure()
    ax = fig.add_subplot()
    gens = list(generations)
    ys = [float(y) if math.isfinite(y) else np.nan for y in best_scores]
    if gens:
        ax.step(gens, ys, where="post", color="tab:blue", lw=2, marker="o", ms=3, label="longsearch (best search NLL)")
    if validation_scores is not None and gens:
        vs = [float(v) if math.isfinite(v) else np.nan for v in validation_scores]
        ax.plot(gens, vs, color="tab:purple", lw=1, ls=":", marker="s", ms=4, label="each generation's best, on validation needles")
        if not all(np.isnan(vs)):
            k = int(np.nanargmin(vs))
            ax.plot([gens[k]], [vs[k]], marker="o", ms=12, mfc="none", mec="tab:purple", mew=1.5, ls="", label=f"chosen ({vs[k]:.3f})")
    for name, score in sorted(baselines.items()):
        if score is None or not math.isfinite(score):
            continue
        color, style = _BASELINE_STYLE.get(name, ("black", "--"))
        ax.axhline(score, color=color, ls=style, lw=1.3, label=f"{name} ({score:.3f})")
    ax.set_xlabel("generation")
    ax.set_ylabel("needle NLL (lower is better)")
    if gens:
        ax.set_xlim(min(gens) - 0.2, max(max(gens), 1) + 0.2)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "search progress", fontsize=10)
    return _save(fig, path)


def factors_plot(
    path: str | Path,
    best: np.ndarray,
    baselines: Mapping[str, np.ndarray],
    d_tcd: int | None = None,
    d_rcd: int | None = None,
    title: str = "",
    label: str = "longsearch (best)",
) -> Path:
    """λ_i per frequency index i (log scale) for the best (or chosen) vector and the baselines; d_tcd / d_rcd as
    vertical lines."""
    fig = _figure()
    ax = fig.add_subplot()
    best = np.asarray(best, dtype=np.float64)
    i = np.arange(best.size)
    for name, lam in baselines.items():
        color, style = _BASELINE_STYLE.get(name, ("black", "--"))
        ax.plot(i, np.asarray(lam, dtype=np.float64), color=color, ls=style, lw=1.3, label=name)
    ax.plot(i, best, color="tab:blue", lw=2.2, marker="o", ms=2.5, label=label)
    if d_tcd is not None:
        ax.axvline(d_tcd, color="black", lw=1, ls="--", alpha=0.7, label=f"d_tcd = {d_tcd}")
    if d_rcd is not None:
        ax.axvline(d_rcd, color="tab:blue", lw=1, ls=":", alpha=0.9, label=f"d_rcd = {d_rcd}")
    ax.set_yscale("log")
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("frequency index i (higher = longer period)")
    ax.set_ylabel("rescale factor λ_i")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or "rescale factors", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------- eval


def eval_plots(result: EvalResult, out_dir: Path) -> list[str]:
    """accuracy_vs_length.png, nll_vs_length.png, segment_ppl_vs_length.png and accuracy_<method>.png in ``out_dir``;
    their file names."""
    names = [
        _accuracy_plot(result, out_dir / "accuracy_vs_length.png"),
        _line_plot(
            result,
            out_dir / "nll_vs_length.png",
            lambda m, n: result.needle_mean(m, n)[0],
            "needle answer NLL (mean over depths)",
            log_y=False,
        ),
        _line_plot(
            result,
            out_dir / "segment_ppl_vs_length.png",
            lambda m, n: result.segment(m, n).ppl,
            f"final-segment perplexity (last {result.settings['segment_tokens']} tokens)",
            log_y=True,
        ),
    ]
    for label in result.labels:
        names.append(_heatmap(result, label, out_dir / f"accuracy_{safe_name(label)}.png"))
    if result.tasks is not None:
        names += task_family_plots(result.tasks, result.labels, result.geometry["original_length"], out_dir)
    return names


def task_family_plots(suite: TaskSuite, labels: Sequence[str], original: int, out_dir: Path) -> list[str]:
    """One figure per task family (``tasks_<family>.png``): a panel per task of its score against length, one line
    per method (no point where a task does not fit or failed), the family's mean over the tasks that fit in the first
    panel where it has several tasks; returns the file names."""
    from matplotlib.ticker import NullLocator

    from .task_result import task_values

    names = []
    lengths = suite.lengths
    for family in suite.family_names:
        tasks = suite.family_tasks(family)
        panels: list[tuple[str, Callable[[str, int], float]]] = []
        if len(tasks) > 1:
            panels.append((f"{family}: mean of the tasks that fit", _family_mean(suite, tasks)))
        panels += [(t, task_values(suite, t)) for t in tasks]
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig = _figure(3.4 * cols + 0.6, 2.7 * rows + 0.5)
        axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
        for k, ax in enumerate(axes.flat):
            if k >= len(panels):
                ax.set_visible(False)
                continue
            title, value = panels[k]
            for label in labels:  # the colours of the other eval plots: the default cycle in method order
                ax.plot(lengths, [value(label, n) for n in lengths], marker="o", ms=3, label=label)
            if lengths[0] <= original <= lengths[-1]:
                ax.axvline(original, color="grey", linestyle="--", linewidth=1)
            ax.set_xscale("log", base=2)
            ax.set_xlim(lengths[0] / 1.2, lengths[-1] * 1.2)  # the same axis in every panel, points or not
            ax.set_xticks(lengths)
            ax.set_xticklabels([format_length(n) for n in lengths], fontsize=7)
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(title, fontsize=9)
            ax.grid(True, alpha=0.3)
        axes.flat[0].set_ylabel("score (1 = solved)")
        axes.flat[0].legend(fontsize=7)
        window = f"; dashed: original window {format_length(original)}" if lengths[0] <= original <= lengths[-1] else ""
        fig.suptitle(f"RULER-style {family} tasks: score against context length{window}", fontsize=10)
        names.append(_save(fig, out_dir / f"tasks_{safe_name(family)}.png").name)
    return names


def safe_name(label: str) -> str:
    """A method's label as a file-name part (``accuracy_<safe_name>.png``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.") or "method"


def _line_plot(result: EvalResult, path: Path, value: Callable[[str, int], float], ylabel: str, log_y: bool) -> str:
    from matplotlib.ticker import NullLocator, ScalarFormatter

    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for label in result.labels:
        ys = [value(label, n) for n in result.lengths]
        ax.plot(result.lengths, ys, marker="o", label=label)
    original = result.geometry["original_length"]
    xlabel = "context length (tokens)"
    if result.lengths[0] <= original <= result.lengths[-1]:
        ax.axvline(original, color="grey", linestyle="--", linewidth=1, label="original window")
    else:
        xlabel += f"; original window {format_length(original)}"
    ax.set_xscale("log", base=2)
    ax.set_xticks(result.lengths)
    ax.set_xticklabels([format_length(n) for n in result.lengths])
    ax.xaxis.set_minor_locator(NullLocator())
    if log_y and all(v > 0 for s in result.segments for v in [s.ppl] if math.isfinite(v)):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path).name


_MODE_STYLE = {"per-forward": ("-", "o"), "long-everywhere": ("--", "s"), "every": (":", "^")}


def _accuracy_plot(result: EvalResult, path: Path) -> str:
    """Needle accuracy (mean over depths) against length: one colour per method, one line style per serving mode
    (solid per-forward, dashed long-everywhere, dotted for a method that behaves alike in every engine)."""
    from matplotlib.ticker import NullLocator

    fig = _figure(7.5, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    colours: dict[str, str] = {}
    cycle = ["tab:blue", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "black"]  # none of the baselines' colours
    for label in result.labels:
        method, mode = result.method_of(label), result.serving(label)
        if method not in colours:
            others = sum(1 for m in colours if m not in _BASELINE_STYLE)
            colours[method] = _BASELINE_STYLE.get(method, (cycle[others % len(cycle)], ""))[0]
        colour = colours[method]
        style, marker = _MODE_STYLE.get(mode, ("-", "o"))
        ys = [result.needle_mean(label, n)[1] for n in result.lengths]
        name = method if mode == "every" else f"{method}, {mode}"
        ax.plot(result.lengths, ys, color=colour, linestyle=style, marker=marker, ms=4, label=name)
    original = result.geometry["original_length"]
    xlabel = "context length (tokens)"
    if result.lengths[0] <= original <= result.lengths[-1]:
        ax.axvline(original, color="grey", linestyle="-", linewidth=0.8, alpha=0.6, label="original window")
    else:
        xlabel += f"; original window {format_length(original)}"
    if len(result.lengths) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(result.lengths)
    ax.set_xticklabels([format_length(n) for n in result.lengths])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("needle accuracy (mean over depths)")
    ax.set_title("accuracy by serving mode: per-forward (transformers) vs long-everywhere (vLLM, llama.cpp)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path).name


def _heatmap(result: EvalResult, label: str, path: Path) -> str:
    grid = result.accuracy_grid(label)
    fig = _figure(1.2 + 0.9 * len(result.lengths), 1.2 + 0.45 * len(result.depths))
    ax = fig.add_subplot(1, 1, 1)
    img = ax.imshow(np.ma.masked_invalid(grid), vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(result.lengths)))
    ax.set_xticklabels([format_length(n) for n in result.lengths])
    ax.set_yticks(range(len(result.depths)))
    ax.set_yticklabels([f"{d:g}" for d in result.depths])
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = grid[i, j]
            dark = math.isfinite(v) and (v < 0.2 or v > 0.85)  # the ends of RdYlGn are dark
            text = f"{v:.2f}" if math.isfinite(v) else "–"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xlabel("context length")
    ax.set_ylabel("needle depth")
    ax.set_title(f"needle accuracy: {label}")
    fig.colorbar(img, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path).name


def _family_mean(suite: TaskSuite, tasks: Sequence[str]) -> Callable[[str, int], float]:
    return lambda label, n: suite.average(label, n, tasks)[0]


# ---------------------------------------------------------------- training


def finetune_loss_plot(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Training loss per window kind (short rows: original RoPE; long rows: long factors) against the step.

    ``history`` is Trainer's log history (entries with ``step`` and ``loss_short`` / ``loss_long``); None (and
    nothing written) when it holds no per-kind loss yet.
    """
    rows = {k: [(h["step"], h[f"loss_{k}"]) for h in history if f"loss_{k}" in h] for k in ("short", "long")}
    if not any(rows.values()):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for kind, color in (("short", "tab:blue"), ("long", "tab:red")):
        if rows[kind]:
            xs, ys = zip(*rows[kind], strict=True)
            ax.plot(xs, ys, color=color, label=f"{kind} rows", linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("weighted cross entropy (nats/token)")
    ax.set_title("mixed context window training")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def trailing_mean(xs: Sequence[float], k: int = 25) -> np.ndarray:
    """Mean of the last ``k`` values up to each position, NaNs left out (NaN where a window holds none)."""
    a = np.asarray(xs, dtype=np.float64)
    out = np.empty_like(a)
    for i in range(len(a)):
        window = a[max(0, i - k + 1) : i + 1]
        window = window[~np.isnan(window)]
        out[i] = window.mean() if len(window) else np.nan
    return out


def testbed_curve_plot(
    losses: Sequence[float],
    answer_losses: Sequence[float],
    evals: Sequence[tuple[int, float]],
    path: str | Path,
    window: int = 256,
) -> Path:
    """Loss per step (prose/copy tokens and answer tokens, smoothed over 25 steps) and held-out needle accuracy
    (``evals``: (step, accuracy) on documents of ``window`` tokens)."""
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, trailing_mean(losses), label="loss, other tokens (nats)")
    ax.plot(steps, trailing_mean(answer_losses), label="loss, answer tokens (nats)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/byte)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if evals:
        ax2 = ax.twinx()
        ax2.plot([e[0] for e in evals], [e[1] for e in evals], "o-", color="tab:green", label="held-out needle accuracy")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_ylabel(f"needle accuracy ({window} tokens)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="center right", fontsize=8)
    else:
        ax.legend(fontsize=8)
    ax.set_title("testbed training")
    return _save(fig, path)


__all__ = [
    "eval_plots",
    "factors_plot",
    "finetune_loss_plot",
    "progress_plot",
    "safe_name",
    "task_family_plots",
    "testbed_curve_plot",
    "trailing_mean",
]
