"""The RULER-style task part of an evaluation: one cell per method × task × length, the RULER-style average per
length, and the tables and CSV rows written from them. No model, no torch (:mod:`longsearch.eval_result`,
:mod:`longsearch.plots` and :mod:`longsearch.ruler.suite` read it).

A task that does not fit a length (its instructions, body and answer need more tokens) is a cell of its own
(``fits`` False), shown as "does not fit"; a cell that failed (out of memory, a method that cannot generate) keeps
its error. Neither counts in the average, which says over how many tasks it was taken.

>>> cells = [TaskCell("none", "vt", "multi-hop", 512, 0.5, 1.0, 2, "generate", 0.1),
...          TaskCell("none", "cwe", "aggregation", 512, 0.25, 2.0, 2, "generate", 0.1),
...          TaskCell("none", "fwe", "aggregation", 512, math.nan, math.nan, 0, "", 0.0, fits=False, error="cannot hold")]
>>> suite = TaskSuite(["vt", "cwe", "fwe"], {"vt": "multi-hop", "cwe": "aggregation", "fwe": "aggregation"}, [512], cells)
>>> suite.average("none", 512)
(0.375, 2)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .lengths import format_length

#: generated texts kept per cell (eval.json), to show what a method answered
OUTPUTS_KEPT = 2


@dataclass
class TaskCell:
    """One method × task × length: ``score`` in [0, 1] (the task's own scoring, mean over samples; NaN when it does
    not fit or failed) and ``nll`` (the teacher-forced NLL of the canonical answer, nats per token)."""

    method: str
    task: str
    family: str
    length: int
    score: float
    nll: float
    n_samples: int
    mode: str  # "teacher-forced" or "generate": how the task is scored
    seconds: float
    fits: bool = True
    error: str | None = None
    per_sample: list[float] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.fits and self.error is None and math.isfinite(self.score)

    def shown(self, fmt: str = ".2f") -> str:
        if not self.fits:
            return "does not fit"
        if self.error is not None or not math.isfinite(self.score):
            return "failed"
        return format(self.score, fmt)


@dataclass
class TaskSuite:
    """The task cells of an evaluation and what they were run with.

    ``tasks``: names in order; ``families``: task → family (retrieval, multi-hop, aggregation); ``settings``:
    samples, seed, haystack, the scoring of each task; ``not_built``: RULER tasks longsearch has no generator for,
    with the reason."""

    tasks: list[str]
    families: dict[str, str]
    lengths: list[int]
    cells: list[TaskCell]
    settings: dict[str, Any] = field(default_factory=dict)
    not_built: dict[str, str] = field(default_factory=dict)

    @property
    def family_names(self) -> list[str]:
        return list(dict.fromkeys(self.families[t] for t in self.tasks))

    def cell(self, method: str, task: str, length: int) -> TaskCell:
        for c in self.cells:
            if c.method == method and c.task == task and c.length == length:
                return c
        raise KeyError((method, task, length))

    def average(self, method: str, length: int, tasks: Sequence[str] | None = None) -> tuple[float, int]:
        """The RULER-style average: the mean score over the tasks (default: all) scored at ``length`` — those that
        fit and did not fail — and how many they are (NaN, 0 when none)."""
        names = set(self.tasks if tasks is None else tasks)
        scores = [c.score for c in self.cells if c.method == method and c.length == length and c.task in names and c.ok]
        return (float(np.mean(scores)), len(scores)) if scores else (math.nan, 0)

    def family_tasks(self, family: str) -> list[str]:
        return [t for t in self.tasks if self.families[t] == family]

    def to_dict(self, labels: Sequence[str]) -> dict[str, Any]:
        summary = [
            {"method": label, "length": n, "average": _num(avg), "tasks_counted": k, "tasks": len(self.tasks)}
            for label in labels
            for n in self.lengths
            for avg, k in [self.average(label, n)]
        ]
        return {
            "tasks": self.tasks,
            "families": self.families,
            "lengths": self.lengths,
            "settings": self.settings,
            "not_built": self.not_built,
            "summary": summary,
            "cells": [{k: _num(v) for k, v in asdict(c).items()} for c in self.cells],
        }

    def csv_rows(self, labels: Sequence[str]) -> list[list[Any]]:
        """Rows in eval.csv's columns (kind, method, length, depth, nll, ppl, accuracy, n, seconds, error) and a last
        one, task: ``task`` rows (accuracy = the task's score) and ``task-mean`` rows (the RULER-style average; n =
        tasks counted)."""
        rows: list[list[Any]] = []
        for c in self.cells:
            ppl = math.exp(c.nll) if math.isfinite(c.nll) and c.nll < 700 else math.nan
            error = c.error or ("" if c.fits else "does not fit")
            rows.append(["task", c.method, c.length, "", _f(c.nll), _f(ppl), _f(c.score), c.n_samples, f"{c.seconds:.3f}", error, c.task])
        for label in labels:
            for n in self.lengths:
                avg, k = self.average(label, n)
                rows.append(["task-mean", label, n, "", "", "", _f(avg), k, "", "", ""])
        return rows

    def render_markdown(self, labels: Sequence[str]) -> str:
        """report.md's section: the averages (method × length), then one task × length table per method."""
        L = self.lengths
        head = " | " + " | ".join(format_length(n) for n in L) + " |\n|---|" + "---:|" * len(L) + "\n"
        s = self.settings

        def avg_cell(label: str, n: int) -> str:
            avg, k = self.average(label, n)
            return _cell(avg) + ("" if k == len(self.tasks) else f" ({k}/{len(self.tasks)})")

        lines = [
            "\n## RULER-style tasks\n\n",
            f"Tasks: {', '.join(self.tasks)}; documents per task and length: {s.get('samples', '?')} (seed {s.get('seed', '?')}, "
            f"haystack `{s.get('haystack', '?')}`, built once and shared by every method). Scores in [0, 1]: "
            "tasks with one answer are scored teacher-forced (exact match of the answer tokens), tasks with several by "
            "greedy generation judged by RULER's all-answers rule (the fraction of references in the output). "
            "See docs/ruler.md.\n\n",
        ]
        if self.not_built:
            lines.append("Not built: " + "; ".join(f"{k} ({v})" for k, v in self.not_built.items()) + ".\n\n")
        lines += [
            "### RULER-style average (mean score over the tasks that fit the length; (k/n) where fewer than all)\n\n",
            "| method" + head,
            *(f"| {label} | " + " | ".join(avg_cell(label, n) for n in L) + " |\n" for label in labels),
        ]
        if len(self.family_names) > 1:
            lines.append("\n### Mean per task family\n\n| method | family" + head.replace("|---|", "|---|---|", 1))
            for label in labels:
                for fam in self.family_names:
                    lines.append(
                        f"| {label} | {fam} | " + " | ".join(_cell(self.average(label, n, self.family_tasks(fam))[0]) for n in L) + " |\n"
                    )
        for label in labels:
            lines.append(f"\n### {label}: task × length\n\n| task | family | scoring" + head.replace("|---|", "|---|---|---|", 1))
            for t in self.tasks:
                mode = s.get("scoring", {}).get(t, "")
                lines.append(f"| {t} | {self.families[t]} | {mode} | " + " | ".join(self._shown(label, t, n) for n in L) + " |\n")
            lines.append("| **average** | | | " + " | ".join(f"**{avg_cell(label, n)}**" for n in L) + " |\n")
        failed = [c for c in self.cells if c.fits and c.error]
        if failed:
            lines.append("\n### Failed task cells\n\n")
            lines += [f"- {c.method}, {c.task} at {format_length(c.length)}: {c.error}\n" for c in failed]
        misfits = sorted({(c.task, c.length) for c in self.cells if not c.fits}, key=lambda x: (self.tasks.index(x[0]), x[1]))
        if misfits:
            lines.append(
                "\nDoes not fit: "
                + "; ".join(f"{t} at {format_length(n)}" for t, n in misfits)
                + " (its instructions, body and answer need more tokens than the length; it is left out of the average "
                "there).\n"
            )
        return "".join(lines)

    def _shown(self, label: str, task: str, length: int) -> str:
        try:
            return self.cell(label, task, length).shown()
        except KeyError:
            return "–"


def task_values(suite: TaskSuite, task: str) -> Callable[[str, int], float]:
    """(method, length) → score of ``task`` (NaN where it does not fit or failed): what a plot draws."""

    def value(label: str, n: int) -> float:
        try:
            c = suite.cell(label, task, n)
        except KeyError:
            return math.nan
        return c.score if c.ok else math.nan

    return value


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _f(v: float) -> str:
    return "" if v is None or not math.isfinite(v) else repr(float(v))


def _cell(v: float, fmt: str = ".2f") -> str:
    return "–" if v is None or not math.isfinite(v) else format(v, fmt)


__all__ = ["OUTPUTS_KEPT", "TaskCell", "TaskSuite", "task_values"]
