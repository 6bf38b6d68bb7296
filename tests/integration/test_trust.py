"""Reproducibility, incremental execution and kill-safety, each a tested property."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.builders import (
    OTHER_THREADS,
    VENV_BIN,
    cache_is_intact,
    clone_reproduced,
    downstream,
    dvc,
    dvc_stages,
    project_env,
    ran_stages,
    run,
    set_param,
    stage_names,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def repo(reproduced, tmp_path):
    return clone_reproduced(reproduced, tmp_path / "repo")


def test_forced_rerun_is_byte_identical(reproduced, rerun):
    """``dvc repro -f`` on a copy of the reproduced project (the session's ``rerun``)."""
    repo, out = rerun
    assert ran_stages(out) == set(stage_names(repo)), out
    assert (repo / "dvc.lock").read_bytes() == (reproduced / "dvc.lock").read_bytes()
    assert run(repo, "git", "status", "--porcelain").stdout == ""


def test_thread_count_invalidates_nothing_and_agrees_scientifically(reproduced, rerun_threads):
    """The session's ``rerun_threads``: ``dvc repro -f`` at another thread count."""
    repo, out = rerun_threads
    status = dvc(reproduced, "status", IMMUNE_AGING_THREADS=OTHER_THREADS).stdout
    assert "up to date" in status
    assert ran_stages(out) == set(stage_names(repo)), out
    clusters = pd.read_parquet(reproduced / "data/cluster/clusters.parquet")
    de = pd.read_parquet(reproduced / "data/de/results.parquet")
    clusters2 = pd.read_parquet(repo / "data/cluster/clusters.parquet")
    de2 = pd.read_parquet(repo / "data/de/results.parquet")
    # identical partitions (labels may only be renamed)
    pairs = pd.crosstab(clusters["leiden"], clusters2["leiden"])
    assert ((pairs > 0).sum(axis=1) == 1).all() and ((pairs > 0).sum(axis=0) == 1).all()
    key = ["cell_type", "gene_id"]
    merged = de.merge(de2, on=key, suffixes=("", "_2"))
    assert len(merged) == len(de) == len(de2)
    np.testing.assert_allclose(merged["stat_2"], merged["stat"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        merged["log2FoldChange_2"], merged["log2FoldChange"], rtol=1e-4, atol=1e-6
    )


def assert_reran(output: str, repo: Path, stage: str) -> None:
    """``stage`` ran, and nothing outside it and its downstream stages did.

    A downstream stage reruns only when an output it reads changed content: DVC
    compares hashes, so an edit that leaves ``stage``'s outputs identical stops there.
    """
    ran = ran_stages(output)
    assert stage in ran, output
    assert ran <= downstream(repo, stage), output


@pytest.mark.parametrize("stage", ["qc", "cluster", "predict"])
def test_a_param_reruns_its_stage_and_downstream_only(repo, stage):
    change = {
        "qc": ("qc.max_pct_mt", 25.0),
        "cluster": ("cluster.resolution", 0.7),
        "predict": ("predict.C", 0.5),
    }[stage]
    set_param(repo, *change)
    out = dvc(repo, "repro").stdout
    assert_reran(out, repo, stage)
    if stage == "cluster":  # a new partition changes every output downstream
        assert ran_stages(out) == downstream(repo, stage)


def test_a_code_edit_reruns_the_stages_using_it(repo):
    target = repo / "src/immune_aging/analysis/cluster.py"
    target.write_text(target.read_text() + "\n# an edit\n")
    out = dvc(repo, "repro").stdout
    assert_reran(out, repo, "cluster")


def test_docs_and_tests_edits_rerun_nothing(repo):
    (repo / "README.md").write_text("edited\n")
    (repo / "tests").mkdir(exist_ok=True)
    (repo / "tests" / "test_new.py").write_text("def test_x():\n    pass\n")
    out = dvc(repo, "repro").stdout
    assert ran_stages(out) == set()
    assert ran_stages(dvc(repo, "repro").stdout) == set()


def edit_code_only(repo: Path, stage: str) -> None:
    """Append a comment to a source file of ``stage`` that no other stage depends on."""
    stages = dvc_stages(repo)
    others = {d for name, spec in stages.items() if name != stage for d in spec["deps"]}
    (target, *_) = [d for d in stages[stage]["deps"] if d.startswith("src/") and d not in others]
    with (repo / target).open("a") as f:
        f.write("\n# an edit\n")


def _tmp_outputs(root: Path, folder: str) -> list[Path]:
    return [p for p in (root / folder).glob(".*.tmp-*")] if (root / folder).is_dir() else []


def test_sigkill_while_writing_leaves_nothing_dvc_accepts(repo, idle_machine):
    """Kill the filter stage while it writes its h5ad; the next repro completes.

    An edit to code only ``filter`` uses makes it run again (a run DVC has not
    cached); its output is the recorded one, so nothing downstream reruns.
    """
    edit_code_only(repo, "filter")
    env = project_env(repo)
    proc = subprocess.Popen(
        [str(VENV_BIN / "dvc"), "repro", "filter"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and proc.poll() is None:
        if _tmp_outputs(repo, "data/filter"):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert killed, "the stage finished before it could be killed"
    final = repo / "data/filter/selection.h5ad"
    assert not final.exists()
    assert "filter" in dvc(repo, "status").stdout
    out = dvc(repo, "repro").stdout
    assert "filter" in ran_stages(out)
    assert ran_stages(out) == {"filter"}, out
    assert final.is_file() and not _tmp_outputs(repo, "data/filter")
    assert "up to date" in dvc(repo, "status").stdout
    assert cache_is_intact(repo) == []
