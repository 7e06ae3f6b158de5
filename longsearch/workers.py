"""A pool of Ray actors that score candidate λ vectors, each actor holding one model replica.

>>> tasks = [ScoreTask(c, c.rescale) for c in candidates]                          # doctest: +SKIP
>>> with WorkerPool(model=None, target_length=2048, workers=2) as pool:          # doctest: +SKIP
...     pool.set_needles("search", needle_set)          # sent to every actor once
...     for outcome in pool.map_unordered(tasks):       # as each one finishes
...         print(outcome.ref, outcome.nll)

The pool is an :class:`~longsearch.executors.Executor`: the task and outcome types and the scorer each actor runs
(:class:`~longsearch.executors.Scorer`) are in :mod:`longsearch.executors`.

* One actor per GPU (``num_gpus=gpus_per_worker``, default 1) where the cluster has GPUs; otherwise a
  CPU slot of ``cores // workers`` CPUs, and torch in the actor uses that many threads.
* Needle sets are put in the object store once and handed to each actor once (:meth:`set_needles`);
  a task carries only λ, m, the set's name and the race bar (its reference stays with the driver).
* Dispatch is asynchronous (``ray.wait``): the moment a worker finishes, it gets the next task.
* A worker that dies (actor crash, OOM kill, ``ray.kill``, a node lost) is replaced and its task
  re-run; the caller sees only the outcome. A task that kills ``max_attempts`` workers is reported
  with ``nll = inf`` and the reason. A task that hangs past ``task_timeout`` counts as a death.
* With no ``address`` a local Ray is started (temp dir under /tmp, short for the unix-socket limit)
  and shut down by :meth:`close`, also on error or Ctrl-C.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import faults
from .dispatch import Job, next_job, piece_spans
from .errors import InputError, RunError
from .executors import ScoreOutcome, Scorer, ScoreTask, forward_logs
from .mix import NeedleMix
from .placement import (
    DEFAULT_STARTUP_TIMEOUT,
    Resources,
    Starting,
    check_device,
    check_startup_timeout,
    not_started,
    plan_resources,
    root_message,
    wait_started,
)

log = logging.getLogger(__name__)

DEFAULT_OBJECT_STORE = 256 * 1024 * 1024


@dataclass
class PoolStats:
    """Busy time per worker slot (dispatch → result seen by the driver) and the pool's wall time."""

    workers: int
    busy_seconds: float
    wall_seconds: float
    completed: int
    failures: int
    replacements: int

    @property
    def utilization(self) -> float:
        """busy time / (workers × wall time)."""
        denom = self.workers * self.wall_seconds
        return self.busy_seconds / denom if denom > 0 else 0.0

    @property
    def evals_per_second(self) -> float:
        return self.completed / self.wall_seconds if self.wall_seconds > 0 else 0.0


# ---------------------------------------------------------------- the pool


def _death_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as E

    names = (
        "RayActorError",
        "ActorDiedError",
        "ActorUnavailableError",
        "WorkerCrashedError",
        "OutOfMemoryError",
        "NodeDiedError",
        "LocalRayletDiedError",
        "ObjectLostError",
        "OwnerDiedError",
    )
    return tuple(getattr(E, n) for n in names if hasattr(E, n))


def check_pool_options(
    workers: int | None,
    gpus_per_worker: float = 1.0,
    max_attempts: int = 3,
    task_timeout: float | None = None,
    startup_timeout: float | None = None,
) -> None:
    """Refuse pool options that cannot work (one line, InputError) before anything starts or is written."""
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    g = float(gpus_per_worker)
    if not math.isfinite(g) or g < 0:
        raise InputError(f"--gpus-per-worker must be 0 (CPU workers) or more, got {gpus_per_worker:g}")
    if g > 1 and not g.is_integer():
        raise InputError(f"--gpus-per-worker {g:g}: above 1 it must be a whole number of GPUs (Ray shares a GPU only in fractions below 1)")
    if max_attempts < 1:
        raise InputError(f"max_attempts must be at least 1, got {max_attempts}")
    if task_timeout is not None and not (math.isfinite(float(task_timeout)) and float(task_timeout) > 0):
        raise InputError(f"--task-timeout must be a number of seconds above 0, got {task_timeout:g}")
    check_startup_timeout(startup_timeout)


