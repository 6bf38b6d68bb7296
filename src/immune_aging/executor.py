"""The one executor for the stages' parallel work: ordered maps over processes or a cluster.

Work that splits into independent jobs (Scrublet per donor, DESeq2, GSEA and the
age prediction per cell type) runs through :func:`map_ordered`. Where the jobs
run is chosen by the environment, like the thread count, never by a tracked
parameter, so switching invalidates nothing in DVC:

==============================  ============================================
``IMMUNE_AGING_SCHEDULER``      jobs run on
==============================  ============================================
unset or empty                  spawned local processes (``n_jobs`` of them;
                                one job at a time in this process when 1)
``tcp://host:port``             the workers of a running ``dask.distributed``
(or ``tls://host:port``)        scheduler at that address
``local:N``                     a Dask ``LocalCluster`` of N single-threaded
                                worker processes, started for the map and
                                closed at its end
==============================  ============================================

Results come back in job order whichever runs them, so outputs never depend on
it. Jobs are drawn lazily with at most ``2 * n_jobs`` (on Dask: twice the
cluster's worker threads) in flight, so only a few jobs' inputs exist as copies
at any time. A progress line is logged as jobs finish (count and elapsed time),
so a long stage never runs in silence.

Local processes are spawned (forking is unsafe once OpenMP or numba threads
exist) and inherit this process's environment, numeric pins included
(:mod:`immune_aging.determinism`); so do the workers of ``local:N``. Workers of a
remote scheduler must be started with the same pins: every Dask task checks its
worker's environment first and refuses to run without them. A Dask worker that
dies during a task (killed, out of memory) has the task run again on another
one, up to ``distributed.scheduler.allowed-failures`` times; past that the map
fails with one line.

A job that itself calls :func:`map_ordered` (Scrublet's groups inside a batch of
cells that a worker reads) runs that inner map in its own process, one job after
the other: a worker never starts a cluster or processes of its own.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import multiprocessing
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from immune_aging import determinism
from immune_aging.errors import InputError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Seconds between two progress lines at most (a line is also logged at the end).
PROGRESS_EVERY_S = 10.0
_NO_JOB = object()
#: The environment variable that chooses where jobs run.
SCHEDULER_VAR = "IMMUNE_AGING_SCHEDULER"
#: ``in_task`` is True in a thread that runs a Dask job (:func:`run_task`).
_TASK = threading.local()
_EXPECTED = (
    "expected 'tcp://HOST:PORT' (a running Dask scheduler) or 'local:N' "
    "(a Dask cluster of N worker processes on this machine)"
)
_ADDRESS = re.compile(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


@dataclass(frozen=True)
class Scheduler:
    """Where :func:`map_ordered` sends its jobs, parsed from :data:`SCHEDULER_VAR`.

    Parameters
    ----------
    raw
        The variable's value, for messages.
    address
        A scheduler address (``tcp://host:port``), or ``None`` for a local cluster.
    n_workers
        Worker processes of the local cluster (0 with an address).
    """

    raw: str
    address: str | None = None
    n_workers: int = 0

    def describe(self) -> str:
        """Return ``IMMUNE_AGING_SCHEDULER='...'``, the prefix of this scheduler's messages."""
        return f"{SCHEDULER_VAR}={self.raw!r}"


def scheduler(environ: Mapping[str, str] | None = None) -> Scheduler | None:
    """Return the Dask scheduler the environment asks for, or ``None`` for local processes.

    Parameters
    ----------
    environ
        The environment (default: ``os.environ``).

    Returns
    -------
    Scheduler or None
        ``None`` when :data:`SCHEDULER_VAR` is unset or empty.

    Raises
    ------
    InputError
        If the value is neither ``tcp://HOST:PORT``, ``tls://HOST:PORT`` nor
        ``local:N`` with N a positive integer.
    """
    raw = (os.environ if environ is None else environ).get(SCHEDULER_VAR, "").strip()
    if not raw:
        return None
    if raw.startswith("local:"):
        count = raw.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"{SCHEDULER_VAR}={raw!r}: N must be a positive integer; {_EXPECTED}")
        return Scheduler(raw, n_workers=int(count))
    match = _ADDRESS.fullmatch(raw)
    if match is None:
        raise InputError(f"{SCHEDULER_VAR}={raw!r}: {_EXPECTED}")
    if not 0 < int(match.group(3)) < 65536:
        raise InputError(f"{SCHEDULER_VAR}={raw!r}: port out of range; {_EXPECTED}")
    return Scheduler(raw, address=raw)


