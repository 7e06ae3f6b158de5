"""``longsearch info``: a model's RoPE geometry and what each baseline does to every frequency.

Only the config is read (no weights), so a hub id works as well as a local directory.

>>> report = info_report(RopeGeometry(128, 500000.0, 8192), 131072)
>>> report.critical_index, report.critical_index_lower, report.scale
(35, 24, 16.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from .errors import InputError
from .lengths import format_length, parse_length
from .rope import RopeGeometry, critical_index, critical_index_lower, periods, rescale

#: The baselines shown per frequency, in table order: (registry name, column title).
INFO_METHODS: tuple[tuple[str, str], ...] = (("pi", "PI"), ("ntk", "NTK"), ("yarn", "YaRN"), ("llama3", "Llama-3"))


@dataclass
class InfoReport:
    """Everything ``info`` shows, computed without printing."""

    geometry: RopeGeometry
    target_length: int
    scale: float
    critical_index: int
    critical_index_lower: int
    periods: np.ndarray
    beyond_window: np.ndarray
    lambdas: dict[str, np.ndarray]
    attention: dict[str, float]


def info_report(g: RopeGeometry, target_length: int) -> InfoReport:
    """Geometry summary and per-frequency λ of PI, NTK, YaRN and Llama-3 for one target length."""
    if target_length <= g.original_length:
        raise InputError(
            f"target {format_length(target_length)} ({target_length} tokens) is not above the original window of "
            f"{g.original_length} tokens: pass a longer --target"
        )
    per = periods(g)
    results = {name: rescale(name, g, target_length) for name, _ in INFO_METHODS}
    return InfoReport(
        geometry=g,
        target_length=target_length,
        scale=target_length / g.original_length,
        critical_index=critical_index(g),
        critical_index_lower=critical_index_lower(g),
        periods=per,
        beyond_window=per > g.original_length,
        lambdas={name: r.lam for name, r in results.items()},
        attention={name: r.m for name, r in results.items()},
    )


def _fmt_period(p: float) -> str:
    return f"{p:,.1f}" if p < 1e6 else f"{p:.3e}"


def render_info(console: Console, model: str | None, target: str | int) -> InfoReport:
    """Print the summary and the per-frequency table for ``model`` (None = the testbed) at ``target``."""
    from .models import load_config, model_geometry  # torch/transformers only when the command runs

    target_length = parse_length(target)
    config = load_config(model)
    g = model_geometry(config)
    report = info_report(g, target_length)
    name = model if model is not None else "embedded testbed"

    console.print(f"[bold]model[/]             {name}", highlight=False)
    console.print(f"rotary dim d      {g.rotary_dim}  ({g.n_freq} frequencies)")
    console.print(f"base b            {g.base:g}")
    console.print(f"original window L {g.original_length}")
    console.print(f"target L'         {target_length} ({format_length(target_length)})")
    console.print(f"scale s           {report.scale:g}")
    console.print(f"d_tcd             {report.critical_index}  (first frequency whose period exceeds L)")
    console.print(f"d_rcd range       [{report.critical_index_lower}, {report.critical_index}]  (LongRoPE2's search range)")
    m = ", ".join(f"{title} {report.attention[key]:.4f}" for key, title in INFO_METHODS)
    console.print(f"attention factor  {m}")

    table = Table(title=f"per-frequency λ at {format_length(target_length)}", show_lines=False)
    table.add_column("i", justify="right")
    table.add_column("period (tokens)", justify="right")
    table.add_column("> L", justify="center")
    for _, title in INFO_METHODS:
        table.add_column(f"λ {title}", justify="right")
    for i in range(g.n_freq):
        marker = " ◂ d_tcd" if i == report.critical_index else ""
        row = [f"{i}{marker}", _fmt_period(float(report.periods[i])), "yes" if report.beyond_window[i] else "no"]
        row += [f"{report.lambdas[key][i]:.4f}" for key, _ in INFO_METHODS]
        table.add_row(*row, style="bold" if i == report.critical_index else None)
    console.print(table)
    return report


__all__ = ["INFO_METHODS", "InfoReport", "info_report", "render_info"]
