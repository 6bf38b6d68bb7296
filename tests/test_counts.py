"""The counts module: the one reader of raw counts and of the QC cell table."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from immune_aging import counts, io
from immune_aging.errors import InputError

X = np.array(
    [
        [1, 0, 0, 2],
        [0, 0, 0, 0],
        [3, 0, 1, 0],
        [0, 0, 0, 5],
    ],
    dtype=np.float32,
)
CELLS = pd.Index(["a", "b", "c", "d"])


def write(tmp_path, matrix=X, *, layout="csr"):
    if layout == "csr":
        x = sparse.csr_matrix(matrix)
    elif layout == "csc":
        x = sparse.csc_matrix(matrix)
    else:
        x = np.asarray(matrix)
    adata = ad.AnnData(
        X=x,
        obs=pd.DataFrame(index=CELLS),
        var=pd.DataFrame({"feature_name": list("WXYZ")}, index=[f"G{i}" for i in range(4)]),
    )
    io.write_h5ad(adata, tmp_path / "x.h5ad")
    return tmp_path / "x.h5ad"


@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
def test_read_counts_keeps_cells_and_drops_empty_genes(tmp_path, layout):
    path = write(tmp_path, layout=layout)
    keep = np.array([True, True, False, True])
    matrix, genes = counts.read_counts(path, "X", keep)
    assert genes.tolist() == [True, False, False, True]
    np.testing.assert_array_equal(matrix.toarray(), X[keep][:, genes])
    assert matrix.dtype == np.float32 and matrix.has_sorted_indices
    every, genes = counts.read_counts(path, "X", keep, drop_empty_genes=False)
    assert genes.all() and every.shape == (3, 4)


def test_read_counts_is_the_same_whatever_the_block_size(tmp_path, monkeypatch):
    path = write(tmp_path)
    keep = np.array([True, False, True, True])
    whole, _ = counts.read_counts(path, "X", keep)
    monkeypatch.setattr(counts, "BLOCK_VALUES", 1)
    blocks = list(counts.kept_blocks(path, "X", keep))
    assert [b.rows.tolist() for b in blocks] == [[0], [2], [3]]  # row 1 (dropped) skipped
    parts, _ = counts.read_counts(path, "X", keep)
    assert (parts != whole).nnz == 0


def test_read_counts_checks_every_value_it_reads(tmp_path):
    path = write(tmp_path)
    with h5py.File(path, "r+") as fh:
        fh["X/data"][-1] = 0.5  # the last stored value: cell d
    keep = np.ones(4, dtype=bool)
    with pytest.raises(InputError) as err:
        counts.read_counts(path, "X", keep)
    assert (
        str(err.value) == f"{path}: X holds non-integer values (e.g. 0.5): raw counts are required"
    )
    keep[-1] = False  # a dropped cell's values are not read
    matrix, _ = counts.read_counts(path, "X", keep)
    assert matrix.shape == (3, 3)


def test_read_counts_refuses_a_mask_of_another_length(tmp_path):
    path = write(tmp_path)
    with pytest.raises(InputError, match="X has 4 rows, obs has 3"):
        counts.read_counts(path, "X", np.ones(3, dtype=bool))


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (np.array([0, 3, 7]), None),
        (np.array([0.0, 2.0]), None),
        (np.array([], dtype=np.float32), None),
        (np.array([1.0, 2.5]), "non-integer values (e.g. 2.5)"),
        (np.array([1.0, -2.0]), "negative values (e.g. -2)"),
        (np.array([-3, 1]), "negative values (e.g. -3)"),
        (np.array([1.0, np.nan]), "non-finite values (e.g. nan)"),
        (np.array(["1", "2"]), "values of type <U1"),
    ],
)
def test_count_problem(values, problem):
    assert counts.count_problem(values) == problem


def write_cells(tmp_path, table):
    io.write_parquet(table, tmp_path / "cells.parquet")
    return tmp_path / "cells.parquet"


def test_read_keep_aligns_with_the_matrix_order(tmp_path):
    table = pd.DataFrame({"cell_id": ["d", "c", "b", "a"], "keep": [True, False, True, False]})
    keep = counts.read_keep(write_cells(tmp_path, table), CELLS, "x.h5ad")
    assert keep.tolist() == [False, True, False, True]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pd.DataFrame({"keep": [True] * 4}), "no 'cell_id' index or column"),
        (pd.DataFrame({"cell_id": list("abcd")}), "column 'keep' missing"),
        (
            pd.DataFrame({"cell_id": list("abcd"), "keep": [1, 0, 1, 1]}),
            "column 'keep' must be boolean, got int64",
        ),
        (
            pd.DataFrame(
                {"cell_id": list("abcd"), "keep": pd.array([True, None, True, True], "boolean")}
            ),
            "column 'keep' has missing values",
        ),
        (
            pd.DataFrame({"cell_id": list("abc"), "keep": [True] * 3}),
            "1 cells of x.h5ad are not listed (e.g. 'd'); expected one row per cell",
        ),
        (
            pd.DataFrame({"cell_id": [*"abcd", "e"], "keep": [True] * 5}),
            "1 cells are not in x.h5ad (e.g. 'e')",
        ),
        (
            pd.DataFrame({"cell_id": list("abca"), "keep": [True] * 4}),
            "cell_id 'a' repeated",
        ),
    ],
)
def test_read_keep_faults_are_one_line_each(tmp_path, table, message):
    path = write_cells(tmp_path, table)
    with pytest.raises(InputError) as err:
        counts.read_keep(path, CELLS, "x.h5ad")
    assert str(err.value) == f"{path}: {message}"


def test_read_cells_accepts_index_or_column(tmp_path):
    as_index = pd.DataFrame(
        {"predicted_doublet": [False, True]}, index=pd.Index([1, 2], name="cell_id")
    )
    table = counts.read_cells(write_cells(tmp_path, as_index), ["predicted_doublet"])
    assert table.index.tolist() == ["1", "2"] and table.index.name == "cell_id"
