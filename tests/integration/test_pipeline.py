"""The pipeline under real DVC in a temporary git repository, on the tiny preset."""

from __future__ import annotations

import json

import pytest
import yaml
from tests.builders import dvc

pytestmark = pytest.mark.integration


def stage_names(root):
    return list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])


def test_repro_data_then_nothing_to_do(project):
    out = dvc(project, "repro", "data").stdout
    assert "Running stage 'data'" in out
    raw = project / "data" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == ["dataset.h5ad", "genesets.gmt", "truth.json"]
    truth = json.loads((raw / "truth.json").read_text())
    assert truth["n_donors"] == 14
    again = dvc(project, "repro", "data").stdout
    assert "Running stage" not in again
    assert "up to date" in again or "didn't change" in again
    assert "data" in dvc(project, "dag").stdout


def test_whole_pipeline_runs_and_is_up_to_date(reproduced):
    status = dvc(reproduced, "status").stdout
    assert "up to date" in status
    again = dvc(reproduced, "repro").stdout
    assert "Running stage" not in again
    for name in stage_names(reproduced):
        if name in ("data", "genesets"):
            continue
        assert (reproduced / "metrics" / f"{name}.json").is_file() or name == "report", name
