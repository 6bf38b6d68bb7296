from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from immune_aging import io
from immune_aging.stages import data as stage

REPO = Path(__file__).resolve().parents[1]
SMALL = {
    "seed": 0,
    "n_donors": 6,
    "n_cell_types": 3,
    "cells_per_donor": 100,
    "n_genes": 500,
    "doublet_rate": 0.06,
    "dying_rate": 0.03,
    "rbc_rate": 0.01,
    "chunk_cells": 1000,
    "preset": "default",
    "age_effect_scale": 1.0,
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with data/external/ as the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", str(tmp_path / "logs"))
    (tmp_path / "data" / "external").mkdir(parents=True)
    return tmp_path


def run(project: Path, *, source="synthetic", sha256=None, **synthetic) -> int:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {
        "source": source,
        "sha256": sha256,
        "synthetic": {**SMALL, **synthetic},
    }
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return stage.main(
        [
            "--params",
            "params.yaml",
            "--external",
            "data/external",
            "--download-cache",
            "data/.download",
            "--out",
            "data/raw",
            "--metrics",
            "metrics/data.json",
        ]
    )


def external_dataset(path: Path) -> Path:
    counts = np.array([[1, 0, 2], [0, 3, 1], [5, 0, 0], [2, 2, 2]], dtype=np.float32)
    adata = ad.AnnData(
        X=sp.csr_matrix(np.log1p(counts)),
        obs=pd.DataFrame(
            {
                "donor_id": ["a", "a", "b", "b"],
                "cell_type": ["T cell", "B cell", "T cell", "B cell"],
                "development_stage": ["30-year-old stage"] * 2 + ["unknown"] * 2,
                "sex": ["male"] * 2 + ["female"] * 2,
            },
            index=["c1", "c2", "c3", "c4"],
        ),
        var=pd.DataFrame({"feature_name": ["CD3E", "MS4A1", "LYZ"]}, index=["g1", "g2", "g3"]),
    )
    adata.raw = ad.AnnData(X=sp.csr_matrix(counts), obs=adata.obs, var=adata.var)
    io.write_h5ad(adata, path)
    return path


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]


def test_synthetic_source(project):
    assert run(project) == 0
    raw = project / "data" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == ["dataset.h5ad", "genesets.gmt", "truth.json"]
    metrics = json.loads((project / "metrics" / "data.json").read_text())
    truth = json.loads((raw / "truth.json").read_text())
    assert metrics["source"] == "synthetic" and metrics["counts"] == "X"
    assert metrics["n_cells"] == truth["n_cells"] and metrics["n_donors"] == 6
    adata = io.read_h5ad(raw / "dataset.h5ad", backed=True)
    try:
        assert adata.shape == (truth["n_cells"], 500)
        provenance = adata.uns["provenance"]
        assert provenance["stage"] == "data"
        assert json.loads(provenance["params"])["synthetic"]["n_donors"] == 6
    finally:
        adata.file.close()
    assert not list(raw.parent.glob(".*tmp-*"))


def test_realistic_preset_and_null_twin(project):
    assert run(project, preset="realistic", n_cell_types=4, n_donors=20) == 0
    truth = json.loads((project / "data" / "raw" / "truth.json").read_text())
    assert truth["preset"] == "realistic" and truth["null_cell_types"] == ["natural killer cell"]
    assert truth["log2fc_per_decade_by_cell_type"][
        "central memory CD4-positive, alpha-beta T cell"
    ]
    assert run(project, preset="realistic", n_cell_types=4, n_donors=20, age_effect_scale=0) == 0
    twin = json.loads((project / "data" / "raw" / "truth.json").read_text())
    assert twin["aged_cell_types"] == [] and twin["donors"] == truth["donors"]


def test_external_source_is_validated_and_hard_linked(project):
    source = external_dataset(project / "data" / "external" / "mine.h5ad")
    assert run(project, source="data/external/mine.h5ad", sha256=io.sha256_file(source)) == 0
    out = project / "data" / "raw"
    assert sorted(p.name for p in out.iterdir()) == ["dataset.h5ad"]
    assert os.path.samefile(out / "dataset.h5ad", source)
    metrics = json.loads((project / "metrics" / "data.json").read_text())
    assert metrics["counts"] == "raw.X" and metrics["adopted"] == "hardlink"
    assert metrics["sha256_checked"] is True and metrics["n_donors"] == 2