class Progress:
    """Log ``label: i of n done, elapsed`` at most every :data:`PROGRESS_EVERY_S`, and at the end.

    Parameters
    ----------
    label
        What is counted (nothing is logged when empty).
    total
        How many there are, when known.
    """

    def __init__(self, label: str, total: int | None = None) -> None:
        self.label, self.total = label, total
        self.done = 0
        self.start = self.last = time.perf_counter()

    def step(self, n: int = 1) -> None:
        """Count ``n`` more done and log when it is time."""
        self.done += n
        now = time.perf_counter()
        if self.label and (now - self.last >= PROGRESS_EVERY_S or self.done == self.total):
            of = f" of {self.total}" if self.total is not None else ""
            log.info("%s: %d%s done, %.0f s", self.label, self.done, of, now - self.start)
            self.last = now


def map_ordered(
    fn: Callable[[T], R],
    jobs: Iterable[T],
    n_jobs: int = 1,
    *,
    label: str = "",
    total: int | None = None,
) -> list[R]:
    """Return ``[fn(job) for job in jobs]``, in job order, over processes or a Dask cluster.

    Parameters
    ----------
    fn
        A picklable function of one argument, defined in a module of
        :mod:`immune_aging` (so that workers import the package, and its numeric
        pins, with it).
    jobs
        The jobs; drawn lazily.
    n_jobs
        Local worker processes; 1 (or fewer) runs in this process. Under a Dask
        scheduler (:data:`SCHEDULER_VAR`) every job runs on the cluster's workers
        whatever ``n_jobs``.
    label
        Names the work in progress lines (no progress is logged when empty).
    total
        Number of jobs, for progress lines (``len(jobs)`` when it has one).

    Returns
    -------
    list
        The results, in the order of ``jobs``.

    Raises
    ------
    InputError
        If :data:`SCHEDULER_VAR` is invalid, its scheduler cannot be reached, a
        worker lacks the numeric pins, or a job's workers kept dying.
    """
    return list(imap_ordered(fn, jobs, n_jobs, label=label, total=total))


def imap_ordered(
    fn: Callable[[T], R],
    jobs: Iterable[T],
    n_jobs: int = 1,
    *,
    label: str = "",
    total: int | None = None,
) -> Iterator[R]:
    """Yield ``fn(job)`` for each job, in job order, as :func:`map_ordered` computes them.

    A result is yielded as soon as it and those before it are done, so a caller
    that folds the results in holds only the jobs in flight.

    Parameters
    ----------
    fn, jobs, n_jobs, label, total
        As :func:`map_ordered`.

    Yields
    ------
    object
        The results, in the order of ``jobs``.
    """
    if total is None and hasattr(jobs, "__len__"):
        total = len(jobs)  # type: ignore[arg-type]
    progress = Progress(label, total)
    if in_task():  # an inner map of a job on a worker: here, one job after the other
        n_jobs, where = 1, None
    else:
        where = scheduler()
    todo = iter(jobs)
    first = next(todo, _NO_JOB)
    if first is _NO_JOB:  # no worker started for nothing
        return
    todo = itertools.chain([first], todo)
    if where is not None:
        yield from _on_dask(fn, todo, where, progress)
    else:
        yield from _ordered(fn, todo, n_jobs, progress)


def _ordered(
    fn: Callable[[T], R], jobs: Iterator[T], n_jobs: int, progress: Progress
) -> Iterator[R]:
    if n_jobs <= 1:
        for job in jobs:
            result = fn(job)
            progress.step()
            yield result
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=context) as pool:
        pending: collections.deque[Future[Any]] = collections.deque()
        for job in jobs:
            pending.append(pool.submit(fn, job))
            if len(pending) >= 2 * n_jobs:
                yield pending.popleft().result()
                progress.step()
        while pending:
            yield pending.popleft().result()
            progress.step()


# --------------------------------------------------------------------------- Dask


class UnpinnedWorker(InputError):
    """A Dask worker whose environment lacks the numeric pins of this process."""


