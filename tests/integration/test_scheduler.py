"""The stages' jobs on a Dask cluster give the same bytes as on local processes.

Only the stages whose work goes through :func:`immune_aging.executor.map_ordered`
run again, on the session's inputs, under ``IMMUNE_AGING_SCHEDULER=local:2``: a
``LocalCluster`` of two worker processes, started from the stage's environment and
so pinned like it (every Dask task checks its worker's pins before it runs). Their
outputs must equal, byte for byte, those of the session's run on local processes.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.builders import pipeline_inputs, run_stage, stage_outputs

pytestmark = pytest.mark.integration

#: The stages that run jobs through the executor: Scrublet per donor, and DESeq2,
#: GSEA and the age prediction per cell type.
STAGES = ("qc", "de", "gsea", "predict")


def files_under(root: Path, names: list[str]) -> dict[str, bytes]:
    out = {}
    for name in names:
        path = root / name
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            out[str(f.relative_to(root))] = f.read_bytes()
    return out


def test_a_local_dask_cluster_writes_the_same_bytes(reproduced, tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy2(reproduced / "params.yaml", root / "params.yaml")
    for stage in STAGES:
        for name in pipeline_inputs(stage, reproduced):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(reproduced / name, root / name)

    def on_dask(stage: str) -> subprocess.CompletedProcess:
        env = {"IMMUNE_AGING_SCHEDULER": "local:2"}
        return run_stage(stage, root, params=False, env=env, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(STAGES, pool.map(on_dask, STAGES), strict=True))
    for stage, proc in done.items():
        assert proc.returncode == 0, f"{stage}:\n{proc.stderr}"
        # the jobs did run on the cluster
        assert "Dask scheduler tcp://127.0.0.1:" in proc.stderr, proc.stderr
        names = stage_outputs(stage, reproduced)
        expected = files_under(reproduced, names)
        assert expected, stage
        assert files_under(root, names) == expected, stage
