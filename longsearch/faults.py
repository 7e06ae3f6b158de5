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
        if len(parts) != 4 or not parts[0]:
            problem = "it is not FILE:N:WHEN:ACTION"
        elif not parts[1].isdigit() or int(parts[1]) < 1:
            problem = f"N must be a whole number from 1, not {parts[1]!r}"
        elif parts[2] not in WHENS:
            problem = f"WHEN must be one of {', '.join(WHENS)}, not {parts[2]!r}"
        elif parts[3] not in ACTIONS:
            problem = f"ACTION must be one of {', '.join(ACTIONS)}, not {parts[3]!r}"
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
