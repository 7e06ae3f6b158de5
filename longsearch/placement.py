"""Where a pool's workers go and how they start: the resources each Ray actor asks for, and the wait until every
model replica is loaded — telling an actor not yet *placed* (the cluster lacks a resource: which, how much) from
one placed and still *loading* its model (a first download of a large model takes long).

* :func:`plan_resources` — how many workers, on which device, with which Ray resources. GPU workers whenever GPUs
  are asked for (``device="cuda"``, or ``"auto"`` on a cluster that has GPUs): never a silent fall-back to CPU
  workers. GPUs the cluster has but are busy are waited for (up to the start-up limit); GPUs it does not have are
  refused at once (one line). CPU workers where asked for (``device="cpu"`` or 0 GPUs per worker), or with
  ``"auto"`` on a cluster with no GPU at all (logged as a warning).
* :class:`Starting` — one actor's start: ``ready()`` answers once it is placed, ``load()`` once its model is
  loaded; :func:`wait_started` waits for many, :func:`not_started` says why one is late.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError, RunError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
DEFAULT_STARTUP_TIMEOUT = 600.0


def check_device(device: str) -> str:
    d = str(device).strip().lower()
    if d not in DEVICES:
        raise InputError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    return d


def check_startup_timeout(seconds: float | None) -> None:
    if seconds is not None and not (math.isfinite(float(seconds)) and float(seconds) > 0):
        raise InputError(f"--worker-startup-timeout must be a number of seconds above 0, got {seconds:g}")


@dataclass
class Resources:
    """What :func:`plan_resources` decided: ``workers`` actors on ``device``, each with the Ray ``options``."""

    workers: int
    device: str  # "cpu" or "cuda"
    options: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None  # torch threads in a CPU worker

    def describe(self) -> str:
        """``1 GPU + 1 CPU`` per worker."""
        parts = [f"{self.options[k]:g} {name}" for k, name in (("num_gpus", "GPU"), ("num_cpus", "CPU")) if self.options.get(k)]
        return " + ".join(parts) or "nothing"


def plan_resources(requested: int | None, gpus_per_worker: float, device: str = "auto") -> Resources:
    """The workers of a pool on the Ray cluster this process is connected to (see the module docstring)."""
    import ray

    device = check_device(device)
    free, total = ray.available_resources(), ray.cluster_resources()  # another job may share the cluster
    total_gpus = float(total.get("GPU", 0))
    if device == "cpu" or gpus_per_worker == 0 or (device == "auto" and total_gpus == 0):
        if device == "cuda":
            raise InputError("--device cuda with --gpus-per-worker 0: give the GPUs per worker, or --device cpu")
        res = _cpu_plan(requested, float(free.get("CPU", 0)))
        if device == "auto" and gpus_per_worker > 0:
            log.warning("the Ray cluster has no GPU: scoring on %d CPU worker(s) in float32 (--device cpu says so)", res.workers)
        return res
    return _gpu_plan(requested, gpus_per_worker, float(free.get("GPU", 0)), total_gpus, device)


def _cpu_plan(requested: int | None, cpus: float) -> Resources:
    n = requested or 1
    if n > cpus:
        hint = f"ask for at most {int(cpus)}" if cpus >= 1 else "wait for the other jobs on this Ray cluster to end"
        raise InputError(f"--workers {n} needs {n} CPUs but Ray has {cpus:g} free: {hint}")
    per = max(1, int(cpus // n))
    return Resources(n, "cpu", {"num_cpus": per, "max_restarts": 0, "max_task_retries": 0}, per)


def _gpu_plan(requested: int | None, per: float, free: float, total: float, device: str) -> Resources:
    asked = "--device cuda" if device == "cuda" else "the cluster has GPUs"
    capacity = int(total // per)
    if capacity < 1:
        raise InputError(
            f"each worker needs {per:g} GPU(s) ({asked}) but the Ray cluster has {total:g} in all: lower "
            "--gpus-per-worker, add GPUs, or pass --device cpu for CPU workers"
        )
    n = requested or (int(free // per) or capacity)
    if n > capacity:
        raise InputError(f"--workers {n} needs {n * per:g} GPUs but the cluster has {total:g}: ask for at most {capacity}")
    if n * per > free:
        log.warning("%g of the %g GPUs %d worker(s) need are busy: waiting for them", n * per - free, n * per, n)
    return Resources(n, "cuda", {"num_gpus": per, "num_cpus": 1, "max_restarts": 0, "max_task_retries": 0}, None)


@dataclass
class Starting:
    """One actor's start: ``placed`` answers once Ray placed it and its process runs, ``loaded`` once its model is."""

    label: str
    placed: Any
    loaded: Any
    since: float = field(default_factory=time.perf_counter)
    placed_at: float | None = None

    @classmethod
    def of(cls, label: str, actor: Any) -> Starting:
        return cls(label, actor.ready.remote(), actor.load.remote())

    def poll(self) -> None:
        """Notice the placement (once)."""
        import ray

        if self.placed_at is None and ray.wait([self.placed], timeout=0)[0]:
            self.placed_at = time.perf_counter()


