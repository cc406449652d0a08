"""Map a function over shards (or any picklable work items): in-process, threads, or Dask distributed.

One call, :func:`map_shards`, runs the shard-level work of a stage (prediction
windows, vectorizing shards) wherever the user says:

* **in-process** (no scheduler, one worker: the default, and what the DVC
  stages do): a plain loop in the calling thread;
* ``"threads"``: a thread pool of ``workers`` threads in this process;
* ``"local"``: a Dask :class:`~distributed.LocalCluster` of ``workers``
  processes (default: one per CPU core) with one thread each, started for
  the call and closed after it; asking for more than one worker without a
  scheduler means the same;
* ``"tcp://host:8786"`` (any ``scheme://`` address): the Dask scheduler of a
  real cluster (``dask scheduler``, dask-jobqueue, Kubernetes); see
  docs/cluster.md.

The scheduler comes from the argument, else from the environment variable
:data:`ENV` (``NAVML_DASK_SCHEDULER``), so ``NAVML_DASK_SCHEDULER=local dvc
repro`` runs the stages on a local cluster without touching params.yaml (where
the work runs never changes what it writes).

Results come back **in input order** whatever the order the tasks finish in,
with at most ``in_flight`` tasks submitted ahead (default: twice the workers),
so the caller assembles and writes exactly as a serial loop would: the same
bytes, and memory bounded by a few shards, not by the area. Tasks get plain
picklable arguments (paths, tiles, frozen dataclasses) and open rasterio
datasets by path inside the task, so no GDAL handle is shared between threads
or processes. ``shared`` (a model's bytes, say) is sent to each worker once
and handed to every call as its second argument; :func:`worker_cached` keeps
what a worker builds from it (a loaded model) for the worker's lifetime.

With Dask, the dashboard link is printed to stderr at the start; progress is a
tqdm bar over the results in every mode.

A worker that dies (killed, out of memory, a crash in native code) is not a
traceback and never a hang: Dask retries its task on another worker up to
``distributed.scheduler.allowed-failures`` times (3), then the run stops with
one :class:`WorkerDiedError` line; a cluster left without any worker for
:data:`NO_WORKERS_S` seconds, or a lost scheduler, is a :class:`SchedulerError`.
The CLI turns both into ``navml: error: ...`` and exit code 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from tqdm import tqdm

from navml.errors import ConfigError, NavmlError

#: Environment variable naming the scheduler when no ``--scheduler`` is given.
ENV = "NAVML_DASK_SCHEDULER"
#: Scheduler names besides an address (``None``: in-process).
NAMES = ("threads", "local")
#: Seconds tasks may wait on a cluster without a single worker before the run fails
#: (environment: ``NAVML_DASK_NO_WORKERS_S``).
NO_WORKERS_S = 60.0
#: Seconds between two checks of the cluster while a result is awaited.
POLL_S = 2.0

T = TypeVar("T")
R = TypeVar("R")


class SchedulerError(NavmlError):
    """The Dask scheduler cannot be reached, started, or was lost; or the cluster has no worker left."""


class WorkerDiedError(SchedulerError):
    """A Dask worker died (killed, out of memory, crashed) running a task, on every try Dask allows."""


@dataclass(frozen=True)
class Plan:
    """Where :func:`map_shards` runs: ``mode`` is ``serial``, ``threads``, ``local`` or ``address``.

    ``local`` with an ``address``: a cluster of workers on this machine that is already running
    (:func:`session`, a benchmark's own LocalCluster): connected to, not started, and its workers
    share this machine's disk.
    """

    mode: str
    workers: int
    address: str | None = None

    @property
    def serial(self) -> bool:
        """Whether the work runs in the calling thread, in order."""
        return self.mode == "serial"

    @property
    def distributed(self) -> bool:
        """Whether the work runs in other processes (Dask): arguments must pickle."""
        return self.mode in ("local", "address")


def resolve_scheduler(scheduler: str | Plan | None = None, workers: int | None = None) -> Plan:
    """The :class:`Plan` of a ``--scheduler`` / ``--workers`` pair (``None``: :data:`ENV`, then in-process).

    ``workers`` is the number of threads (``threads``) or worker processes
    (``local``; default one per CPU core); it is ignored with an address (the
    cluster has the workers it has). Raises :class:`ConfigError` on a name
    that is neither ``threads``, ``local`` nor a ``scheme://`` address, or on
    ``workers < 1``.
    """
    if isinstance(scheduler, Plan):
        return scheduler
    if workers is not None and int(workers) < 1:
        raise ConfigError(f"--workers is {workers}; it must be at least 1")
    if scheduler is None or scheduler == "":
        scheduler = os.environ.get(ENV) or None
    cores = os.cpu_count() or 1
    if scheduler is None:
        if workers is None or int(workers) == 1:
            return Plan("serial", 1)
        return Plan("local", int(workers))
    name = str(scheduler).strip()
    if name == "threads":
        return Plan("threads", int(workers or cores))
    if name == "local":
        return Plan("local", int(workers or cores))
    if "://" in name and name.split("://", 1)[1]:
        return Plan("address", int(workers or 0), name)
    raise ConfigError(
        f"scheduler '{name}' (--scheduler or {ENV}) is not threads, local or a Dask scheduler address such as tcp://host:8786"
    )


def writes_on_workers(plan: Plan, root: str | os.PathLike) -> bool:
    """Whether a task may write its shard to the store at ``root`` itself, rather than send it back to be written here.

    True in this process, on a local cluster (the same disk) and for a store on S3;
    False for a folder with a scheduler address: the cluster's workers need not share
    this machine's disk (the shard's pixels then travel back to the client).
    """
    from navml.geo.store import is_remote

    return plan.mode != "address" or is_remote(root)


@contextlib.contextmanager
def session(plan: str | Plan | None = None, workers: int | None = None) -> Iterator[Plan]:
    """One Dask cluster for several :func:`map_shards` calls (a stage with two phases, say).

    A ``local`` plan starts its LocalCluster here, for the block, and yields a plan that connects
    to it (each map would otherwise start a cluster of its own, seconds each); any other plan is
    yielded as it is.
    """
    plan = resolve_scheduler(plan, workers)
    if plan.mode != "local" or plan.address:
        yield plan
        return
    with _local_cluster(plan) as cluster:
        yield Plan("local", plan.workers, cluster.scheduler_address)


@contextlib.contextmanager
def _local_cluster(plan: Plan) -> Iterator[Any]:
    """A LocalCluster of ``plan.workers`` single-threaded worker processes, closed on exit."""
    from distributed import LocalCluster

    try:
        with warnings.catch_warnings():  # "Port 8787 is already in use": the dashboard takes another, printed below
            warnings.simplefilter("ignore", UserWarning)
            cluster = LocalCluster(n_workers=plan.workers, threads_per_worker=1, processes=True, env=thread_env(plan.workers),
                                   silence_logs=logging.CRITICAL)  # navml reports what went wrong, in one line
    except (OSError, RuntimeError, TimeoutError) as exc:
        raise SchedulerError(f"cannot start a local Dask cluster of {plan.workers} workers ({_first_line(exc)})") from exc
    with cluster:
        yield cluster


_CACHE: dict[Any, Any] = {}
_CACHE_LOCK = threading.Lock()


def worker_cached(key: Any, make: Callable[[], T]) -> T:
    """``make()`` once per process and ``key`` (a loaded model, say); later calls with ``key`` return the same object.

    Thread-safe: threads asking for the same key while it is made wait for it.
    """
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = make()
        return _CACHE[key]


def thread_env(workers: int, cores: int | None = None) -> dict[str, str]:
    """Environment of a local worker process: its share of the cores for OpenMP, BLAS and OpenCV threads.

    TensorFlow's threads per op are not set here: a prediction task sets them to
    the client's count (:func:`navml.models.inference.pin_tf_threads`), on which the output bytes depend.
    """
    n = str(max(1, (cores or os.cpu_count() or 1) // max(1, workers)))
    return {
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "OPENCV_FOR_THREADS_NUM": n,  # OpenCV's own thread pool (morphology, resizing)
        "TF_NUM_INTEROP_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }


def map_shards(
    fn: Callable[..., R],
    items: Iterable[T],
    *,
    scheduler: str | Plan | None = None,
    workers: int | None = None,
    desc: str = "shards",
    unit: str = "shard",
    weights: Sequence[int] | None = None,
    shared: Any = None,
    in_flight: int | None = None,
    progress: bool = True,
    stop: Callable[[], None] | None = None,
) -> Iterator[R]:
    """``fn(item)`` (or ``fn(item, shared)`` when ``shared`` is given) for each item, results in input order.

    ``scheduler`` / ``workers``: see :func:`resolve_scheduler`. ``weights``
    (one per item) advance the progress bar by that many ``unit`` per result
    (tiles per window, say). ``in_flight`` bounds the tasks submitted ahead of
    the result being consumed (default ``2 * workers``, at least 2). A failing
    task raises its exception here (a :class:`~navml.errors.NavmlError` keeps
    its one-line message) and the tasks not yet done are cancelled. ``stop``
    (threads only) is called first when the map ends early (an error, Ctrl-C),
    before the running tasks are waited for: it ends what they wait on (downloads).
    A generator: the cluster lives while it is iterated and closes when it ends
    or is closed.
    """
    plan = resolve_scheduler(scheduler, workers)
    items = items if isinstance(items, Sequence) else list(items)  # a lazy Sequence stays lazy
    if weights is not None and len(weights) != len(items):
        raise ValueError(f"map_shards: {len(weights)} weights for {len(items)} items")
    total = sum(weights) if weights is not None else len(items)
    with tqdm(total=total, desc=desc, unit=unit, disable=None if progress else True) as bar:
        if plan.serial:
            results: Iterator[R] = (fn(item) if shared is None else fn(item, shared) for item in items)
        elif plan.mode == "threads":
            results = _threads(fn, items, plan, shared, in_flight, stop)
        else:
            results = _dask(fn, items, plan, shared, in_flight, desc)
        with contextlib.closing(results):  # a generator: closing it shuts the pool or the cluster down
            for i, result in enumerate(results):
                bar.update(weights[i] if weights is not None else 1)
                yield result


def _ordered(submit: Callable[[T], Any], wait: Callable[[Any], R], cancel: Callable[[Any], None], items: Sequence[T], ahead: int) -> Iterator[R]:
    """Submit at most ``ahead`` items beyond the one awaited; yield results in input order; cancel the rest on exit."""
    pending: deque = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(submit(item))
            if len(pending) >= ahead:
                break
        while pending:
            result = wait(pending.popleft())
            for item in it:
                pending.append(submit(item))
                break
            yield result
    finally:
        for fut in pending:
            cancel(fut)


def _threads(fn, items, plan: Plan, shared, in_flight, stop=None) -> Iterator:
    ahead = max(2, in_flight or 2 * plan.workers)
    with ThreadPoolExecutor(plan.workers, thread_name_prefix="navml-map") as pool:
        args = () if shared is None else (shared,)
        try:
            yield from _ordered(lambda item: pool.submit(fn, item, *args), lambda f: f.result(), lambda f: f.cancel(), items, ahead)
        except BaseException:  # GeneratorExit included: the consumer stopped early
            if stop is not None:
                stop()
            raise


@contextlib.contextmanager
def dask_client(plan: Plan, desc: str = "navml") -> Iterator[Any]:
    """A ``distributed.Client`` for ``plan`` (``local``: a LocalCluster started here, closed on exit); prints the dashboard link."""
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise SchedulerError(f"Dask distributed is not installed ({exc}); pip install 'dask[distributed]'") from exc
    with contextlib.ExitStack() as stack:
        if plan.mode == "local" and not plan.address:
            cluster = stack.enter_context(_local_cluster(plan))
            client = stack.enter_context(Client(cluster))
            where = f"local cluster of {plan.workers} workers"
        else:
            try:
                # waits up to Dask's distributed.comm.timeouts.connect (30 s; DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT)
                client = stack.enter_context(Client(plan.address))
            except (OSError, TimeoutError) as exc:
                raise SchedulerError(
                    f"cannot reach the Dask scheduler {plan.address} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                    f"start one (`dask scheduler`) or fix --scheduler / {ENV}"
                ) from exc
            n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            where = f"{plan.address} ({n} workers now)"
        print(f"{desc}: Dask on {where}; dashboard {client.dashboard_link}", file=sys.stderr, flush=True)
        yield client


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _n_workers(client) -> int:
    return len(client.scheduler_info(n_workers=-1).get("workers", {}))


def _no_workers_s() -> float:
    try:
        return float(os.environ.get("NAVML_DASK_NO_WORKERS_S", NO_WORKERS_S))
    except ValueError:
        return NO_WORKERS_S


def _dask(fn, items, plan: Plan, shared, in_flight, desc) -> Iterator:
    from distributed import KilledWorker

    where = plan.address if plan.mode == "address" else f"local cluster of {plan.workers} workers"
    lost = f"start it again (or fix --scheduler / {ENV}) and re-run; finished outputs are kept, this layer was not written"

    def scheduler_lost(exc: BaseException) -> SchedulerError:
        return SchedulerError(f"{desc}: lost the Dask scheduler {where} ({_first_line(exc)}); {lost}")

    with dask_client(plan, desc) as client:
        try:
            workers = plan.workers if plan.mode == "local" else max(1, _n_workers(client))
            # waits up to the no-workers limit for a first worker; then the model (say) is on every worker
            args = () if shared is None else (client.scatter(shared, broadcast=True, hash=False, timeout=_no_workers_s()),)
        except (OSError, TimeoutError, CancelledError) as exc:
            if isinstance(exc, TimeoutError) and "No valid workers" in str(exc):
                raise SchedulerError(f"{desc}: the Dask cluster {where} has no worker; start some (`dask worker {where}`)") from exc
            raise scheduler_lost(exc) from exc
        ahead = max(2, in_flight or 2 * workers)
        index = {}

        def submit(item):
            try:
                fut = client.submit(fn, item, *args, pure=False)
            except (OSError, CancelledError) as exc:
                raise scheduler_lost(exc) from exc
            index[fut.key] = len(index)
            return fut

        def wait(fut):
            """The task's result; its own exception as it is; a dead worker, a lost scheduler or no worker left: one line."""
            empty_since = None
            while True:
                try:
                    return fut.result(timeout=POLL_S)
                except KilledWorker as exc:
                    i = index.get(fut.key, 0)
                    tries = exc.allowed_failures + 1
                    last = getattr(exc.last_worker, "address", exc.last_worker)
                    raise WorkerDiedError(
                        f"{desc}: a Dask worker died running task {i + 1} of {len(items)} ({tries} {'try' if tries == 1 else 'tries'}, "
                        f"the last on {last}): killed, out of memory or crashed; see that worker's log, give the workers more "
                        "memory (a task holds about one shard) or run fewer per machine"
                    ) from None
                except Exception as exc:
                    if fut.status == "error":
                        raise  # the task's own error (a NavmlError keeps its class and its line)
                    if not (isinstance(exc, TimeoutError) and fut.status in ("pending", "lost")):
                        raise scheduler_lost(exc) from exc
                # still running: is anyone left to run it?
                try:
                    n = _n_workers(client)
                except (OSError, TimeoutError, CancelledError) as exc:
                    raise scheduler_lost(exc) from exc
                if n:
                    empty_since = None
                    continue
                now = time.monotonic()
                empty_since = empty_since or now
                if now - empty_since >= _no_workers_s():
                    raise SchedulerError(
                        f"{desc}: the Dask cluster {where} has had no worker for {now - empty_since:.0f} s (all died or left); "
                        "start workers and re-run"
                    )

        yield from _ordered(submit, wait, lambda f: f.cancel(), items, ahead)
