"""Batches of whole groups read and worked on here or by Dask workers, with the same results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
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


def test_batches_of_whole_groups_are_read_and_worked_on_here(tmp_path, monkeypatch):
    source = write(tmp_path)
    path = write_selection(tmp_path, source, [1, 1, 1, 1], [1, 0, 1, 1])
    chosen = selection.read_selection(path, source)
    keep = np.array([True, False, True, True])
    labels = np.array(["x", "y", "x"])  # of the kept cells a, c, d: x not contiguous
    assert run(monkeypatch, None, chosen, labels, keep) == [
        ([0, 2], X[[0, 3]][:, [0, 2, 3]].sum(axis=0).tolist(), "batch of 2"),
        ([1], X[[2]][:, [0, 2, 3]].sum(axis=0).tolist(), "batch of 1"),
    ]


@pytest.fixture
def external_scheduler(tmp_path):
    """A Dask scheduler and one worker started as their own processes, as on a cluster."""
    bin_dir = Path(sys.executable).parent
    info = tmp_path / "scheduler.json"
    here = Path(__file__).resolve().parent  # the worker imports this module's job functions
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])}
    common = {
        "cwd": tmp_path,
        "env": env,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
    }
    procs = [
        subprocess.Popen(
            [bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", info],
            **common,
        )
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not info.is_file() or not info.read_text().strip():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        procs.append(
            subprocess.Popen(
                [bin_dir / "dask", "worker", "--scheduler-file", info, "--nthreads", "1",
                 "--nworkers", "1", "--no-dashboard"],
                **common,
            )
        )  # fmt: skip
        yield json.loads(info.read_text())["address"]
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


def test_batches_on_a_running_scheduler_s_worker(tmp_path, monkeypatch, external_scheduler):
    # IMMUNE_AGING_SCHEDULER=tcp://HOST:PORT: the stage connects to a scheduler that runs
    # elsewhere, whose worker reads the batches from the (shared) input path itself and
    # gives the results of this process's own reading; a map inside a job runs in the
    # job's process (local:N clusters are tested by the stages' tests)
    source = write(tmp_path)
    path = write_selection(tmp_path, source, [1, 1, 1, 1], [1, 0, 1, 1])
    chosen = selection.read_selection(path, source)
    keep = np.array([True, False, True, True])
    labels = np.array(["x", "y", "x"])
    here = run(monkeypatch, None, chosen, labels, keep)
    assert external_scheduler.startswith("tcp://127.0.0.1:")
    assert run(monkeypatch, external_scheduler, chosen, labels, keep) == here
    [(in_task, pids, worker)] = executor.map_ordered(inner_pids, [2])
    assert in_task and pids == [worker] * 2 and worker != os.getpid()
    assert not executor.in_task()
