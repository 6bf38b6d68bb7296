"""The DVC verbs a scientist uses after the first run, exactly as the README shows them."""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from tests.builders import (
    VENV_BIN,
    cache_is_intact,
    clone_reproduced,
    downstream,
    dvc,
    output_files,
    ran_stages,
    run,
    set_param,
    stage_names,
    stage_outputs,
)

pytestmark = pytest.mark.integration


def output_paths(root: Path, *, cached_only: bool = False) -> list[Path]:
    """The outputs (outs, metrics and plots) every stage of ``dvc.yaml`` declares.

    With ``cached_only``, those declared ``cache: false`` (committed to git) are left out.
    """
    return [
        root / path
        for name in stage_names(root)
        for path in stage_outputs(name, root, cached_only=cached_only)
    ]


def remove_outputs_and_cache(root: Path) -> None:
    """Delete the DVC cache and every cached output, as on a fresh machine.

    Outputs declared ``cache: false`` (metrics, figures) are committed to git, so a
    fresh clone has them.
    """
    shutil.rmtree(root / ".dvc" / "cache")
    for path in output_paths(root, cached_only=True):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def assert_same_outputs(root: Path, before: dict[str, bytes]) -> None:
    after = output_files(root)
    assert sorted(after) == sorted(before)
    assert [k for k in before if after[k] != before[k]] == []


@pytest.fixture
def repo(reproduced, tmp_path):
    return clone_reproduced(reproduced, tmp_path / "repo")


def test_exp_run_reruns_the_stage_and_downstream_only(repo):
    out = dvc(repo, "exp", "run", "-S", "cluster.resolution=0.5", "-n", "res05").stdout
    assert ran_stages(out) == downstream(repo, "cluster")
    assert "filter" not in ran_stages(out)

    table = dvc(repo, "exp", "show", "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(table)))
    names = {r["Experiment"] for r in rows}
    assert "res05" in names
    assert any(k == "cluster.resolution" for k in rows[0])
    assert any(k.startswith("metrics/cluster.json:") or k == "n_clusters" for k in rows[0])
    md = dvc(repo, "exp", "show", "--md").stdout
    assert "| Experiment" in md and "res05" in md

    dvc(repo, "exp", "apply", "res05")
    assert yaml.safe_load((repo / "params.yaml").read_text())["cluster"]["resolution"] == 0.5
    dvc(repo, "exp", "branch", "res05", "low-resolution")
    branches = run(repo, "git", "branch", "--list").stdout
    assert "low-resolution" in branches


def test_metrics_params_plots_diff_after_a_change(repo, tmp_path):
    set_param(repo, "cluster.resolution", 2.0)
    dvc(repo, "repro")
    params = dvc(repo, "params", "diff").stdout
    assert "cluster.resolution" in params and "1.0" in params and "2.0" in params
    metrics = dvc(repo, "metrics", "diff", "--json").stdout
    changed = json.loads(metrics)
    assert "metrics/cluster.json" in changed
    assert "n_clusters" in changed["metrics/cluster.json"]
    plots = dvc(repo, "plots", "diff", "-o", str(tmp_path / "diff")).stdout
    assert (tmp_path / "diff" / "index.html").is_file(), plots
    show = dvc(repo, "plots", "show", "-o", str(tmp_path / "show")).stdout
    html = (tmp_path / "show" / "index.html").read_text()
    assert "vega" in html.lower(), show


def test_run_cache_restores_a_previous_run_without_recomputing(repo):
    before = output_files(repo)
    set_param(repo, "cluster.resolution", 0.5)
    first = dvc(repo, "repro").stdout
    assert "cluster" in ran_stages(first)
    set_param(repo, "cluster.resolution", 1.0)
    back = dvc(repo, "repro").stdout
    assert ran_stages(back) == set(), back
    assert "is cached - skipping run, checking out outputs" in back
    assert_same_outputs(repo, before)


def test_queued_sweep_runs_without_corrupting_the_cache(repo):
    dvc(repo, "exp", "run", "--queue", "-S", "cluster.resolution=0.5,1.0,2.0")
    dvc(repo, "queue", "start", "-j", "2")
    deadline = time.time() + 600
    while time.time() < deadline:
        status = dvc(repo, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    status = dvc(repo, "queue", "status").stdout
    assert status.count("Success") == 3, status
    dvc(repo, "queue", "stop", check=False)
    rows = list(csv.DictReader(io.StringIO(dvc(repo, "exp", "show", "--csv").stdout)))
    resolutions = {r["cluster.resolution"] for r in rows if r["Experiment"]}
    assert {"0.5", "1.0", "2.0"} <= resolutions
    assert cache_is_intact(repo) == []
    assert "up to date" in dvc(repo, "status").stdout


def test_local_remote_round_trip(repo):
    before = output_files(repo)
    dvc(repo, "push")
    remove_outputs_and_cache(repo)
    dvc(repo, "pull")
    assert "up to date" in dvc(repo, "status").stdout
    assert_same_outputs(repo, before)


def test_colleague_reproduces_only_the_last_stages(repo, tmp_path):
    """A fresh clone changes a late parameter and pulls only what that stage reads."""
    dvc(repo, "push")
    colleague = tmp_path / "colleague"
    run(tmp_path, "git", "clone", "-q", str(repo), str(colleague))
    remote = repo.parent / f"{repo.name}-remote"
    dvc(colleague, "remote", "add", "--local", "-d", "local", str(remote))
    set_param(colleague, "predict.C", 0.5)
    out = dvc(colleague, "repro", "--pull", "--allow-missing").stdout
    # stages whose inputs are missing locally but unchanged are skipped, not pulled
    assert "predict" in ran_stages(out)
    assert ran_stages(out) <= downstream(colleague, "predict"), out
    assert (colleague / "data/pseudobulk/pseudobulk.h5ad").is_file()
    assert (colleague / "reports/report.html").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server():
    """A real S3-protocol server (moto) on 127.0.0.1, with one bucket."""
    port = _free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="immune-aging")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_s3_remote_round_trip(repo, s3_server):
    before = output_files(repo)
    dvc(repo, "remote", "add", "--local", "s3", "s3://immune-aging/store")
    dvc(repo, "remote", "modify", "--local", "s3", "endpointurl", s3_server)
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    dvc(repo, "push", "-r", "s3", **creds)
    remove_outputs_and_cache(repo)
    dvc(repo, "pull", "-r", "s3", **creds)
    assert "up to date" in dvc(repo, "status").stdout
    assert_same_outputs(repo, before)
    assert "s3" not in (repo / ".dvc" / "config").read_text()