def not_started(late: Sequence[Starting], resources: Resources, limit: float) -> str:
    """Why ``late`` actors have not started within ``limit`` seconds: not placed (the resources missing) or loading."""
    import ray

    for s in late:
        s.poll()
    now = time.perf_counter()
    unplaced = [s for s in late if s.placed_at is None]
    loading = [s for s in late if s.placed_at is not None]
    parts = []
    if unplaced:
        free = ray.available_resources()
        missing = []
        for key, name in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
            need = float(resources.options.get(key) or 0) * len(unplaced)
            if need > float(free.get(name, 0)):
                missing.append(f"{need - float(free.get(name, 0)):g} {name} missing ({need:g} needed, {float(free.get(name, 0)):g} free)")
        why = "; ".join(missing) or "the free resources are spread over several nodes"
        parts.append(
            f"{len(unplaced)} worker(s) not placed: each needs {resources.describe()}, {why}: free them or ask for fewer --workers"
        )
    if loading:
        longest = max(now - (s.placed_at or now) for s in loading)
        parts.append(
            f"{len(loading)} worker(s) placed but still loading the model ({longest:.0f} s so far; a first download of a large "
            "model takes long): raise --worker-startup-timeout"
        )
    return f"{len(late)} worker(s) did not start within {limit:g} s: " + "; ".join(parts)


def wait_started(starts: list[Starting], limit: float, resources: Resources) -> list[tuple[Starting, list]]:
    """Wait until every actor's model is loaded; returns each one's load warnings. RunError when one cannot load
    the model (at once) or the limit passes (saying which are not placed and which still load)."""
    import ray

    pending = {s.loaded: s for s in starts}
    out: list[tuple[Starting, list]] = []
    deadline = time.perf_counter() + limit
    while pending:
        left = deadline - time.perf_counter()
        if left <= 0:
            late = list(pending.values())
            for s in late:
                s.poll()
            error = InputError if any(s.placed_at is None for s in late) else RunError  # resources missing: the user's
            raise error(not_started(late, resources, limit))
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=min(left, 1.0))
        for ref in ready:
            s = pending.pop(ref)
            try:
                out.append((s, ray.get(ref)))
            except Exception as e:
                raise RunError(f"a worker could not load the model: {root_message(e)}") from None
        for s in pending.values():
            s.poll()
    return out


def root_message(e: BaseException) -> str:
    """The last line of a (remote) exception: Ray puts the remote traceback first, the exception itself last."""
    cause = getattr(e, "cause", None) or e.__cause__
    text = str(cause or e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("File ", "Traceback", "^", "~")):
            return ln[:300]
    return type(e).__name__


__all__ = [
    "DEFAULT_STARTUP_TIMEOUT",
    "DEVICES",
    "Resources",
    "Starting",
    "check_device",
    "check_startup_timeout",
    "not_started",
    "plan_resources",
    "root_message",
    "wait_started",
]
