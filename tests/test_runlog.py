"""The run log and the execution summary; the stage harness and thread settings."""

from __future__ import annotations

import json

import pytest

from immune_aging import runlog, stage, threads
from immune_aging.errors import InputError


def test_append_and_summary(tmp_path, monkeypatch):
    monkeypatch.setenv(runlog.LOG_DIR_ENV, str(tmp_path / "logs"))
    runlog.append("data", started=1000.0, seconds=2.0, peak_mb=10.0, status="ok")
    runlog.append("data", started=5000.0, seconds=3.0, peak_mb=10.0, status="ok")
    runlog.append("filter", started=5003.5, seconds=1.5, peak_mb=20.0, status="ok")
    records = runlog.read_records()
    assert [r["stage"] for r in records] == ["data", "data", "filter"]
    text = runlog.summary(records, ["data", "filter", "qc"])
    assert "EXECUTION SUMMARY" in text
    assert "data" in text and "ran" in text and "never run" in text
    assert "Duration of the last run: 4.5 s" in text


def test_summary_marks_up_to_date(tmp_path):
    records = [
        {"stage": "data", "start_epoch": 0.0, "seconds": 5.0, "status": "ok"},
        {"stage": "filter", "start_epoch": 5000.0, "seconds": 1.0, "status": "ok"},
    ]
    text = runlog.summary(records, ["data", "filter"])
    line = next(line for line in text.splitlines() if " data " in line)
    assert "up to date" in line


def test_harness_turns_input_error_into_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(runlog.LOG_DIR_ENV, str(tmp_path / "logs"))
    params = tmp_path / "params.yaml"
    params.write_text("cluster: {resolution: 1.0, n_iterations: 2, seed: 0}\n")

    def body(args, p):
        raise InputError("data/x.h5ad: obs column 'donor_id' missing")

    main = stage.main_for("cluster", "test", {}, body)
    assert main(["--params", str(params)]) == stage.EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert "error: cluster: data/x.h5ad: obs column 'donor_id' missing" in err
    assert "Traceback" not in err
    (record,) = runlog.read_records()
    assert record["stage"] == "cluster" and record["status"] == "input error"


def test_harness_reports_params_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(runlog.LOG_DIR_ENV, str(tmp_path / "logs"))
    params = tmp_path / "params.yaml"
    params.write_text("cluster: {resolution: -1, n_iterations: 2, seed: 0}\n")
    main = stage.main_for("cluster", "test", {}, lambda a, p: None)
    assert main(["--params", str(params)]) == 2
    assert "cluster.resolution: expected a number > 0.0, got -1" in capsys.readouterr().err


def test_harness_success_logs_record(tmp_path, monkeypatch):
    monkeypatch.setenv(runlog.LOG_DIR_ENV, str(tmp_path / "logs"))
    params = tmp_path / "params.yaml"
    params.write_text("cluster: {resolution: 1.0, n_iterations: 2, seed: 0}\n")
    seen = {}
    main = stage.main_for("cluster", "test", {}, lambda a, p: seen.update(p=p))
    assert main(["--params", str(params)]) == 0
    assert seen["p"].resolution == 1.0
    record = json.loads((tmp_path / "logs" / "runs.jsonl").read_text())
    assert record["status"] == "ok" and record["peak_mb"] > 0


def test_threads_from_environment(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "3")
    assert threads.n_threads() == 3
    monkeypatch.delenv(threads.ENV_VAR)
    assert threads.n_threads() == threads.available_cores()
    monkeypatch.setenv(threads.ENV_VAR, "zero")
    with pytest.raises(ValueError, match="expected a positive integer"):
        threads.n_threads()
