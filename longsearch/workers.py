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

from .errors import InputError, RunError
from .executors import ScoreOutcome, Scorer, ScoreTask

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


def check_pool_options(workers: int | None, gpus_per_worker: float = 1.0, max_attempts: int = 3, task_timeout: float | None = None) -> None:
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


@dataclass
class _Slot:
    index: int
    actor: Any = None
    generation: int = 0  # how many times this slot's actor was replaced
    busy_since: float | None = None
    starting: Any = None  # a replacement's ready() ref until its model is loaded: no task goes to it before
    starting_since: float | None = None

    @property
    def label(self) -> str:
        return f"w{self.index}" + (f".{self.generation}" if self.generation else "")


class WorkerPool:
    """Ray actors scoring :class:`ScoreTask` s asynchronously. Use as a context manager."""

    def __init__(
        self,
        model: str | None,
        target_length: int,
        workers: int | None = None,
        address: str | None = None,
        *,
        gpus_per_worker: float = 1.0,
        dtype: str = "auto",
        max_attempts: int = 3,
        task_timeout: float | None = None,
        startup_timeout: float = 600.0,
        temp_root: str | None = None,
        object_store_memory: int | None = DEFAULT_OBJECT_STORE,
    ) -> None:
        check_pool_options(workers, gpus_per_worker, max_attempts, task_timeout)
        self.model = model
        self.target_length = int(target_length)
        self.requested_workers = workers
        self.address = address
        self.gpus_per_worker = gpus_per_worker
        self.dtype = dtype
        self.max_attempts = max_attempts
        self.task_timeout = task_timeout
        self.startup_timeout = startup_timeout
        self.temp_root = temp_root
        self.object_store_memory = object_store_memory
        self._own_ray = False
        self._temp_dir: str | None = None
        self._slots: list[_Slot] = []
        self._needle_refs: dict[str, Any] = {}
        self._needle_sets: dict[str, Any] = {}
        self._actor_cls: Any = None
        self._actor_options: dict[str, Any] = {}
        self._threads: int | None = None
        self.device = "cpu"
        self._busy = 0.0
        self._completed = 0
        self._failures = 0
        self._replacements = 0
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
                self._init_ray()
            self._plan_resources()
            self._actor_cls = ray.remote(Scorer)
            self._needle_refs = {name: ray.put(ns) for name, ns in self._needle_sets.items()}
            self._slots = [_Slot(i) for i in range(self._n_workers)]
            for slot in self._slots:
                slot.actor = self._new_actor()
            self._wait_ready([s.actor for s in self._slots])
            self._t_start = time.perf_counter()
        except BaseException:
            self.close()
            raise

    def _init_ray(self) -> None:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR)
        address = self.address or os.environ.get("RAY_ADDRESS")  # a cluster named the usual Ray way is joined too
        if address:
            use_ray_token(address)
            try:
                ray.init(address=address, **kwargs)
            except Exception as e:
                first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
                raise RunError(f"cannot connect to the Ray cluster at {address} ({first}): check --address{ray_auth_hint()}") from None
        else:
            root = self.temp_root or "/tmp"
            _remove_stale_temp_dirs(root)
            self._temp_dir = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=root)
            with open(os.path.join(self._temp_dir, _OWNER_FILE), "w") as f:
                f.write(str(os.getpid()))
            cores = os.cpu_count() or 1
            ray.init(
                include_dashboard=False,
                num_cpus=max(cores, self.requested_workers or 1),
                _temp_dir=self._temp_dir,
                object_store_memory=self.object_store_memory,
                **kwargs,
            )
        self._own_ray = True

    def _plan_resources(self) -> None:
        import ray

        res = ray.available_resources()  # what is free now (another job may share the cluster)
        gpus = float(res.get("GPU", 0))
        cpus = float(res.get("CPU", 0))
        if gpus >= self.gpus_per_worker > 0:
            capacity = int(gpus // self.gpus_per_worker)
            n = self.requested_workers or capacity
            if n > capacity:
                raise InputError(
                    f"--workers {n} needs {n * self.gpus_per_worker:g} GPUs but the cluster has {gpus:g}: ask for at most {capacity}"
                )
            self._n_workers = n
            self._actor_options = {"num_gpus": self.gpus_per_worker, "num_cpus": 1}
            self.device = "cuda"
            self._threads = None
        else:
            n = self.requested_workers or 1
            per = max(1, int(cpus // n))
            if n > cpus:
                hint = f"ask for at most {int(cpus)}" if cpus >= 1 else "wait for the other jobs on this Ray cluster to end"
                raise InputError(f"--workers {n} needs {n} CPUs but Ray has {cpus:g} free: {hint}")
            self._n_workers = n
            self._actor_options = {"num_cpus": per}
            self.device = "cpu"
            self._threads = per
        self._actor_options.update(max_restarts=0, max_task_retries=0)

    def _new_actor(self) -> Any:
        dtype = "float32" if self.device == "cpu" else self.dtype
        actor = self._actor_cls.options(**self._actor_options).remote(
            self.model,
            self.target_length,
            device="cuda" if self.device == "cuda" else "cpu",
            dtype=dtype,
            threads=self._threads,
            shard=self.device == "cuda" and self.gpus_per_worker > 1,
        )
        for name, ref in self._needle_refs.items():
            actor.set_needles.remote(name, ref)
        return actor

    def _wait_ready(self, actors: list[Any]) -> None:
        import ray

        refs = [a.ready.remote() for a in actors]
        try:
            ready, pending = ray.wait(refs, num_returns=len(refs), timeout=self.startup_timeout)
            if pending:
                raise RunError(
                    f"{len(pending)} of {len(refs)} workers did not start within {self.startup_timeout:g} s (not enough "
                    "free CPUs/GPUs in the cluster?): ask for fewer --workers"
                )
            ray.get(ready)
        except RunError:
            raise
        except Exception as e:
            raise RunError(f"a worker could not load the model: {_root_message(e)}") from None

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
        """Score every task; yield outcomes as they complete. A free worker gets the next task at once."""
        import ray

        if not self._started:
            tasks = list(tasks)
            if tasks:
                self.start()
        batch = _Round(self, tasks)
        try:
            while batch.queue or batch.inflight:
                batch.dispatch()
                if batch.queue and not batch.inflight and not batch.idle:
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

    def _capacity(self) -> int:
        """How many actors of this pool the cluster can hold now (its total resources: a lost node's are gone)."""
        import ray

        try:
            total = ray.cluster_resources()
        except Exception:
            return len(self._slots)
        if self.device == "cuda":
            return int(float(total.get("GPU", 0)) // self.gpus_per_worker)
        per = float(self._actor_options.get("num_cpus", 1)) or 1.0
        return int(float(total.get("CPU", 0)) // per)

    def _replace(self, slot: _Slot) -> None:
        """A new actor for a dead one's slot, or, when the cluster lost the room for it (a node gone), no slot:
        the pool goes on with the workers it has, and fails only when none is left."""
        import ray

        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:
            pass
        others = [s for s in self._slots if s is not slot]
        if len(others) + 1 > self._capacity():
            self._slots = others
            slot.actor = None
            self._retired += 1
            log.warning("worker %s lost and the cluster has no room for a replacement: going on with %d worker(s)", slot.label, len(others))
            if not others:
                raise RunError(
                    "every worker was lost and the cluster has no room for a new one (a node gone?): "
                    "add resources to the cluster, then resume the run with --resume"
                )
            return
        slot.generation += 1
        self._replacements += 1
        slot.actor = self._new_actor()
        # it gets tasks once its model is loaded: a replacement the cluster cannot place (its node lost and the
        # loss not yet known) must not hold a task while the other workers go on
        slot.starting = slot.actor.ready.remote()
        slot.starting_since = time.perf_counter()
        log.warning("worker %s died; replacing it", slot.label)

    def _check_starting(self) -> None:
        """Every worker is a replacement still starting: fail once the oldest has waited past the startup timeout."""
        since = [s.starting_since for s in self._slots if s.starting_since is not None]
        if since and time.perf_counter() - min(since) > self.startup_timeout:
            raise RunError(
                f"every worker was lost and no replacement started within {self.startup_timeout:g} s (not enough free "
                "CPUs/GPUs in the cluster?): add resources, then resume the run with --resume"
            )

    def _on_death(self, slot: _Slot, task: ScoreTask, attempt: int, queue: deque, reason: str) -> ScoreOutcome | None:
        self._replace(slot)
        if attempt < self.max_attempts:
            queue.appendleft((task, attempt + 1))
            return None
        self._failures += 1
        return ScoreOutcome.failure(
            f"worker died {attempt} times evaluating it (last: {reason})", ref=task.ref, worker=slot.label, attempts=attempt
        )

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


class _Round:
    """The dispatch state of one :meth:`WorkerPool.map_unordered` call: the tasks still to run (with their
    attempt number), those running (by Ray ref), and the idle workers. Failure handling for a task — a
    worker's death or a timeout — goes through the pool (:meth:`WorkerPool._on_death`), which replaces the
    worker and puts the task back at the front of this round's queue, or reports it failed after
    ``max_attempts``; the scorer in the actor turns an exception of the scoring itself into a failed result."""

    def __init__(self, pool: WorkerPool, tasks: Iterable[ScoreTask]) -> None:
        self.pool = pool
        self.queue: deque[tuple[ScoreTask, int]] = deque((t, 1) for t in tasks)
        self.inflight: dict[Any, tuple[_Slot, ScoreTask, int]] = {}
        self.idle: deque[_Slot] = deque(s for s in pool._slots if s.starting is None)
        self.deaths = _death_errors()
        self.deaths_in_a_row = 0

    def dispatch(self) -> None:
        while self.idle and self.queue:
            slot = self.idle.popleft()
            task, attempt = self.queue.popleft()
            ref = slot.actor.score.remote(task.for_worker())
            slot.busy_since = time.perf_counter()
            self.inflight[ref] = (slot, task, attempt)

    def waiting(self) -> list[Any]:
        """What to wait for: running tasks, and replacements still loading the model."""
        return list(self.inflight) + [s.starting for s in self.pool._slots if s.starting is not None]

    def collect(self, ref: Any) -> ScoreOutcome | None:
        """A finished ref: a task's outcome (None when it goes back to the queue), or a replacement that started."""
        import ray

        if ref not in self.inflight:
            self._started(ref)
            return None
        pool = self.pool
        slot, task, attempt = self.inflight.pop(ref)
        pool._busy += time.perf_counter() - (slot.busy_since or time.perf_counter())
        slot.busy_since = None
        try:
            outcome: ScoreOutcome = ray.get(ref)
        except self.deaths as e:
            reason = _root_message(e)
            self.deaths_in_a_row += 1
            if self.deaths_in_a_row > pool.max_attempts * len(pool._slots) + 1:
                raise RunError(
                    f"workers keep dying without finishing any evaluation (last: {reason}): check the model and the memory of the machines"
                ) from None
            return pool._on_death(slot, task, attempt, self.queue, reason)
        except Exception as e:  # the task raised outside the scorer's own guard
            outcome = ScoreOutcome.failure(_root_message(e))
        self.deaths_in_a_row = 0
        self.idle.append(slot)
        outcome.ref, outcome.worker, outcome.attempts = task.ref, slot.label, attempt
        return outcome

    def _started(self, ref: Any) -> None:
        import ray

        slot = next((s for s in self.pool._slots if s.starting is ref), None)
        if slot is None:
            return
        slot.starting = slot.starting_since = None
        try:
            ray.get(ref)
            self.idle.append(slot)
        except Exception as e:  # the replacement died loading the model: try another (or retire the slot)
            log.warning("replacement worker %s did not start (%s)", slot.label, _root_message(e))
            self.pool._replace(slot)

    def timeouts(self, ready: set) -> list[ScoreOutcome]:
        """Tasks running past the pool's ``task_timeout``: abandoned and handled as their worker's death."""
        pool = self.pool
        failed: list[ScoreOutcome] = []
        if not pool.task_timeout:
            return failed
        now = time.perf_counter()
        for ref, (slot, task, attempt) in list(self.inflight.items()):
            if ref not in ready and slot.busy_since is not None and now - slot.busy_since > pool.task_timeout:
                self.inflight.pop(ref)
                pool._abandon(ref, slot, now)
                outcome = pool._on_death(slot, task, attempt, self.queue, f"no result within {pool.task_timeout:g} s")
                if outcome is not None:
                    failed.append(outcome)
        return failed

    def abandon(self) -> None:
        now = time.perf_counter()
        for ref, (slot, _, _) in list(self.inflight.items()):
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


def _root_message(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e.__cause__
    text = str(cause or e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Ray puts the remote traceback first; the last line is the exception itself
    for ln in reversed(lines):
        if not ln.startswith(("File ", "Traceback", "^", "~")):
            return ln[:300]
    return type(e).__name__


__all__ = ["PoolStats", "WorkerPool"]
