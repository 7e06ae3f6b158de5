"""``longsearch eval --suite ruler`` (or ``--tasks niah-single-1,vt,cwe``): every task at every length for every method.

For each length and task one task set is built (``samples`` documents, the eval's seed and held-out prose) and
shared by every method. Each method scores it the way the task is scored (:mod:`longsearch.ruler.generate`):

- tasks with one answer: teacher forced through the method's own needle scorer
  (:meth:`~longsearch.eval_methods.EvalMethod.needle_score`): exact match of the answer tokens, and their NLL;
- tasks with several answers: the method's greedy generation (:class:`~longsearch.eval_methods.Generates`) judged by
  the task's match rule, and the teacher-forced NLL of the canonical answer beside it. A method that does not
  generate (NBCE) gets a failed cell saying so.

Every method runs as it does in the rest of the eval (dynamic methods pick their λ from each forward's length). A
task that does not fit a length is a cell marked so; a cell that runs out of memory, or that a method cannot run
(NBCE with a question longer than its window), is recorded with its error and the rest goes on. The result is a :class:`~longsearch.task_result.TaskSuite`, which :func:`longsearch.evaluate.write_eval` writes
into eval.json, eval.csv and report.md, with one plot per task family (:func:`longsearch.plots.task_family_plots`).

>>> names = suite_task_names(suite="ruler", tasks="vt")                       # doctest: +SKIP
>>> result.tasks = run_tasks(lm, methods, names, [256, 512], samples=2)       # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InputError, LongsearchError, NeedleError
from ..eval_methods import EvalMethod, Generates
from ..lengths import format_length
from ..needles import NeedleSet
from ..task_result import OUTPUTS_KEPT, TaskCell, TaskSuite
from .generate import decode_outputs, judge_outputs
from .tasks import NOT_BUILT, SUITES, TASKS, build_task_set, task_names

DEFAULT_TASK_SAMPLES = 8

#: progress(done, total, what) — called after every cell
ProgressFn = Callable[[int, int, str], None]


def suite_task_names(suite: str | None = None, tasks: str | None = None) -> list[str]:
    """``--suite`` and ``--tasks`` → the task names, checked (an unknown suite or task refused in one line); empty
    when neither is given."""
    parts: list[str] = []
    if suite is not None:
        key = suite.strip().lower()
        if key not in SUITES:
            raise InputError(f"unknown suite {suite!r}: choose {', '.join(SUITES)} (or name tasks with --tasks)")
        parts.append(key)
    if tasks is not None:
        if not tasks.strip():
            raise InputError(f"--tasks is empty: name tasks such as niah-single-1,vt,cwe ({', '.join(TASKS)})")
        parts.append(tasks)
    return task_names(",".join(parts)) if parts else []


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def _error_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__


def score_method(method: EvalMethod, lm: Any, task_set: NeedleSet) -> TaskCell:
    """One method on one task set, scored the task's way (see the module docstring)."""
    meta = task_set.meta
    task, family, scoring = str(meta["task"]), str(meta["family"]), str(meta["scoring"])
    t0 = time.perf_counter()
    n = len(task_set.samples)
    s = method.needle_score(lm, task_set)  # teacher forced: exact match and the answer NLL
    nll = float(s.nll)
    if scoring == "teacher-forced":
        per = [1.0 if c else 0.0 for c in s.per_sample_correct]
        return TaskCell(
            method.label, task, family, task_set.length, float(np.mean(per)), nll, n, scoring, time.perf_counter() - t0, True, s.error, per
        )
    if not isinstance(method, Generates):
        error = f"{method.label} does not generate (it scores one answer teacher-forced): no score for a task judged on generated text"
        return TaskCell(method.label, task, family, task_set.length, math.nan, nll, n, scoring, time.perf_counter() - t0, True, error)
    texts = decode_outputs(lm.tokenizer, method.generate_outputs(lm, task_set))
    per = judge_outputs(task_set, texts)
    return TaskCell(
        method.label,
        task,
        family,
        task_set.length,
        float(np.mean(per)),
        nll,
        n,
        scoring,
        time.perf_counter() - t0,
        True,
        s.error,
        per,
        texts[:OUTPUTS_KEPT],
    )


def run_tasks(
    lm: Any,
    methods: Sequence[EvalMethod],
    tasks: Sequence[str],
    lengths: Sequence[int],
    *,
    samples: int = DEFAULT_TASK_SAMPLES,
    seed: int = 777,
    haystack: str = "heldout",
    progress: ProgressFn | None = None,
) -> TaskSuite:
    """Every method × task × length (see the module docstring). ``lm``: a :class:`~longsearch.models.LoadedModel`."""
    names = task_names(list(tasks))
    lengths = sorted(dict.fromkeys(int(n) for n in lengths))
    if samples < 1:
        raise InputError(f"--task-samples must be at least 1, got {samples}")
    if not lengths:
        raise InputError("no lengths to evaluate: give --lengths such as 1k,2k,4k")
    total = len(names) * len(lengths) * (1 + len(methods))
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    sets: dict[tuple[str, int], NeedleSet | str] = {}
    for n in lengths:
        for t in names:
            try:
                sets[(t, n)] = build_task_set(lm.tokenizer, t, n, samples, seed=seed, haystack=haystack)
            except NeedleError as e:  # the task does not fit this length
                sets[(t, n)] = str(e)
            tick(f"building {t} · {format_length(n)}")
    cells: list[TaskCell] = []
    for m in methods:
        for n in lengths:
            for t in names:
                ts = sets[(t, n)]
                if isinstance(ts, str):
                    cells.append(
                        TaskCell(m.label, t, TASKS[t].family, n, math.nan, math.nan, 0, TASKS[t].scoring, 0.0, fits=False, error=ts)
                    )
                else:
                    try:
                        cells.append(score_method(m, lm, ts))
                    except (LongsearchError, MemoryError, RuntimeError) as e:
                        # out of memory at this length, or a method that cannot run this task (NBCE with a question
                        # longer than its window): record it, go on with the rest
                        if not isinstance(e, LongsearchError) and not _is_oom(e):
                            raise
                        _empty_cache()
                        cells.append(
                            TaskCell(
                                m.label, t, TASKS[t].family, n, math.nan, math.nan, samples, TASKS[t].scoring, 0.0, error=_error_line(e)
                            )
                        )
                tick(f"{m.label} · {t} · {format_length(n)}")
    settings = {
        "samples": samples,
        "seed": seed,
        "haystack": haystack,
        "scoring": {t: TASKS[t].scoring for t in names},
        "match": {t: TASKS[t].match for t in names},
        "ruler": {t: TASKS[t].ruler for t in names},
    }
    return TaskSuite(names, {t: TASKS[t].family for t in names}, lengths, cells, settings, dict(NOT_BUILT))


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["DEFAULT_TASK_SAMPLES", "run_tasks", "score_method", "suite_task_names"]
