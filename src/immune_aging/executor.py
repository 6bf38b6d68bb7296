"""The one executor for the stages' parallel work: ordered maps over processes.

Work that splits into independent jobs (Scrublet per donor, DESeq2 per cell type)
runs through :func:`map_ordered`: results come back in job order whatever the
number of workers, so outputs never depend on it. Workers are spawned processes
(forking is unsafe once OpenMP or numba threads exist); jobs are drawn lazily
with at most ``2 * n_jobs`` in flight, so only a few jobs' inputs exist as copies
at any time. A progress line is logged as jobs finish (count and elapsed time),
so a long stage never runs in silence.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Seconds between two progress lines at most (a line is also logged at the end).
PROGRESS_EVERY_S = 10.0


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
    """Return ``[fn(job) for job in jobs]``, in job order, over ``n_jobs`` processes.

    Parameters
    ----------
    fn
        A picklable (module-level) function of one argument.
    jobs
        The jobs; drawn lazily.
    n_jobs
        Worker processes; 1 (or fewer) runs in this process.
    label
        Names the work in progress lines (no progress is logged when empty).
    total
        Number of jobs, for progress lines (``len(jobs)`` when it has one).

    Returns
    -------
    list
        The results, in the order of ``jobs``.
    """
    if total is None and hasattr(jobs, "__len__"):
        total = len(jobs)  # type: ignore[arg-type]
    progress = Progress(label, total)
    return list(_ordered(fn, iter(jobs), n_jobs, progress))


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
