"""Atomic outputs, deterministic writers, GMT and provenance."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from immune_aging import io, provenance
from immune_aging.errors import InputError


def test_outputs_publish_together(tmp_path):
    a, b = tmp_path / "x" / "a.json", tmp_path / "plots"
    with io.Outputs() as out:
        io.write_json({"k": 1}, out.file(a))
        (out.dir(b) / "p.csv").write_text("x\n1\n")
        assert not a.exists() and not b.exists()
    assert io.read_json(a) == {"k": 1}
    assert (b / "p.csv").read_text() == "x\n1\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "p.csv", "plots", "x"]


def test_outputs_nothing_written_on_error(tmp_path):
    a = tmp_path / "a.json"
    with pytest.raises(RuntimeError), io.Outputs() as out:
        io.write_json({"k": 1}, out.file(a))
        (out.dir(tmp_path / "plots") / "p.csv").write_text("1")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_outputs_replace_older_results(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "old.png").write_text("old")
    with io.Outputs() as out:
        (out.dir(tmp_path / "plots") / "new.png").write_text("new")
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["new.png"]


def test_write_json_is_deterministic_and_nan_safe(tmp_path):
    path = tmp_path / "m.json"
    io.write_json({"b": np.float32(1.5), "a": float("nan"), "c": [np.int64(2), np.inf]}, path)
    assert path.read_text() == '{\n  "a": null,\n  "b": 1.5,\n  "c": [\n    2,\n    null\n  ]\n}\n'


def test_read_json_errors(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        io.read_json(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        io.read_json(bad)


def test_h5ad_roundtrip_is_byte_identical(tmp_path):
    X = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]], dtype=np.float32))
    adata = ad.AnnData(
        X, obs=pd.DataFrame(index=["c1", "c2"]), var=pd.DataFrame(index=["g1", "g2", "g3"])
    )
    io.write_h5ad(adata, tmp_path / "a.h5ad")
    io.write_h5ad(adata, tmp_path / "b.h5ad")
    assert (tmp_path / "a.h5ad").read_bytes() == (tmp_path / "b.h5ad").read_bytes()
    back = io.read_h5ad(tmp_path / "a.h5ad")
    assert (back.X != X).nnz == 0


def test_h5ad_outputs_open_without_hdf5plugin(tmp_path):
    """A written h5ad opens in a fresh interpreter that imports anndata only."""
    X = sp.csr_matrix(np.arange(12, dtype=np.float32).reshape(4, 3))
    adata = ad.AnnData(
        X,
        obs=pd.DataFrame({"donor_id": pd.Categorical(["a", "a", "b", "b"])}, index=list("wxyz")),
        var=pd.DataFrame({"feature_name": ["A", "B", "C"]}, index=["g1", "g2", "g3"]),
    )
    adata.obsm["X_pca"] = np.ones((4, 2), dtype=np.float32)
    adata.obsp["distances"] = sp.csr_matrix(np.eye(4, dtype=np.float32))
    adata.uns["provenance"] = {"stage": "test", "inputs": "{}"}
    path = tmp_path / "out.h5ad"
    io.write_h5ad(adata, path)
    code = (
        "import sys, anndata\n"
        "a = anndata.read_h5ad(sys.argv[1])\n"
        "assert 'hdf5plugin' not in sys.modules\n"
        "print(a.shape, float(a.X.sum()), float(a.obsm['X_pca'].sum()), a.obsp['distances'].nnz)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["(4,", "3)", "66.0", "8.0", "4"]
    with h5py.File(path) as fh:  # and every dataset is compressed (not stored plain)
        assert fh["X/data"].compression == "gzip"


def test_read_h5ad_refuses_other_files(tmp_path):
    path = tmp_path / "x.h5ad"
    path.write_text("not hdf5")
    with pytest.raises(InputError, match=r"x\.h5ad: not an h5ad file \(no HDF5 signature\)"):
        io.read_h5ad(path)
    with pytest.raises(InputError, match="file not found"):
        io.read_h5ad(tmp_path / "missing.h5ad")


def test_gmt_roundtrip(tmp_path):
    path = tmp_path / "s.gmt"
    io.write_gmt({"UP": ["A", "B"], "DOWN": ["C"]}, path, {"UP": "planted"})
    assert path.read_text() == "UP\tplanted\tA\tB\nDOWN\t\tC\n"
    assert io.read_gmt(path) == {"UP": ["A", "B"], "DOWN": ["C"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no gene set"),
        ("\n\n", "holds no gene set"),
        ("SET\tdesc\n", "line 1: expected"),
    ],
)
def test_gmt_errors(tmp_path, text, message):
    path = tmp_path / "s.gmt"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        io.read_gmt(path)


def test_provenance_has_nothing_volatile(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("x")
    rec = provenance.record("qc", {"a": 1}, [f])
    assert set(rec) == {"stage", "params", "packages", "inputs"}
    assert json.loads(rec["inputs"]) == {f.as_posix(): io.sha256_file(f)}
    assert rec["packages"]["scanpy"] != "not installed"
    assert rec == provenance.record("qc", {"a": 1}, [f])


def test_outputs_remove_temporaries_of_a_killed_run(tmp_path):
    stale = tmp_path / ".a.json.tmp-99999"
    stale.write_text("half written")
    with io.Outputs() as out:
        io.write_json({}, out.file(tmp_path / "a.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
