"""RULER-style tasks as search signals: ``evolve --template niah-multikey-2`` searches on a task's documents.

A search template is either needle templates (``passkey``, ``magic-number+multi-needle``: :mod:`longsearch.needles`)
or one RULER-style task (:data:`longsearch.ruler.TASKS`). Either way the search needles are a
:class:`~longsearch.needles.NeedleSet` that :func:`longsearch.scoring.score` reads as it is: the answer-token NLL of
the canonical answer that closes each document, under the candidate's RoPE (teacher forced). A task set is built
by :func:`~longsearch.ruler.build_task_set` from the run's seed, so the same seed gives the same bytes (the search's,
the held-out's and the in-window check's sets alike, each with its own seed).

Which tasks can guide a search: the score is the teacher-forced NLL of the canonical answer, so that answer must be
the one a model that solved the task would give. For one answer (``niah-single-*``, ``niah-multikey-*``) it is. For
several it is where the order of the references follows from the document or the question: document order
(``niah-multivalue``), question order (``niah-multiquery``), chain order (``vt``), most frequent first (``fwe``).
``cwe`` lists its ten words alphabetically, an order its question does not ask for: a model that names the right
words in another order pays for the order, so its NLL measures a convention as much as the context; it is refused
as a signal (:data:`NOT_SIGNALS`) and stays an eval task. Every task is also checked in the window like the needle
templates (:func:`longsearch.plan.measure_signal`): accuracy there is the scorer's exact match of the whole
canonical answer, teacher forced.

>>> signal_template_names("niah-multikey-2"), signal_template_names("passkey+multi-needle")
(['niah-multikey-2'], ['passkey', 'multi-needle'])
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..needles import TEMPLATES, NeedleSet, build_needle_set
from .tasks import TASKS, build_task_set

#: tasks that cannot be a search signal, and why
NOT_SIGNALS = {
    "cwe": "its canonical answer lists the 10 words alphabetically, an order its question does not ask for, so the "
    "answer NLL measures that convention as much as the context; use it in `longsearch eval --tasks cwe`",
}


def _task_key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def is_task_template(name: str) -> bool:
    """Whether ``name`` (one template) is a RULER-style task rather than a needle template."""
    return _task_key(name) in TASKS


def signal_template_names(template: str | Sequence[str]) -> list[str]:
    """``--template`` of a search, checked: needle templates (``"passkey,multi-needle"``, ``"a+b"``), or one
    RULER-style task alone (``"niah-single-1"``). An unknown name, a task mixed with other templates or a task that
    cannot be a signal (:data:`NOT_SIGNALS`) is refused (one-line InputError)."""
    parts = re.split(r"[,+]", template) if isinstance(template, str) else [str(t) for t in template]
    names: list[str] = []
    for part in parts:
        key = str(part).strip().lower()
        if not key:
            continue
        if key in TEMPLATES:
            name = key
        elif _task_key(key) in TASKS:
            name = _task_key(key)
            if name in NOT_SIGNALS:
                raise InputError(f"the task {name!r} cannot be a search signal: {NOT_SIGNALS[name]}")
        else:
            raise InputError(
                f"unknown needle template {part.strip()!r}: choose one of {', '.join(TEMPLATES)}, or one RULER-style task "
                f"({', '.join(t for t in TASKS if t not in NOT_SIGNALS)})"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise InputError(f"no needle template given in {template!r}: choose from {', '.join(TEMPLATES)} or a RULER-style task")
    tasks = [n for n in names if n in TASKS]
    if tasks and len(names) > 1:
        raise InputError(
            f"a RULER-style task is a search template on its own: --template {tasks[0]} (not mixed with {', '.join(n for n in names if n != tasks[0])})"
        )
    return names


def build_signal_set(
    tokenizer: Any,
    length: int,
    n_samples: int,
    template: str,
    seed: int = 0,
    depths: list[float] | str | None = None,
    haystack: str | Sequence[str | Path] = "heldout",
    *,
    tokenizer_name: str | None = None,
) -> NeedleSet:
    """The documents of a search template: :func:`~longsearch.ruler.build_task_set` for a RULER-style task,
    :func:`~longsearch.needles.build_needle_set` for needle templates (arguments as theirs; same arguments, same
    bytes)."""
    names = signal_template_names(template)
    if names[0] in TASKS:
        return build_task_set(
            tokenizer, names[0], length, n_samples, seed=seed, depths=depths, haystack=haystack, tokenizer_name=tokenizer_name
        )
    return build_needle_set(
        tokenizer, length, n_samples, template="+".join(names), seed=seed, depths=depths, haystack=haystack, tokenizer_name=tokenizer_name
    )


__all__ = ["NOT_SIGNALS", "build_signal_set", "is_task_template", "signal_template_names"]
