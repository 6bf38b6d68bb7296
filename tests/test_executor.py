"""The executor: ordered results whatever the number of workers, lazy jobs, progress."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
from pathlib import Path

import dask
import pytest

from immune_aging import determinism, executor, runlog, stage, threads
from immune_aging.errors import InputError


def test_results_keep_job_order_in_processes():
    jobs = [[1] * n for n in (3, 1, 2, 5, 4)]
    expected = [3, 1, 2, 5, 4]
    assert executor.map_ordered(len, jobs, 1) == expected
    assert executor.map_ordered(len, iter(jobs), 2) == expected


def test_jobs_are_drawn_lazily_with_bounded_look_ahead():
    drawn = []

    def jobs():
        for i in range(6):
            drawn.append(i)
            yield i

    results = []
    for result in executor._ordered(abs, jobs(), 1, executor.Progress("")):
        results.append((result, len(drawn)))
    # in-process: each job is drawn just before it runs
    assert results == [(i, i + 1) for i in range(6)]
    drawn.clear()
    first = next(executor._ordered(abs, jobs(), 2, executor.Progress("")))
    # two workers: at most four jobs in flight when the first result comes back
    assert first == 0 and len(drawn) == 4


def test_progress_lines_name_the_work_and_count(caplog, monkeypatch):
    monkeypatch.setattr(executor, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="immune_aging.executor"):
        executor.map_ordered(abs, [-1, -2, -3], 1, label="groups")
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == [
        "groups: 1 of 3 done",
        "groups: 2 of 3 done",
        "groups: 3 of 3 done",
    ]
    assert lines[-1].endswith(" s")


def test_no_progress_without_a_label(caplog):
    with caplog.at_level(logging.INFO, logger="immune_aging.executor"):
        assert executor.map_ordered(abs, [-1], 1) == [1]
    assert not caplog.records


# --------------------------------------------------------------------------- Dask


def die_once(job: tuple[int, str]) -> int:
    """Square ``job[0]``; the first time a marker file is missing, kill this worker mid-task."""
    value, marker = job
    if value == 2 and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return value * value


def die(value: int) -> int:
    """Kill this worker process whatever the job."""
    os.kill(os.getpid(), signal.SIGKILL)
    return value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("  ", None),
        ("local:3", executor.Scheduler("local:3", n_workers=3)),
        ("tcp://10.1.2.3:8786", executor.Scheduler("tcp://10.1.2.3:8786", "tcp://10.1.2.3:8786")),
        ("tcp://node-7.cluster:8786", executor.Scheduler(*["tcp://node-7.cluster:8786"] * 2)),
        ("tls://[::1]:8786", executor.Scheduler("tls://[::1]:8786", "tls://[::1]:8786")),
    ],
)
def test_scheduler_from_environment(value, expected):
    assert executor.scheduler({executor.SCHEDULER_VAR: value}) == expected
    assert executor.scheduler({}) is None


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("local:0", "N must be a positive integer"),
        ("local:two", "N must be a positive integer"),
        ("local:", "N must be a positive integer"),
        ("tcp://scheduler", "expected 'tcp://HOST:PORT'"),
        ("scheduler:8786", "expected 'tcp://HOST:PORT'"),
        ("slurm", "expected 'tcp://HOST:PORT'"),
        ("tcp://scheduler:99999", "port out of range"),
    ],
)
def test_bad_scheduler_is_an_input_error(value, what):
    with pytest.raises(InputError) as exc:
        executor.scheduler({executor.SCHEDULER_VAR: value})
    assert str(exc.value).startswith(f"IMMUNE_AGING_SCHEDULER={value!r}: {what}")


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        (
            "IMMUNE_AGING_SCHEDULER",
            "local:0",
            "IMMUNE_AGING_SCHEDULER='local:0': N must be a positive integer; expected "
            "'tcp://HOST:PORT' (a running Dask scheduler) or 'local:N' (a Dask cluster of N "
            "worker processes on this machine)",
        ),
        (
            "IMMUNE_AGING_THREADS",
            "zero",
            "IMMUNE_AGING_THREADS='zero': expected a positive integer number of threads",
        ),
    ],
)
def test_a_bad_environment_stops_a_stage_with_one_line(
    tmp_path, monkeypatch, capsys, var, value, message
):
    monkeypatch.setenv(runlog.LOG_DIR_ENV, str(tmp_path / "logs"))
    monkeypatch.setenv(var, value)
    params = tmp_path / "params.yaml"
    params.write_text("cluster: {resolution: 1.0, n_iterations: 2, seed: 0}\n")
    ran = []
    main = stage.main_for("cluster", "test", {}, lambda a, p: ran.append(p))
    assert main(["--params", str(params)]) == stage.EXIT_INPUT_ERROR
    assert not ran
    assert capsys.readouterr().err.splitlines() == [f"error: cluster: {message}"]


def test_a_bad_thread_count_fails_no_import(monkeypatch):
    # importing immune_aging exports nothing then; the harness reports it
    monkeypatch.setenv(threads.ENV_VAR, "-1")
    assert threads.configure_threads() == 0


def test_local_cluster_keeps_job_order_draws_lazily_and_logs_progress(caplog, monkeypatch):
    monkeypatch.setenv(executor.SCHEDULER_VAR, "local:2")
    monkeypatch.setattr(executor, "PROGRESS_EVERY_S", 0.0)
    drawn, seen = [], []

    def jobs():
        for n in (3, 1, 2, 5, 4, 7, 6):
            drawn.append(n)
            yield [1] * n

    step = executor.Progress.step
    monkeypatch.setattr(
        executor.Progress, "step", lambda self, n=1: (seen.append(len(drawn)), step(self, n))
    )
    with caplog.at_level(logging.INFO, logger="immune_aging.executor"):
        # n_jobs=1 would run in this process; the scheduler sends every job to the cluster
        assert executor.map_ordered(len, jobs(), 1, label="groups", total=7) == [
            3, 1, 2, 5, 4, 7, 6,
        ]  # fmt: skip
    # two worker threads: at most four jobs in flight, the next drawn as each result comes
    assert seen == [4, 5, 6, 7, 7, 7, 7]
    lines = [r.getMessage() for r in caplog.records if r.name == "immune_aging.executor"]
    assert lines[0].startswith("groups: Dask scheduler tcp://127.0.0.1:")
    assert re.search(r", 2 worker thread\(s\), ready in \d+\.\d s$", lines[0])
    assert [line.split(",")[0] for line in lines[1:]] == [
        f"groups: {i} of 7 done" for i in range(1, 8)
    ]


def test_a_worker_without_the_pins_is_refused(monkeypatch):
    monkeypatch.delenv("IMMUNE_AGING_TEST_PIN", raising=False)
    with pytest.raises(executor.UnpinnedWorker, match=r"has IMMUNE_AGING_TEST_PIN=None: start"):
        executor.run_task(abs, -1, {"IMMUNE_AGING_TEST_PIN": "Haswell"})
    assert executor.run_task(abs, -1, {}) == 1
    monkeypatch.setenv(executor.SCHEDULER_VAR, "local:1")
    monkeypatch.setitem(determinism.state, "pinned", {"IMMUNE_AGING_TEST_PIN": "Haswell"})
    with pytest.raises(InputError) as exc:
        executor.map_ordered(abs, [-1], 1)
    message = str(exc.value)
    assert message.startswith("IMMUNE_AGING_SCHEDULER='local:1': worker on ")
    assert message.endswith(
        "has IMMUNE_AGING_TEST_PIN=None: start the workers with IMMUNE_AGING_TEST_PIN=Haswell "
        "in their environment"
    )


def test_a_killed_worker_has_its_task_run_again(tmp_path, monkeypatch):
    monkeypatch.setenv(executor.SCHEDULER_VAR, "local:2")
    marker = str(tmp_path / "killed")
    jobs = [(i, marker) for i in range(5)]
    assert executor.map_ordered(die_once, jobs, 2) == [0, 1, 4, 9, 16]
    assert os.path.exists(marker)  # the worker did die


def test_a_task_whose_workers_keep_dying_fails_with_one_line(monkeypatch):
    monkeypatch.setenv(executor.SCHEDULER_VAR, "local:1")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with pytest.raises(InputError) as exc:
            executor.map_ordered(die, [1, 2], 1, label="groups")
    assert str(exc.value) == (
        "IMMUNE_AGING_SCHEDULER='local:1': job 1 of groups: every worker that ran it died "
        "(distributed.scheduler.allowed-failures reached); see the workers' logs"
    )


def test_an_unreachable_scheduler_fails_with_one_line(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    monkeypatch.setenv(executor.SCHEDULER_VAR, address)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(InputError) as exc:
            executor.map_ordered(abs, [-1], 1)
    assert str(exc.value).startswith(
        f"IMMUNE_AGING_SCHEDULER={address!r}: cannot reach the scheduler: "
    )
    assert "\n" not in str(exc.value)


def test_no_job_starts_no_cluster(monkeypatch):
    # an unreachable scheduler is never contacted when there is nothing to send
    monkeypatch.setenv(executor.SCHEDULER_VAR, "tcp://127.0.0.1:1")
    assert executor.map_ordered(abs, [], 1) == []
    assert executor.map_ordered(abs, iter([]), 2) == []
