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

Unset (the normal case), :func:`point` returns at once. Nothing else reads the variable.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "LONGSEARCH_FAULT"
_COUNTS: dict[tuple[str, str], int] = {}


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
    for item in spec.split(","):
        parts = item.strip().split(":")
        if len(parts) != 4:
            continue
        target, n, at, action = parts
        if at != when or not _matches(target, name):
            continue
        key = (item.strip(), when)
        _COUNTS[key] = _COUNTS.get(key, 0) + 1
        if _COUNTS[key] != int(n):
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
    for item in os.environ.get(ENV, "").split(","):
        parts = item.strip().split(":")
        if len(parts) == 4 and parts[2] == "partial" and _matches(parts[0], name):
            return parts[3]
    return "kill"
