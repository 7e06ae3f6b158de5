"""``longsearch info``: a model's RoPE geometry and what each baseline does to every frequency (the data;
:func:`longsearch.render.render_info` shows it).

Only the config is read (no weights), so a hub id works as well as a local directory.

>>> report = info_report(RopeGeometry(128, 500000.0, 8192), 131072)
>>> report.critical_index, report.critical_index_lower, report.scale
(35, 24, 16.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    model: str | None = None  # what was asked for (None = the embedded testbed)
    layers: list[Any] = field(default_factory=list)  # models.LayerRope per layer type (from model_info)


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


def model_info(model: str | None, target: str | int) -> InfoReport:
    """:func:`info_report` for ``model`` (hub id, local directory or GGUF file; None = the testbed) at ``target`` (e.g.
    "128k"), with the RoPE of each layer type (``layers``: which layers λ rescales)."""
    from .models import layer_ropes, load_config, model_geometry  # torch/transformers only when the command runs

    target_length = parse_length(target)
    config = load_config(model)
    report = info_report(model_geometry(config), target_length)
    report.model = model
    report.layers = layer_ropes(config)
    return report


__all__ = ["INFO_METHODS", "InfoReport", "info_report", "model_info"]