def test_download_source_uses_the_cache_and_validates(project, monkeypatch):
    served = external_dataset(project / "served.h5ad")
    calls = []

    def fake_download(url, dest, *, sha256=None, **kwargs):
        calls.append((url, dest, sha256))
        Path(dest).write_bytes(served.read_bytes())
        return Path(dest)

    monkeypatch.setattr("immune_aging.download.download", fake_download)
    url = "https://example.org/files/onek1k.h5ad"
    assert run(project, source=url) == 0
    ((called_url, dest, sha),) = calls
    assert called_url == url and sha is None
    assert dest.parent == Path("data/.download") and dest.name.endswith("-onek1k.h5ad")
    assert (project / "data" / ".download" / ".gitignore").read_text().endswith("*\n")
    assert os.path.samefile(project / "data" / "raw" / "dataset.h5ad", project / dest)
    metrics = json.loads((project / "metrics" / "data.json").read_text())
    assert metrics["source"] == "url" and metrics["counts"] == "raw.X"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "http://example.org/x.h5ad",
            "params.yaml: data.source: 'http://example.org/x.h5ad': plain http is not "
            "accepted, use an https:// URL",
        ),
        (
            "s3://bucket/x.h5ad",
            "params.yaml: data.source: 's3://bucket/x.h5ad': unsupported URL scheme "
            "(expected 'synthetic', an https:// URL or a file under data/external/)",
        ),
        (
            "data/other/x.h5ad",
            "params.yaml: data.source: 'data/other/x.h5ad' is outside data/external/: put the "
            "file there (the folder is a declared dependency of the stage)",
        ),
        (
            "data/external/absent.h5ad",
            "params.yaml: data.source: data/external/absent.h5ad: file not found",
        ),
        (
            "synthtic",
            "params.yaml: data.source: expected 'synthetic', an https:// URL or a file under "
            "data/external/, got 'synthtic' (did you mean 'synthetic'?)",
        ),
        (
            "",
            "params.yaml: data.source: expected 'synthetic', an https:// URL or a file under "
            "data/external/, got ''",
        ),
    ],
)
def test_bad_sources_fail_with_one_line(project, capsys, source, expected):
    assert run(project, source=source) == 2
    assert error_line(capsys) == f"error: data: {expected}"
    assert not (project / "data" / "raw").exists()
    assert not (project / "metrics").exists()


def test_checksum_mismatch_of_external_file(project, capsys):
    source = external_dataset(project / "data" / "external" / "mine.h5ad")
    assert run(project, source="data/external/mine.h5ad", sha256="ab" * 32) == 2
    assert error_line(capsys) == (
        f"error: data: data/external/mine.h5ad: SHA-256 mismatch: expected {'ab' * 32} "
        f"(data.sha256), got {io.sha256_file(source)}"
    )
    assert not (project / "data" / "raw").exists()


def test_malformed_sha256(project, capsys):
    assert run(project, sha256="xyz") == 2
    assert error_line(capsys) == (
        "error: data: params.yaml: data.sha256: expected 64 hexadecimal digits, got 'xyz'"
    )


def test_invalid_external_file_writes_nothing(project, capsys):
    bad = project / "data" / "external" / "normalised.h5ad"
    adata = ad.read_h5ad(external_dataset(project / "tmp.h5ad"))
    del adata.raw
    io.write_h5ad(adata, bad)
    assert run(project, source="data/external/normalised.h5ad") == 2
    assert error_line(capsys) == (
        "error: data: data/external/normalised.h5ad: X holds non-integer values (e.g. 0.6931) "
        "and there is no raw.X: raw counts are required"
    )
    assert not (project / "data" / "raw").exists()
    assert not list((project / "data").glob(".*tmp-*"))


def test_external_file_is_copied_where_hard_links_fail(project, monkeypatch):
    source = external_dataset(project / "data" / "external" / "mine.h5ad")

    def refuse(src, dst, *args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    assert run(project, source="data/external/mine.h5ad") == 0
    copied = project / "data" / "raw" / "dataset.h5ad"
    assert copied.read_bytes() == source.read_bytes()
    assert not os.path.samefile(copied, source)
    metrics = json.loads((project / "metrics" / "data.json").read_text())
    assert metrics["adopted"] == "copy" and metrics["sha256_checked"] is False