@dataclass
class _Slot:
    index: int
    actor: Any = None
    generation: int = 0  # how many times this slot's actor was replaced
    busy_since: float | None = None
    start: Starting | None = None  # a replacement's start until its model is loaded: no task goes to it before
    leftover: Any = None  # a piece still running for a round that ended (its result is not needed)

    @property
    def label(self) -> str:
        return f"w{self.index}" + (f".{self.generation}" if self.generation else "")

    @property
    def blocking(self) -> Any:
        """What to wait for before this slot takes a task (None: it is free)."""
        return self.starting if self.start is not None else self.leftover

    @property
    def starting(self) -> Any:
        """A replacement's model load (a Ray ref) until it is done, else None."""
        return self.start.loaded if self.start is not None else None


class WorkerPool:
    """Ray actors scoring :class:`ScoreTask` s asynchronously. Use as a context manager.

    ``device``: ``auto`` (GPU workers on a cluster with GPUs, else CPU workers), ``cuda`` or ``cpu``
    (:func:`~longsearch.placement.plan_resources`). ``split``: cut tasks into pieces of documents so that every
    worker has work (:mod:`longsearch.dispatch`). ``scorer_cls``: what each actor runs (a stand-in in benchmarks)."""

    def __init__(
        self,
        model: str | None,
        target_length: int,
        workers: int | None = None,
        address: str | None = None,
        *,
        gpus_per_worker: float = 1.0,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str | None = None,
        max_attempts: int = 3,
        task_timeout: float | None = None,
        startup_timeout: float | None = None,
        temp_root: str | None = None,
        object_store_memory: int | None = DEFAULT_OBJECT_STORE,
        split: bool = True,
        scorer_cls: type = Scorer,
    ) -> None:
        check_pool_options(workers, gpus_per_worker, max_attempts, task_timeout, startup_timeout)
        self.model, self.target_length = model, int(target_length)
        self.requested_workers, self.address = workers, address
        self.gpus_per_worker, self.requested_device = gpus_per_worker, check_device(device)
        self.dtype, self.attn_implementation = dtype, attn_implementation
        self.max_attempts, self.task_timeout = max_attempts, task_timeout
        self.startup_timeout = DEFAULT_STARTUP_TIMEOUT if startup_timeout is None else float(startup_timeout)
        self.temp_root, self.object_store_memory = temp_root, object_store_memory
        self.split, self.scorer_cls = split, scorer_cls
        self._own_ray = False
        self._temp_dir: str | None = None
        self._slots: list[_Slot] = []
        self._needle_refs: dict[str, Any] = {}
        self._needle_sets: dict[str, Any] = {}
        self._actor_cls: Any = None
        self.resources = Resources(0, "cpu")
        self._busy, self._completed, self._failures, self._replacements = 0.0, 0, 0, 0
        self._retired = 0  # slots given up because the cluster lost the room for them
        self._t_start: float | None = None
        self._started = False

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> WorkerPool:
        return self  # Ray and the actors start with the first task (nothing to do, nothing started)

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def workers(self) -> int:
        return len(self._slots)

    @property
    def device(self) -> str:
        return self.resources.device

    @property
    def actors(self) -> list[Any]:
        """The current actor handles (one per worker slot)."""
        return [s.actor for s in self._slots]

    def start(self) -> None:
        """Connect to (or start) Ray and create the actors; waits until every model replica is loaded."""
        import ray

        if self._started:
            return
        self._started = True
        try:
            if not ray.is_initialized():
                self._temp_dir = init_ray(self.address, self.requested_workers, self.temp_root, self.object_store_memory)
                self._own_ray = True
            self.resources = plan_resources(self.requested_workers, self.gpus_per_worker, self.requested_device)
            self._actor_cls = ray.remote(self.scorer_cls)
            self._needle_refs = {name: ray.put(ns) for name, ns in self._needle_sets.items()}
            self._slots = [_Slot(i) for i in range(self.resources.workers)]
            starts = [Starting.of(slot.label, self._new_actor(slot)) for slot in self._slots]
            for start, logs in wait_started(starts, self.startup_timeout, self.resources):
                forward_logs(logs, start.label)
            self._t_start = time.perf_counter()
        except BaseException:
            self.close()
            raise

    def _new_actor(self, slot: _Slot) -> Any:
        cuda = self.device == "cuda"
        slot.actor = self._actor_cls.options(**self.resources.options).remote(
            self.model,
            self.target_length,
            device="cuda" if cuda else "cpu",
            dtype=self.dtype if cuda else "float32",
            threads=self.resources.threads,
            shard=cuda and self.gpus_per_worker > 1,
            attn_implementation=self.attn_implementation,
            load=False,  # loaded by Starting.of: placement and loading are told apart
            label=slot.label,
            forward_logs=True,
            fault_spec=os.environ.get(faults.ENV),
        )
        for name, ref in self._needle_refs.items():
            slot.actor.set_needles.remote(name, ref)
        return slot.actor

    def close(self) -> None:
        """Kill the actors and, if this pool started Ray, shut it down and remove its temp dir."""
        import ray

        for slot in self._slots:
            if slot.actor is not None:
                try:
                    ray.kill(slot.actor, no_restart=True)
                except Exception:
                    pass
                slot.actor = None
        if self._own_ray:
            try:
                ray.shutdown()
            except Exception as e:  # never let shutdown mask the real error
                log.warning("ray.shutdown failed: %s", e)
            self._own_ray = False
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    # ------------------------------------------------------------ needles

    def set_needles(self, name: str, needle_set: Any) -> None:
        """Put a needle set in the object store once and hand it to every actor (and to replacements).

        Before the pool has started, the set is kept and sent when the actors are created.
        """
        import ray

        self._needle_sets[name] = needle_set
        if not self._started:
            return
        ref = ray.put(needle_set)
        self._needle_refs[name] = ref
        # a replacement still starting gets it too (its calls run in order once it is up), but is not waited for:
        # it may never start (its node lost)
        done = [r for s in self._slots for r in [s.actor.set_needles.remote(name, ref)] if s.starting is None]
        try:
            ray.get(done)
        except _death_errors():
            pass  # a dead worker is replaced (and given the needles) when it is next used

    # ------------------------------------------------------------ scoring

    def map_unordered(self, tasks: Iterable[ScoreTask]) -> Iterator[ScoreOutcome]:
        """Score every task; yield outcomes as they complete. A free worker gets the next piece of work at once."""
        import ray

        tasks = list(tasks)
        if not self._started and tasks:
            self.start()
        batch = _Round(self, [self._job(t, i) for i, t in enumerate(tasks)])
        try:
            while batch.pending():
                batch.dispatch()
                if batch.pending() and not batch.inflight and not batch.idle:
                    self._check_starting()  # every worker is a replacement still loading the model
                ready, _ = ray.wait(batch.waiting(), num_returns=1, timeout=self._poll_interval())
                outcomes = batch.timeouts(set(ready))
                for ref in ready:
                    outcome = batch.collect(ref)
                    if outcome is not None:
                        outcomes.append(outcome)
                batch.dispatch()  # hand out work before the caller spends time on the results
                for o in outcomes:
                    self._completed += 1
                    yield o
        finally:
            batch.abandon()  # interrupted or abandoned: cancel what has not started; the rest ends on its own

    def _job(self, task: ScoreTask, order: int) -> Job:
        ns = self._needle_sets.get(task.needles)
        if isinstance(ns, NeedleMix):  # several lengths race shortest first, whole; one length is its set
            ns = ns.parts[0] if len(ns.parts) == 1 else None
        if not self.split or ns is None or len(self._slots) < 2:
            return Job(task, order)
        n = len(ns.samples)
        return Job(task, order, piece_spans(n, ns.length, math.isfinite(task.bar), self.device), n)

    def score_all(self, tasks: Sequence[ScoreTask]) -> dict[Any, ScoreOutcome]:
        """Score a batch and return the outcomes by their task's reference."""
        return {o.ref: o for o in self.map_unordered(tasks)}

    def stats(self) -> PoolStats:
        wall = time.perf_counter() - self._t_start if self._t_start else 0.0
        busy = self._busy + sum(time.perf_counter() - s.busy_since for s in self._slots if s.busy_since)
        return PoolStats(len(self._slots), busy, wall, self._completed, self._failures, self._replacements)

    def reset_stats(self) -> None:
        self._busy, self._completed, self._failures, self._replacements = 0.0, 0, 0, 0
        self._t_start = time.perf_counter()

    # ------------------------------------------------------------ failures

    def _poll_interval(self) -> float | None:
        return min(1.0, max(self.task_timeout / 2, 1e-3)) if self.task_timeout else 5.0

    def _replace(self, slot: _Slot, why: str = "died") -> None:
        """A new actor for a lost or faulty one's slot, or, when the cluster lost the room for it (a node gone),
        no slot: the pool goes on with the workers it has, and fails only when none is left."""
        import ray

        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:
            pass
        others = [s for s in self._slots if s is not slot]
        slot.leftover = None
        if len(others) + 1 > capacity(self.resources):
            self._slots, slot.actor = others, None
            self._retired += 1
            log.warning(
                "worker %s %s and the cluster has no room for a replacement: going on with %d worker(s)", slot.label, why, len(others)
            )
            if not others:
                raise RunError(
                    "every worker was lost and the cluster has no room for a new one (a node gone?): "
                    "add resources to the cluster, then resume the run with --resume"
                )
            return
        log.warning("worker %s %s; replacing it", slot.label, why)
        slot.generation += 1
        self._replacements += 1
        # it gets tasks once its model is loaded: a replacement the cluster cannot place (its node lost and the
        # loss not yet known) must not hold a task while the other workers go on
        slot.start = Starting.of(slot.label, self._new_actor(slot))

    def _check_starting(self) -> None:
        """Every worker is a replacement still starting: fail once the oldest has waited past the startup timeout."""
        starting = [s.start for s in self._slots if s.start is not None]
        if starting and time.perf_counter() - min(s.since for s in starting) > self.startup_timeout:
            why = not_started(starting, self.resources, self.startup_timeout)
            raise RunError(f"every worker was lost and no replacement started: {why}; then resume the run with --resume")

    def _lost(self, slot: _Slot, job: Job, piece: int, attempt: int, reason: str, why: str = "died") -> ScoreOutcome | None:
        """A piece's worker died or failed for its own reasons: replace it and run the piece again (or, after
        ``max_attempts``, fail it)."""
        self._replace(slot, why)
        if attempt < self.max_attempts:
            job.retry(piece)
            return None
        self._failures += 1
        lost = (
            f"worker died {attempt} times evaluating it (last: {reason})"
            if why == "died"
            else f"{attempt} workers failed on it (last: {reason})"
        )
        return job.take(piece, ScoreOutcome.failure(lost, worker=slot.label, attempts=attempt))

    def _abandon(self, ref: Any, slot: Any, now: float) -> None:
        """Stop waiting for ``ref``: count the slot's busy time so far and cancel the task (best effort)."""
        import ray

        if slot.busy_since is not None:
            self._busy += now - slot.busy_since
            slot.busy_since = None
        try:
            ray.cancel(ref)
        except Exception:
            pass


