"""The counts module: the one reader of raw counts and of the QC cell table."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from immune_aging import cell_tables, count_checks, counts, io, selection
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


@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
def test_read_counts_reads_the_genes_asked_for(tmp_path, layout, monkeypatch):
    path = write(tmp_path, layout=layout)
    keep = np.array([True, False, True, True])
    genes = np.array([False, True, True, True])
    matrix, read = counts.read_counts(path, "X", keep, genes=genes, drop_empty_genes=False)
    assert read.tolist() == genes.tolist()
    np.testing.assert_array_equal(matrix.toarray(), X[keep][:, genes])
    assert matrix.dtype == np.float32 and matrix.has_sorted_indices
    expressed, read = counts.read_counts(path, "X", keep, genes=genes)
    assert read.tolist() == [False, False, True, True]  # G1 has no count
    np.testing.assert_array_equal(expressed.toarray(), X[keep][:, read])
    monkeypatch.setattr(counts, "BLOCK_VALUES", 1)
    blocks = list(counts.kept_blocks(path, "X", keep, genes=genes))
    assert [b.counts.shape for b in blocks] == [(1, 3)] * 3
    parts, _ = counts.read_counts(path, "X", keep, genes=genes, drop_empty_genes=False)
    assert (parts != matrix).nnz == 0
    with pytest.raises(InputError, match="X has 4 columns, var has 3"):
        counts.read_counts(path, "X", keep, genes=genes[1:])


def test_expressed_genes_streams_the_kept_cells(tmp_path):
    path = write(tmp_path)
    assert counts.expressed_genes(path, "X", np.ones(4, bool)).tolist() == [1, 0, 1, 1]
    assert counts.expressed_genes(path, "X", np.array([1, 1, 0, 0], bool)).tolist() == [
        True,
        False,
        False,
        True,
    ]


def write_selection(tmp_path, source, keep, genes, location="X"):
    from immune_aging.analysis import filtering

    adata = io.read_h5ad(source, backed=True)
    try:
        obs = adata.obs.assign(donor_id="d", cell_type="t", development_stage="s", sex="female")
        var = adata.var.copy()
    finally:
        adata.file.close()
    chosen = filtering.assemble_selection(
        obs, var, keep=np.asarray(keep, bool), genes=np.asarray(genes, bool), location=location
    )
    io.write_h5ad(chosen, tmp_path / "selection.h5ad")
    return tmp_path / "selection.h5ad"


def test_read_selection_reads_the_source_counts(tmp_path):
    source = write(tmp_path)
    path = write_selection(tmp_path, source, [1, 0, 1, 1], [1, 0, 1, 1])
    chosen = selection.read_selection(path, source)
    assert chosen.obs_names.tolist() == ["a", "c", "d"]
    assert "row" not in chosen.obs.columns and "column" not in chosen.var.columns
    assert chosen.rows.tolist() == [0, 2, 3] and chosen.columns.tolist() == [0, 2, 3]
    np.testing.assert_array_equal(chosen.read().toarray(), X[[0, 2, 3]][:, [0, 2, 3]])
    subset = np.array([False, True, True])
    np.testing.assert_array_equal(chosen.read(subset).toarray(), X[[2, 3]][:, [0, 2, 3]])


def test_read_selection_reads_raw_x(tmp_path):
    adata = ad.AnnData(
        X=sparse.csr_matrix(np.log1p(X)),
        obs=pd.DataFrame(index=CELLS),
        var=pd.DataFrame({"feature_name": list("WXYZ")}, index=[f"G{i}" for i in range(4)]),
    )
    adata.raw = ad.AnnData(X=sparse.csr_matrix(X), obs=adata.obs, var=adata.var)
    io.write_h5ad(adata, tmp_path / "x.h5ad")
    path = write_selection(tmp_path, tmp_path / "x.h5ad", [1, 1, 1, 1], [1, 0, 1, 1], "raw.X")
    chosen = selection.read_selection(path, tmp_path / "x.h5ad")
    np.testing.assert_array_equal(chosen.read().toarray(), X[:, [0, 2, 3]])


def test_read_selection_refuses_another_source(tmp_path):
    source = write(tmp_path)
    path = write_selection(tmp_path, source, [1, 0, 1, 1], [1, 0, 1, 1])
    (tmp_path / "other").mkdir()
    other = tmp_path / "other" / "x.h5ad"
    io.write_h5ad(ad.read_h5ad(source)[:3].copy(), other)  # one cell fewer
    with pytest.raises(InputError) as err:
        selection.read_selection(path, other)
    assert str(err.value) == (
        f"{path}: made from an input of 4 cells x 4 genes, but {other} has 3 x 4: "
        "rerun the filter stage"
    )
    renamed = ad.read_h5ad(source)
    renamed.obs_names = ["a", "b", "x", "d"]
    io.write_h5ad(renamed, tmp_path / "other" / "renamed.h5ad")
    with pytest.raises(InputError) as err:
        selection.read_selection(path, tmp_path / "other" / "renamed.h5ad")
    assert str(err.value) == (
        f"{path}: cell 'c' is 'x' in {tmp_path / 'other' / 'renamed.h5ad'} (position 2): "
        "made from another input, rerun the filter stage"
    )
    renamed = ad.read_h5ad(source)
    renamed.var_names = ["G0", "G1", "G2", "G9"]
    io.write_h5ad(renamed, tmp_path / "other" / "genes.h5ad")
    with pytest.raises(InputError, match=r"gene 'G3' is 'G9' in .* \(position 3\)"):
        selection.read_selection(path, tmp_path / "other" / "genes.h5ad")
    raw_path = write_selection(tmp_path, source, [1, 0, 1, 1], [1, 0, 1, 1], "raw.X")
    with pytest.raises(InputError, match=r"made from the counts in raw.X, but .* has no raw.X"):
        selection.read_selection(raw_path, source)


def test_read_selection_refuses_a_file_that_is_not_one(tmp_path):
    source = write(tmp_path)
    with pytest.raises(InputError) as err:
        selection.read_selection(source, source)
    assert str(err.value) == (
        f"{source}: uns 'selection' (location, n_obs, n_vars) missing: not a selection of the "
        "filter stage"
    )
    path = write_selection(tmp_path, source, [1, 0, 1, 1], [1, 0, 1, 1])
    broken = ad.read_h5ad(path)
    broken.obs["row"] = [0, 3, 2]
    io.write_h5ad(broken, path)
    with pytest.raises(InputError, match=r"obs column 'row' is not strictly ascending$"):
        selection.read_selection(path, source)
    broken.obs["row"] = [0, 2, 4]
    io.write_h5ad(broken, path)
    with pytest.raises(InputError, match=r"obs column 'row' holds positions outside 0..3$"):
        selection.read_selection(path, source)


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
    assert count_checks.count_problem(values) == problem


def write_cells(tmp_path, table):
    io.write_parquet(table, tmp_path / "cells.parquet")
    return tmp_path / "cells.parquet"


def test_read_keep_aligns_with_the_matrix_order(tmp_path):
    table = pd.DataFrame({"cell_id": ["d", "c", "b", "a"], "keep": [True, False, True, False]})
    keep = cell_tables.read_keep(write_cells(tmp_path, table), CELLS, "x.h5ad")
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
        (
            pd.DataFrame({"cell_id": list("abcd"), "keep": [False] * 4}),
            "no cell has keep == True",
        ),
    ],
)
def test_read_keep_faults_are_one_line_each(tmp_path, table, message):
    path = write_cells(tmp_path, table)
    with pytest.raises(InputError) as err:
        cell_tables.read_keep(path, CELLS, "x.h5ad")
    assert str(err.value) == f"{path}: {message}"


def test_read_cells_accepts_index_or_column(tmp_path):
    as_index = pd.DataFrame(
        {"predicted_doublet": [False, True]}, index=pd.Index([1, 2], name="cell_id")
    )
    table = cell_tables.read_cells(write_cells(tmp_path, as_index), ["predicted_doublet"])
    assert table.index.tolist() == ["1", "2"] and table.index.name == "cell_id"


# --------------------------------------------------------------------------- batches


def test_group_batches_hold_whole_groups_in_order_of_first_cell():
    labels = np.array(["b", "a", "b", "c", "a", "c", "c", "d"])
    batches = selection.group_batches(labels, 4)
    # b (2 cells) + a (2) fill the first batch; c (3) + d (1) the second
    assert [b.tolist() for b in batches] == [[0, 1, 2, 4], [3, 5, 6, 7]]
    assert [b.tolist() for b in selection.group_batches(labels, 2)] == [
        [0, 2],
        [1, 4],
        [3, 5, 6],  # a group larger than a batch is a batch of its own
        [7],
    ]
    assert [b.tolist() for b in selection.group_batches(labels, 100)] == [list(range(8))]
    assert selection.group_batches(np.array([], dtype=str), 5) == []


def test_batch_cells_from_the_environment(monkeypatch):
    monkeypatch.delenv(selection.BATCH_CELLS_ENV, raising=False)
    assert selection.batch_cells() == selection.BATCH_CELLS
    monkeypatch.setenv(selection.BATCH_CELLS_ENV, "12")
    assert selection.batch_cells() == 12
    for bad in ("0", "-3", "1.5", "many"):
        monkeypatch.setenv(selection.BATCH_CELLS_ENV, bad)
        with pytest.raises(InputError, match="expected a positive number of cells"):
            selection.batch_cells()


def test_kept_blocks_read_only_the_span_of_the_kept_cells(tmp_path, monkeypatch):
    path = write(tmp_path)
    with h5py.File(path, "r+") as fh:
        fh["X/data"][0] = 0.5  # cell a: not a count
    monkeypatch.setattr(counts, "BLOCK_VALUES", 1)
    keep = np.array([False, False, True, True])
    blocks = list(counts.kept_blocks(path, "X", keep))  # row 0 is never read
    assert [b.start for b in blocks] == [2, 3]
    assert list(counts.kept_blocks(path, "X", np.zeros(4, dtype=bool))) == []
    with pytest.raises(InputError, match="non-integer values"):
        list(counts.kept_blocks(path, "X", np.array([True, False, False, True])))


@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
def test_selection_reads_batches_of_groups_and_gene_subsets(tmp_path, monkeypatch, layout):
    source = write(tmp_path, layout=layout)
    path = write_selection(tmp_path, source, [1, 1, 1, 1], [1, 0, 1, 1])
    chosen = selection.read_selection(path, source)
    genes = np.array([True, False, True])  # of the selection's genes: G0 and G3
    np.testing.assert_array_equal(chosen.read(genes=genes).toarray(), X[:, [0, 3]])
    keep = np.array([True, False, True, True])
    np.testing.assert_array_equal(
        chosen.read(keep, genes=genes).toarray(), X[[0, 2, 3]][:, [0, 3]]
    )
    with pytest.raises(ValueError, match="genes has 2 entries"):
        chosen.read(genes=genes[:2])
    monkeypatch.setattr(counts, "BLOCK_VALUES", 1)
    labels = np.array(["x", "y", "x"])  # of the kept cells a, c, d: x not contiguous
    batches = list(chosen.read_batches(labels, keep=keep, max_cells=1))
    assert [p.tolist() for p, _ in batches] == [[0, 2], [1]]  # positions among the kept
    np.testing.assert_array_equal(batches[0][1].toarray(), X[[0, 3]][:, [0, 2, 3]])
    np.testing.assert_array_equal(batches[1][1].toarray(), X[[2]][:, [0, 2, 3]])
    assert all(c.dtype == np.float32 for _, c in batches)
    with pytest.raises(ValueError, match="labels has 2 entries for 3 cells"):
        list(chosen.read_batches(labels[:2], keep=keep))
