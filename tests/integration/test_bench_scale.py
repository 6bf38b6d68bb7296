"""The scale bench on a tiny shape: simulate, run ``dvc repro`` in a scratch project, record."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.builders import REPO, project_env

pytestmark = pytest.mark.integration


def test_scale_bench_records_every_stage_it_ran(tmp_path):
    results, scratch = tmp_path / "results", tmp_path / "scratch"
    cmd = [
        sys.executable,
        str(REPO / "bench" / "scale.py"),
        *("--donors", "6", "--cells-per-donor", "60", "--genes", "600", "--cell-types", "4"),
        *("--until", "filter", "--results", str(results), "--scratch", str(scratch)),
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=project_env(REPO), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((results / "scale-6x60x600.json").read_text())
    assert set(record["stages"]) == {"data", "filter"}
    for stage in record["stages"].values():
        assert stage["wall_s"] > 0 and stage["cpu_s"] > 0 and stage["peak_mb"] > 0
        assert stage["output_bytes"] > 0
    assert record["cells"] > 0 and record["noop_repro_s"] > 0
    # the filter's output is a checkpoint; the raw input (hard-linked) is not counted
    assert 0 < record["checkpoint_bytes_excluding_raw"] < 4 * record["input_bytes"] + 10**6
    table = (results / "scale.md").read_text()
    assert "| filter |" in table and "no-op `dvc repro`" in table
    assert not (scratch / "scale-6x60x600").exists()  # the scratch project is removed
