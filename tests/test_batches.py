"""Batches of whole groups read and worked on here or by Dask workers, with the same results."""

from __future__ import annotations

import os

import numpy as np
from tests.test_counts import X, write, write_selection

from immune_aging import batches, executor, selection


def column_sums(positions, matrix, extra):
    """A batch's job: what it was given, and its counts' column sums."""
    return positions.tolist(), np.asarray(matrix.sum(axis=0)).ravel().tolist(), extra


def inner_pids(n):
    """A job that runs a map of its own; returns where the inner jobs ran."""
    return executor.in_task(), executor.map_ordered(_pid, range(n), 2), os.getpid()


def _pid(_):
    return os.getpid()


def run(monkeypatch, scheduler, chosen, labels, keep):
    if scheduler:
        monkeypatch.setenv(executor.SCHEDULER_VAR, scheduler)
    else:
        monkeypatch.delenv(executor.SCHEDULER_VAR, raising=False)
    extra = lambda positions: f"batch of {len(positions)}"  # noqa: E731 (runs here only)
    return list(
        batches.map_batches(chosen, column_sums, labels, keep=keep, extra=extra, max_cells=1)
    )


def test_batches_give_the_same_results_here_and_on_dask_workers(tmp_path, monkeypatch):
    source = write(tmp_path)
    path = write_selection(tmp_path, source, [1, 1, 1, 1], [1, 0, 1, 1])
    chosen = selection.read_selection(path, source)
    keep = np.array([True, False, True, True])
    labels = np.array(["x", "y", "x"])  # of the kept cells a, c, d: x not contiguous
    here = run(monkeypatch, None, chosen, labels, keep)
    assert here == [
        ([0, 2], X[[0, 3]][:, [0, 2, 3]].sum(axis=0).tolist(), "batch of 2"),
        ([1], X[[2]][:, [0, 2, 3]].sum(axis=0).tolist(), "batch of 1"),
    ]
    assert run(monkeypatch, "local:1", chosen, labels, keep) == here


def test_a_map_inside_a_dask_job_runs_in_the_job_s_process(monkeypatch):
    monkeypatch.setenv(executor.SCHEDULER_VAR, "local:1")
    [(in_task, pids, worker)] = executor.map_ordered(inner_pids, [3])
    assert in_task and pids == [worker] * 3 and worker != os.getpid()
    assert not executor.in_task()
