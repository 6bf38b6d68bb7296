"""The pipeline under real DVC in a temporary git repository, on the tiny preset."""

from __future__ import annotations

import json

import pytest
from tests.builders import dvc, dvc_stages, entry_paths, stage_command, stage_outputs, tiny_params

pytestmark = pytest.mark.integration


def test_each_stage_runs_its_own_module_with_its_own_params_section():
    """What ``run_stage`` and the stage contract rely on: stage = module = params section."""
    for name, spec in dvc_stages().items():
        assert spec["cmd"].split()[:3] == ["python", "-m", f"immune_aging.stages.{name}"]
        assert spec["params"] == [name], name
        assert stage_command(name)[1:3] == ["-m", f"immune_aging.stages.{name}"]


def test_repro_data_then_nothing_to_do(reproduced, repro_output):
    """The first ``dvc repro`` of a fresh project ran ``data``; a second does nothing."""
    assert "Running stage 'data'" in repro_output
    raw = reproduced / "data" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == ["dataset.h5ad", "genesets.gmt", "truth.json"]
    truth = json.loads((raw / "truth.json").read_text())
    assert truth["n_donors"] == tiny_params()["data"]["synthetic"]["n_donors"]
    again = dvc(reproduced, "repro", "data").stdout
    assert "Running stage" not in again
    assert "up to date" in again or "didn't change" in again
    assert "data" in dvc(reproduced, "dag").stdout


def test_whole_pipeline_runs_and_is_up_to_date(reproduced):
    status = dvc(reproduced, "status").stdout
    assert "up to date" in status
    again = dvc(reproduced, "repro").stdout
    assert "Running stage" not in again
    for name, spec in dvc_stages(reproduced).items():
        assert entry_paths(spec.get("metrics")) in ([], [f"metrics/{name}.json"]), name
        for path in stage_outputs(name, reproduced):
            assert (reproduced / path).exists(), f"{name}: {path} missing"