def run_task(fn: Callable[[T], R], job: T, pins: Mapping[str, str]) -> R:
    """Run one job on a Dask worker, after checking the worker's numeric pins.

    Parameters
    ----------
    fn
        The map's function.
    job
        Its argument.
    pins
        The variables :func:`immune_aging.determinism.pin_numerics` set in the
        submitting process (empty when it pinned nothing).

    Returns
    -------
    object
        ``fn(job)``.

    Raises
    ------
    UnpinnedWorker
        If a pinned variable has another value (or none) in this worker.
    """
    wrong = {var: os.environ.get(var) for var, value in pins.items()}
    wrong = {var: found for var, found in wrong.items() if found != pins[var]}
    if wrong:
        found = ", ".join(f"{var}={value!r}" for var, value in sorted(wrong.items()))
        wanted = " ".join(f"{var}={pins[var]}" for var in sorted(pins))
        raise UnpinnedWorker(
            f"worker on {socket.gethostname()} (pid {os.getpid()}) has {found}: "
            f"start the workers with {wanted} in their environment"
        )
    _TASK.in_task = True
    try:
        return fn(job)
    finally:
        _TASK.in_task = False


def in_task() -> bool:
    """Return whether this thread is running a job of :func:`map_ordered` on Dask.

    Returns
    -------
    bool
        True inside :func:`run_task`.
    """
    return getattr(_TASK, "in_task", False)


def _on_dask(
    fn: Callable[[T], R], jobs: Iterator[T], where: Scheduler, progress: Progress
) -> Iterator[R]:
    import distributed

    start = time.perf_counter()
    with _client(where) as client:
        slots = _slots(client)
        log.info(
            "%s: Dask scheduler %s, %d worker thread(s), ready in %.1f s",
            progress.label or "jobs",
            client.scheduler.address,
            slots,
            time.perf_counter() - start,
        )
        if not slots:
            log.warning("%s: no Dask worker yet; the jobs wait for one", where.describe())
        pins = dict(determinism.state["pinned"])  # type: ignore[call-overload]
        pending: collections.deque[Any] = collections.deque()
        index = 0

        def result() -> R:
            nonlocal index
            future = pending.popleft()
            try:
                value = future.result()
            except UnpinnedWorker as exc:
                raise InputError(f"{where.describe()}: {exc}") from None
            except distributed.KilledWorker:
                of = f" of {progress.label}" if progress.label else ""
                raise InputError(
                    f"{where.describe()}: job {index + 1}{of}: every worker that ran it died "
                    "(distributed.scheduler.allowed-failures reached); see the workers' logs"
                ) from None
            finally:
                del future  # releases the job and its result on the cluster
            index += 1
            progress.step()
            return value

        for job in jobs:
            pending.append(client.submit(run_task, fn, job, pins, pure=False))
            if len(pending) >= 2 * max(slots, 1):
                yield result()
                slots = _slots(client)
        while pending:
            yield result()


@contextlib.contextmanager
def _client(where: Scheduler) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``where``; a local cluster is closed after it."""
    import dask
    import distributed

    with contextlib.ExitStack() as stack:
        # A job travels inside its task, through the scheduler, which keeps it until the
        # task is done: a worker that dies mid-task does not take the job's input with it
        # (data scattered to workers would be lost). Dask warns about every such task
        # above 10 MB, as a Scrublet group can be; bounded in flight, they are expected.
        stack.enter_context(
            dask.config.set({"distributed.admin.large-graph-warning-threshold": "1 TiB"})
        )
        # Dask's own lines at INFO (scheduler and nanny start, each connection) would
        # drown the stage's log; its warnings (a worker killed, a task rerun) stay
        quiet = logging.getLogger("distributed")
        stack.callback(quiet.setLevel, quiet.level)
        quiet.setLevel(max(quiet.getEffectiveLevel(), logging.WARNING))
        if where.address is None:
            target: Any = stack.enter_context(
                distributed.LocalCluster(
                    n_workers=where.n_workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address="127.0.0.1:0",  # no fixed port to collide on
                )
            )
        else:
            target = where.address
        try:
            client = stack.enter_context(distributed.Client(target, set_as_default=False))
        except (OSError, TimeoutError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{where.describe()}: cannot reach the scheduler: {reason}") from None
        yield client


def _slots(client: Any) -> int:
    """Return the number of worker threads the cluster has now."""
    return sum(client.nthreads().values())
