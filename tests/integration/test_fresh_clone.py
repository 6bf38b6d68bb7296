"""A newcomer's fresh clone: the committed run is visible, and ``dvc repro`` remakes it.

The clone has no DVC cache and no remote (the source project's remote is in its
``.dvc/config.local``, which git does not carry). The metrics and figure folders
are ``cache: false``, committed to git, so the DVC verbs compare against HEAD
before anything runs. Then the whole pipeline runs in the clone on an imitated
other machine (another thread count and OpenBLAS kernel; numpy and numba told to
use other code paths) with its jobs on a Dask cluster (``IMMUNE_AGING_SCHEDULER=local:2``:
a ``LocalCluster`` of two worker processes, started by each stage that has jobs), and
must leave ``git status`` clean: the same bytes as the committed run, made on local
processes, ``dvc.lock`` included.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import dvc, run

from immune_aging import determinism

pytestmark = pytest.mark.integration

#: what a newcomer's machine may have that the committed run's did not
OTHER_MACHINE = {
    "IMMUNE_AGING_THREADS": "2",
    "OPENBLAS_CORETYPE": "SkylakeX",
    "OPENBLAS_NUM_THREADS": "2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "NUMBA_CPU_NAME": "generic",
}

#: the stages whose jobs go through :func:`immune_aging.executor.map_ordered`
ON_DASK = ("qc", "preprocess", "pseudobulk", "de", "gsea", "predict")


def metric_files(root: Path) -> list[str]:
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return sorted(
        next(iter(m)) if isinstance(m, dict) else m
        for spec in stages.values()
        for m in spec.get("metrics", [])
    )


def assert_verbs_compare_with_head(root: Path) -> None:
    """metrics/params/plots diff and exp show load HEAD's values: no error, no change."""
    for verb in (["metrics", "diff", "--all", "--json"], ["params", "diff", "--json"]):
        proc = dvc(root, *verb)
        assert "failed to load" not in proc.stdout + proc.stderr, proc.stderr
    metrics = json.loads(dvc(root, "metrics", "diff", "--all", "--json").stdout)
    assert sorted(metrics) == metric_files(root)  # every file loaded at HEAD
    changed = [
        f"{path}:{key}"
        for path, values in metrics.items()
        for key, v in values.items()
        if v.get("old") != v.get("new")
    ]
    assert changed == []
    assert json.loads(dvc(root, "params", "diff", "--json").stdout) == {}

    # a clean workspace is HEAD, so plain `dvc plots diff` draws it once; naming HEAD
    # makes DVC read HEAD's plot files from git as well
    for args in ([], ["HEAD"]):
        plots = dvc(root, "plots", "diff", *args, "--json")
        assert "failed to load" not in plots.stdout + plots.stderr, plots.stderr
        rendered = json.loads(plots.stdout)
        assert not rendered.get("errors"), rendered.get("errors")
    revisions = {
        rev
        for entries in rendered["data"].values()
        for entry in entries
        for rev in entry.get("revisions", [])
    }
    assert revisions == {"HEAD", "workspace"}

    shown = json.loads(dvc(root, "exp", "show", "--json").stdout)
    head = next(row for row in shown if row.get("rev") != "workspace")
    assert head.get("error") is None, head.get("error")
    loaded = head["data"]["metrics"]
    assert sorted(loaded) == metric_files(root)
    assert all("data" in entry and "error" not in entry for entry in loaded.values())


def test_fresh_clone_shows_head_and_reproduces_it_byte_for_byte(reproduced, tmp_path):
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(reproduced), str(clone))
    assert dvc(clone, "remote", "list").stdout.strip() == ""
    assert not (clone / ".dvc" / "cache").exists()
    assert (clone / "metrics" / "qc.json").is_file()  # committed, not cached
    assert_verbs_compare_with_head(clone)

    pinned = sys.platform == "linux" and determinism.X86_64_V3_FLAGS <= determinism.cpu_flags()
    on_dask = {"IMMUNE_AGING_SCHEDULER": "local:2"}
    # -f: also the stages whose every output is committed (``predict``), which a plain
    # repro would find up to date
    proc = dvc(clone, "repro", "-f", **on_dask, **(OTHER_MACHINE if pinned else {}))
    said = proc.stdout + proc.stderr
    for stage in ON_DASK:  # each stage with jobs did send them to its cluster
        assert re.search(rf" {stage}: .*: Dask scheduler tcp://127\.0\.0\.1:", said), said
    assert run(clone, "git", "status", "--porcelain").stdout == ""
    assert_verbs_compare_with_head(clone)
