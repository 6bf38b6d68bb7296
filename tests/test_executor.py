"""The executor: ordered results whatever the number of workers, lazy jobs, progress."""

from __future__ import annotations

import logging

from immune_aging import executor


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