def capacity(resources: Resources) -> int:
    """How many actors of this shape the cluster can hold now (its total resources: a lost node's are gone)."""
    import ray

    try:
        total = ray.cluster_resources()
    except Exception:
        return resources.workers
    gpus = float(resources.options.get("num_gpus") or 0)
    if gpus:
        return int(float(total.get("GPU", 0)) // gpus)
    return int(float(total.get("CPU", 0)) // (float(resources.options.get("num_cpus") or 1)))


class _Round:
    """The dispatch state of one :meth:`WorkerPool.map_unordered` call: its jobs (:class:`~longsearch.dispatch.Job`:
    a task, whole or in pieces), the pieces running (by Ray ref), and the idle workers. A worker's death, a
    timeout or a worker's own fault (:attr:`ScoreOutcome.fault`: a device error) goes through the pool
    (:meth:`WorkerPool._lost`), which replaces the worker and puts the piece back, or fails it after
    ``max_attempts``; the scorer in the actor turns an exception of the candidate into a failed result."""

    def __init__(self, pool: WorkerPool, jobs: list[Job]) -> None:
        self.pool, self.jobs = pool, jobs
        self.inflight: dict[Any, tuple[_Slot, Job, int, int]] = {}
        self.idle: deque[_Slot] = deque(s for s in pool._slots if s.blocking is None)
        self.deaths = _death_errors()
        self.deaths_in_a_row = 0

    def pending(self) -> bool:
        return any(not j.done for j in self.jobs)

    def dispatch(self) -> None:
        while self.idle:
            job = next_job(self.jobs)
            if job is None:
                return
            slot = self.idle.popleft()
            piece, task, attempt = job.next_piece()
            ref = slot.actor.score.remote(task)
            slot.busy_since = time.perf_counter()
            self.inflight[ref] = (slot, job, piece, attempt)

    def waiting(self) -> list[Any]:
        """What to wait for: running pieces, replacements still loading the model, pieces left by a past round."""
        return list(self.inflight) + [s.blocking for s in self.pool._slots if s.blocking is not None]

    def collect(self, ref: Any) -> ScoreOutcome | None:
        """A finished ref: a task's outcome once decided (None while it is not, or when a piece goes back to the
        queue), or a replacement that started, or a past round's piece that ended."""
        import ray

        if ref not in self.inflight:
            self._freed(ref)
            return None
        pool = self.pool
        slot, job, piece, attempt = self.inflight.pop(ref)
        pool._busy += time.perf_counter() - (slot.busy_since or time.perf_counter())
        slot.busy_since = None
        try:
            outcome: ScoreOutcome = ray.get(ref)
        except self.deaths as e:
            return self._lost(slot, job, piece, attempt, root_message(e), "died")
        except Exception as e:  # the task raised outside the scorer's own guard
            outcome = ScoreOutcome.failure(root_message(e))
        forward_logs(outcome.logs, slot.label)
        outcome.worker, outcome.attempts, outcome.logs = slot.label, attempt, []
        if outcome.fault:  # a device error (or another of the worker's own): it must not take the next task
            return self._lost(slot, job, piece, attempt, outcome.error or outcome.fault, f"failed with a {outcome.fault} error")
        self.deaths_in_a_row = 0
        self.idle.append(slot)
        return job.take(piece, outcome)

    def _lost(self, slot: _Slot, job: Job, piece: int, attempt: int, reason: str, why: str) -> ScoreOutcome | None:
        pool = self.pool
        self.deaths_in_a_row += 1
        if self.deaths_in_a_row > pool.max_attempts * len(pool._slots) + 1:
            raise RunError(
                f"workers keep dying or failing without finishing any evaluation (last: {reason}): check the model, the "
                "devices and the memory of the machines"
            ) from None
        return pool._lost(slot, job, piece, attempt, reason, why)

    def _freed(self, ref: Any) -> None:
        import ray

        slot = next((s for s in self.pool._slots if s.blocking is ref), None)
        if slot is None:
            return
        loading, slot.start, slot.leftover = slot.start, None, None
        try:
            logs = ray.get(ref)
            if loading is not None:
                forward_logs(logs, slot.label)
            self.idle.append(slot)
        except Exception as e:  # the replacement died loading the model (or a past piece's worker died): another one
            log.warning("worker %s %s (%s)", slot.label, "did not start" if loading else "died", root_message(e))
            self.pool._replace(slot)

    def timeouts(self, ready: set) -> list[ScoreOutcome]:
        """Pieces running past the pool's ``task_timeout``: abandoned and handled as their worker's death."""
        pool = self.pool
        failed: list[ScoreOutcome] = []
        if not pool.task_timeout:
            return failed
        now = time.perf_counter()
        for ref, (slot, job, piece, attempt) in list(self.inflight.items()):
            if ref not in ready and slot.busy_since is not None and now - slot.busy_since > pool.task_timeout:
                self.inflight.pop(ref)
                pool._abandon(ref, slot, now)
                outcome = pool._lost(slot, job, piece, attempt, f"no result within {pool.task_timeout:g} s")
                if outcome is not None:
                    failed.append(outcome)
        return failed

    def abandon(self) -> None:
        """The round ends: a piece still running whose task is decided is left to end (its worker takes no task of
        the next round before); any other is cancelled (interrupted)."""
        now = time.perf_counter()
        for ref, (slot, job, _, _) in list(self.inflight.items()):
            if job.done:
                slot.leftover = ref
                self.pool._busy += now - (slot.busy_since or now)
                slot.busy_since = None
            else:
                self.pool._abandon(ref, slot, now)
        self.inflight.clear()


RAY_TOKEN_FILE = "~/.ray/auth_token"


def ray_token_source() -> str | None:
    """Where Ray would read a cluster token from (its documented order), or None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and os.path.isfile(os.path.expanduser(path)):
        return path
    default = os.path.expanduser(RAY_TOKEN_FILE)
    if os.path.isfile(default):
        return default
    return None


def _address_host(address: str) -> str:
    rest = address.split("://", 1)[-1]
    if rest.startswith("["):  # [IPv6]:port
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


def is_this_machine(address: str) -> bool:
    """Whether a cluster address names this machine (an address one of its interfaces holds)."""
    import socket

    host = _address_host(address)
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.bind((sockaddr[0], 0))  # only an address of this machine can be bound
            return True
        except OSError:
            continue
    return False


def use_ray_token(address: str) -> str | None:
    """Joining a cluster: clusters started with ``ray start --head`` (Ray ≥ 2.59) require token authentication
    whenever a token exists on their machine (any earlier ``ray.init()`` makes one), and a client sends a token
    only with ``RAY_AUTH_MODE=token`` (a cluster without authentication accepts such a client as well); Ray
    itself never turns that on for an explicit address, so as not to send a token to a cluster it was not made for. longsearch turns it on only
    for a cluster on this machine — whose token is this machine's own (``~/.ray/auth_token``) — when the mode
    is unset and a token exists. Anywhere else, set ``RAY_AUTH_MODE=token`` yourself.
    Returns the token's source when it is used."""
    source = ray_token_source()
    if source is None or os.environ.get("RAY_AUTH_MODE") or not is_this_machine(address):
        return None
    try:  # what Ray does for a local cluster it finds itself: the mode for this process and its children
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()
    except Exception:  # another Ray: the environment variable is the documented switch
        os.environ["RAY_AUTH_MODE"] = "token"
    log.info("Ray: a cluster on this machine; using its token from %s (RAY_AUTH_MODE=token)", source)
    return source


def ray_auth_hint() -> str:
    if (os.environ.get("RAY_AUTH_MODE") or "").lower() == "token":
        return (
            f"; the token sent was from {ray_token_source() or 'nowhere'}: it must be the cluster's own "
            f"(copy the head node's {RAY_TOKEN_FILE})"
        )
    return (
        f"; if the cluster uses token authentication (Ray ≥ 2.59 turns it on whenever a token exists), set "
        f"RAY_AUTH_MODE=token with its token in {RAY_TOKEN_FILE}, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
    )


def init_ray(address: str | None, workers: int | None, temp_root: str | None, object_store_memory: int | None) -> str | None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray with a temp dir under
    ``temp_root`` (returned: removed when the pool closes). Workers' raw output stays with Ray (their warnings
    reach this process's logging through the outcomes: :func:`~longsearch.executors.forward_logs`)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR)
    address = address or os.environ.get("RAY_ADDRESS")  # a cluster named the usual Ray way is joined too
    if address:
        use_ray_token(address)
        try:
            ray.init(address=address, **kwargs)
        except Exception as e:
            first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise RunError(f"cannot connect to the Ray cluster at {address} ({first}): check --address{ray_auth_hint()}") from None
        return None
    root = temp_root or "/tmp"
    _remove_stale_temp_dirs(root)
    temp_dir = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=root)
    with open(os.path.join(temp_dir, _OWNER_FILE), "w") as f:
        f.write(str(os.getpid()))
    cores = os.cpu_count() or 1
    try:
        ray.init(
            include_dashboard=False,
            num_cpus=max(cores, workers or 1),
            _temp_dir=temp_dir,
            object_store_memory=object_store_memory,
            **kwargs,
        )
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return temp_dir


_TEMP_PREFIX = "lsray-"
_OWNER_FILE = "longsearch-owner.pid"


def _remove_stale_temp_dirs(root: str) -> None:
    """Remove Ray temp dirs left by longsearch processes that were killed (SIGKILL skips every cleanup)."""
    try:
        names = [n for n in os.listdir(root) if n.startswith(_TEMP_PREFIX)]
    except OSError:
        return
    for name in names:
        path = os.path.join(root, name)
        try:
            with open(os.path.join(path, _OWNER_FILE)) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue  # not ours, or still being created
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


__all__ = ["PoolStats", "WorkerPool", "capacity", "check_pool_options", "init_ray"]
