"""Fault injection for the reliability tests: make this process die (SIGKILL) or hit a full disk (ENOSPC)
at a chosen write, so that every kind of write of a run can be interrupted and the resume checked.

Set ``LONGSEARCH_FAULT`` to one or more comma-separated ``FILE:N:WHEN:ACTION``:

* ``FILE`` — the file name written (``journal.jsonl``, ``best.json``, ``baselines.json``, ``final.json``,
  ``config.json``, ...), or a class: ``checkpoint`` (any ``gen-NNNN.json``), ``plot`` (any ``.png``),
  ``dir`` (an output built under a temporary name and renamed: an export, an eval directory, a GGUF file —
  :func:`~longsearch.atomic.atomic_dir` and :func:`~longsearch.atomic.atomic_path`);
* ``N`` — the N-th such write of this process (from 1);
* ``WHEN`` — ``before`` (the data is written to a temporary file / not yet appended), ``after`` (the write is
  complete), ``partial`` (journal only: half of the line is appended) or ``aside`` (``dir`` only: the output
  being replaced has been moved aside, the new one not yet renamed onto it);
* ``ACTION`` — ``kill`` (SIGKILL: no handler, no cleanup) or ``enospc`` (raise ``OSError(ENOSPC)``).

A worker's scoring can fail too (the pool's tests of a faulty worker): ``score:N:WHEN:ACTION`` on every worker, or
``score@LABEL:N:WHEN:ACTION`` on the worker of that label only (``w0``; its replacement is ``w0.1``), where ``N``
counts the scorings of that worker, ``WHEN`` is ``before`` (the N-th scoring only) or ``from`` (the N-th and every
later one: a sticky fault), and ``ACTION`` is ``device`` (a CUDA-style ``RuntimeError``: an illegal memory access),
``oom`` (``torch.cuda.OutOfMemoryError``) or ``kill`` (SIGKILL of the worker). The pool hands the driver's value to
its workers (:func:`score_point`).

Unset (the normal case), :func:`point` returns at once. Nothing else reads the variable. A malformed value is
refused with a one-line :class:`~longsearch.errors.InputError` (:func:`check`, called by ``evolve`` before it
writes anything; any other command at its first write).
"""

from __future__ import annotations

import errno
import os
import signal
from functools import lru_cache

from .errors import InputError

ENV = "LONGSEARCH_FAULT"
WHENS = ("before", "after", "partial", "aside")
ACTIONS = ("kill", "enospc")
SCORE = "score"
SCORE_WHENS = ("before", "from")
SCORE_ACTIONS = ("device", "oom", "kill")
#: the message of an injected device fault (what a sticky CUDA error looks like)
DEVICE_FAULT = "CUDA error: an illegal memory access was encountered (injected by LONGSEARCH_FAULT)"
_COUNTS: dict[tuple[str, str], int] = {}


@lru_cache(maxsize=8)
def parse(spec: str) -> tuple[tuple[str, str, int, str, str], ...]:
    """``FILE:N:WHEN:ACTION[,...]`` → ``(item, FILE, N, WHEN, ACTION)`` each; InputError (one line) for a malformed one."""
    out = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        parts = item.split(":")
        problem = None
        scoring = bool(parts) and parts[0].split("@", 1)[0] == SCORE
        whens, actions = (SCORE_WHENS, SCORE_ACTIONS) if scoring else (WHENS, ACTIONS)
        if len(parts) != 4 or not parts[0] or parts[0].endswith("@"):
            problem = "it is not FILE:N:WHEN:ACTION"
        elif not parts[1].isdigit() or int(parts[1]) < 1:
            problem = f"N must be a whole number from 1, not {parts[1]!r}"
        elif parts[2] not in whens:
            problem = f"WHEN must be one of {', '.join(whens)}, not {parts[2]!r}"
        elif parts[3] not in actions:
            problem = f"ACTION must be one of {', '.join(actions)}, not {parts[3]!r}"
        if problem:
            raise InputError(
                f"{ENV}={spec!r}: {item!r} is malformed ({problem}): give FILE:N:WHEN:ACTION items such as "
                "journal.jsonl:3:after:kill, or unset it"
            )
        out.append((item, parts[0], int(parts[1]), parts[2], parts[3]))
    return tuple(out)


def check() -> None:
    """Refuse a malformed ``LONGSEARCH_FAULT`` now (a command calls this before it writes anything)."""
    spec = os.environ.get(ENV)
    if spec:
        parse(spec)


def _matches(target: str, name: str) -> bool:
    if target == name:
        return True
    if target == "checkpoint":
        return name.startswith("gen-") and name.endswith(".json")
    if target == "plot":
        return name.endswith(".png")
    return False


def point(name: str, when: str) -> bool:
    """Called by the writers at each write. Kills the process or raises ENOSPC when a fault is due there.

    Returns True when a ``partial`` fault is due (the journal then writes half a line and calls :func:`trigger`).
    """
    spec = os.environ.get(ENV)
    if not spec:
        return False
    for item, target, n, at, action in parse(spec):
        if at != when or not _matches(target, name):
            continue
        key = (item, when)
        _COUNTS[key] = _COUNTS.get(key, 0) + 1
        if _COUNTS[key] != n:
            continue
        if when == "partial":
            return True
        trigger(action, name)
    return False


def score_point(spec: str | None, label: str, n: int) -> None:
    """Called by a worker's scorer before its ``n``-th scoring (from 1): raises the fault ``spec`` (the driver's
    ``LONGSEARCH_FAULT``) puts there for the worker ``label``, if any."""
    if not spec:
        return
    for _, target, at_n, when, action in parse(spec):
        name, _, only = target.partition("@")
        if name != SCORE or (only and only != label):
            continue
        if n == at_n or (when == "from" and n > at_n):
            if action == "device":
                raise RuntimeError(DEVICE_FAULT)
            if action == "oom":
                import torch

                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by LONGSEARCH_FAULT)")
            os.kill(os.getpid(), signal.SIGKILL)


def trigger(action: str, name: str) -> None:
    if action == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device (injected by LONGSEARCH_FAULT)", name)
    os.kill(os.getpid(), signal.SIGKILL)


def partial_action(name: str) -> str:
    """The action of the ``partial`` fault that :func:`point` just reported for ``name``."""
    for _, target, _, at, action in parse(os.environ.get(ENV, "")):
        if at == "partial" and _matches(target, name):
            return action
    return "kill"
