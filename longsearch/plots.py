"""Plots of a search: ``progress.png`` (best score per generation against the baselines) and
``factors.png`` (the best λ per frequency against PI, NTK and YaRN, with d_tcd and d_rcd marked).

Both are drawn with matplotlib's Agg backend (no display needed) and written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes

_BASELINE_STYLE = {
    "pi": ("tab:orange", "--"),
    "ntk": ("tab:green", "-."),
    "yarn": ("tab:red", ":"),
    "none": ("tab:gray", (0, (1, 3))),
    "llama3": ("tab:purple", "--"),
}


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(7.5, 4.2), dpi=110, layout="constrained")


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
) -> Path:
    """Best needle NLL after each generation (steps) and each baseline's NLL as a horizontal line."""
    fig = _figure()
    ax = fig.add_subplot()
    gens = list(generations)
    ys = [float(y) if math.isfinite(y) else np.nan for y in best_scores]
    if gens:
        ax.step(gens, ys, where="post", color="tab:blue", lw=2, marker="o", ms=3, label="longsearch (best)")
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
) -> Path:
    """λ_i per frequency index i (log scale) for the best vector and the baselines; d_tcd / d_rcd as vertical lines."""
    fig = _figure()
    ax = fig.add_subplot()
    best = np.asarray(best, dtype=np.float64)
    i = np.arange(best.size)
    for name, lam in baselines.items():
        color, style = _BASELINE_STYLE.get(name, ("black", "--"))
        ax.plot(i, np.asarray(lam, dtype=np.float64), color=color, ls=style, lw=1.3, label=name)
    ax.plot(i, best, color="tab:blue", lw=2.2, marker="o", ms=2.5, label="longsearch (best)")
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


__all__ = ["factors_plot", "progress_plot"]
