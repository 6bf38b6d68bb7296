import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from tests.builders import tiny_params, write_params, write_selected

from immune_aging import counts, executor, io, selection
from immune_aging.analysis import age, pseudobulk, pseudobulk_plots, pseudobulk_samples
from immune_aging.errors import InputError
from immune_aging.stages import pseudobulk as stage

#: donor, cell type and 3 gene counts of each of 9 cells
CELLS = [
    ("D1", "T", [1, 0, 2]),
    ("D1", "T", [0, 1, 0]),
    ("D1", "B", [5, 0, 0]),
    ("D1", "B", [1, 1, 1]),
    ("D2", "T", [2, 2, 2]),  # D2 has a single T cell
    ("D2", "B", [0, 0, 7]),
    ("D2", "B", [3, 0, 0]),
    ("D3", "T", [4, 0, 1]),  # D3 has no B cell
    ("D3", "T", [0, 3, 0]),
]
DONORS = {
    "D1": ("male", "63-year-old human stage"),
    "D2": ("female", "80 year-old and over stage"),
    "D3": ("female", "unknown"),
}


def cells_adata(sparse_x=True):
    obs = pd.DataFrame(
        {
            "donor_id": [d for d, _, _ in CELLS],
            "cell_type": [t for _, t, _ in CELLS],
            "development_stage": [DONORS[d][1] for d, _, _ in CELLS],
            "sex": [DONORS[d][0] for d, _, _ in CELLS],
        },
        index=[f"cell{i}" for i in range(len(CELLS))],
    ).astype("category")
    x = np.array([c for _, _, c in CELLS], dtype=np.float32)
    var = pd.DataFrame(
        {"feature_name": ["CD3E", "MS4A1", "XIST"]}, index=["ENSG01", "ENSG02", "ENSG03"]
    )
    return ad.AnnData(X=sparse.csr_matrix(x) if sparse_x else x, obs=obs, var=var)


# --------------------------------------------------------------------------- sums


@pytest.mark.parametrize("sparse_x", [True, False])
def test_sum_counts_per_cell_type_and_donor(sparse_x):
    adata = cells_adata(sparse_x)
    before = adata.copy()
    pb = pseudobulk.sum_counts(adata)
    assert list(pb.obs_names) == ["B|D1", "B|D2", "T|D1", "T|D2", "T|D3"]
    np.testing.assert_array_equal(pb.X, [[6, 1, 1], [3, 0, 7], [1, 1, 2], [2, 2, 2], [4, 3, 1]])
    assert pb.obs["n_cells"].tolist() == [2, 2, 2, 1, 2]
    assert pb.obs["cell_type"].tolist() == ["B", "B", "T", "T", "T"]
    assert pb.obs["donor_id"].tolist() == ["D1", "D2", "D1", "D2", "D3"]
    assert pb.var["feature_name"].tolist() == ["CD3E", "MS4A1", "XIST"]
    np.testing.assert_array_equal(
        adata.X.toarray() if sparse_x else adata.X, before.X.toarray() if sparse_x else before.X
    )
    pd.testing.assert_frame_equal(adata.obs, before.obs)


def test_combine_sums_of_chunks_equals_sum_of_all():
    adata = cells_adata()
    whole = pseudobulk.sum_counts(adata)
    parts = [pseudobulk.sum_counts(adata[a : a + 4]) for a in range(0, adata.n_obs, 4)]
    combined = pseudobulk.combine_sums(parts)
    assert list(combined.obs_names) == list(whole.obs_names)
    np.testing.assert_array_equal(combined.X, whole.X)
    pd.testing.assert_frame_equal(combined.obs, whole.obs, check_dtype=False)


def test_combine_sums_consumes_a_generator_once_in_any_order():
    adata = cells_adata()
    whole = pseudobulk.sum_counts(adata)
    starts = list(range(0, adata.n_obs, 3))
    consumed = []

    def parts(order):
        for a in order:
            consumed.append(a)
            yield pseudobulk.sum_counts(adata[a : a + 3])

    forward = pseudobulk.combine_sums(parts(starts))
    assert consumed == starts  # each part drawn once, lazily
    backward = pseudobulk.combine_sums(parts(starts[::-1]))
    for combined in (forward, backward):
        np.testing.assert_array_equal(combined.X, whole.X)
        pd.testing.assert_frame_equal(combined.obs, whole.obs, check_dtype=False)
    with pytest.raises(ValueError, match="no parts"):
        pseudobulk.combine_sums(iter([]))


def test_sum_counts_of_no_cells_combines_as_nothing():
    adata = cells_adata()
    empty = pseudobulk.sum_counts(adata[:0])
    assert empty.shape == (0, 3)
    whole = pseudobulk.sum_counts(adata)
    combined = pseudobulk.combine_sums([empty, whole])
    np.testing.assert_array_equal(combined.X, whole.X)
    assert list(combined.obs_names) == list(whole.obs_names)


def test_combine_sums_refuses_different_genes():
    adata = cells_adata()
    a = pseudobulk.sum_counts(adata)
    b = pseudobulk.sum_counts(adata[:, :2])
    with pytest.raises(ValueError, match="different genes"):
        pseudobulk.combine_sums([a, b])


@pytest.mark.parametrize("max_values", [1, 4, 7, 100])
def test_sum_batch_in_chunks_equals_sum_of_all(max_values):
    adata = cells_adata()
    whole = pseudobulk.sum_counts(adata)
    batch = pseudobulk_samples.sum_batch(
        np.arange(adata.n_obs), adata.X, adata.obs, var=adata.var, max_values=max_values
    )
    assert list(batch.obs_names) == list(whole.obs_names)
    np.testing.assert_array_equal(batch.X, whole.X)
    assert batch.X.dtype == np.float64
    pd.testing.assert_frame_equal(batch.obs, whole.obs, check_dtype=False)
    assert list(batch.var.columns) == ["feature_name"]


def test_row_chunks_hold_at_most_so_many_values():
    indptr = np.array([0, 2, 4, 10, 11, 11, 12])  # rows of 2, 2, 6, 1, 0 and 1 values
    assert pseudobulk_samples._row_chunks(indptr, 4) == [(0, 2), (2, 3), (3, 6)]
    assert pseudobulk_samples._row_chunks(indptr, 1) == [(0, 1), (1, 2), (2, 3), (3, 5), (5, 6)]
    assert pseudobulk_samples._row_chunks(indptr, 100) == [(0, 6)]
    assert pseudobulk_samples._row_chunks(np.array([0]), 4) == [(0, 0)]


def test_missing_labels_are_refused():
    adata = cells_adata()
    adata.obs["donor_id"] = adata.obs["donor_id"].astype(object)
    adata.obs.iloc[0, adata.obs.columns.get_loc("donor_id")] = None
    with pytest.raises(InputError) as err:
        pseudobulk.sum_counts(adata)
    assert str(err.value) == "obs column 'donor_id': missing values"


# --------------------------------------------------------------------------- filters


def test_filter_samples_min_cells_then_min_samples():
    pb = pseudobulk.sum_counts(cells_adata())
    kept, report = pseudobulk.filter_samples(pb, min_cells=2, min_samples_per_cell_type=2)
    # T|D2 has 1 cell: dropped; T keeps D1 and D3; B keeps D1 and D2
    assert list(kept.obs_names) == ["B|D1", "B|D2", "T|D1", "T|D3"]
    assert report.loc["T", "samples_total"] == 3
    assert report.loc["T", "samples_few_cells"] == 1
    assert report.loc["T", "samples_kept"] == 2
    assert report["kept"].all()
    assert pb.n_obs == 5  # input untouched


def test_filter_samples_drops_cell_types_with_few_samples():
    pb = pseudobulk.sum_counts(cells_adata())
    kept, report = pseudobulk.filter_samples(pb, min_cells=2, min_samples_per_cell_type=3)
    assert kept.n_obs == 0
    assert not report["kept"].any()
    assert report.loc["B", "reason"] == "2 samples with >= 2 cells (< 3)"
    assert report.loc["B", "samples_kept"] == 0


def test_filter_samples_keeps_one_type_drops_other():
    pb = pseudobulk.sum_counts(cells_adata())
    kept, report = pseudobulk.filter_samples(pb, min_cells=1, min_samples_per_cell_type=3)
    assert list(kept.obs_names) == ["T|D1", "T|D2", "T|D3"]
    assert report.loc["T", "kept"] and not report.loc["B", "kept"]
    assert report.loc["T", "reason"] == ""


# --------------------------------------------------------------------------- donors


def test_donor_table_parses_ages():
    adata = cells_adata()
    obs_before = adata.obs.copy()
    donors = age.donor_table(adata.obs, age_80_and_over=85.0)
    assert list(donors.index) == ["D1", "D2", "D3"]
    assert donors.index.name == "donor_id"
    assert list(donors.columns) == ["sex", "development_stage", "age", "age_form"]
    np.testing.assert_array_equal(donors["age"].to_numpy(), [63.0, 85.0, np.nan])
    assert donors["age_form"].tolist() == ["years", "and_over", "unknown"]
    pd.testing.assert_frame_equal(adata.obs, obs_before)


def test_donor_table_uses_numeric_age_column():
    obs = cells_adata().obs.copy()
    obs["age"] = obs["donor_id"].map({"D1": 30.0, "D2": 40.0, "D3": 50.0}).astype(float)
    donors = age.donor_table(obs, age_80_and_over=80.0)
    assert donors["age"].tolist() == [30.0, 40.0, 50.0]
    assert set(donors["age_form"]) == {"age_column"}


def test_donor_table_refuses_two_sexes_for_one_donor():
    obs = cells_adata().obs.copy()
    obs["sex"] = obs["sex"].astype(object)
    obs.iloc[1, obs.columns.get_loc("sex")] = "female"
    with pytest.raises(InputError) as err:
        age.donor_table(obs, age_80_and_over=80.0)
    assert str(err.value) == (
        "obs column 'sex': donor 'D1' has 2 different values; expected one per donor"
    )


def test_donor_table_refuses_an_unreadable_age():
    obs = cells_adata().obs.copy()
    obs["development_stage"] = obs["development_stage"].cat.rename_categories(
        {"unknown": "63 yrs"}
    )
    with pytest.raises(InputError, match="development_stage '63 yrs': cannot read an age"):
        age.donor_table(obs, age_80_and_over=80.0)


def test_make_pseudobulk_carries_donor_metadata():
    adata = cells_adata()
    donors = age.donor_table(adata.obs, age_80_and_over=80.0)
    pb, report = pseudobulk.make_pseudobulk(
        [pseudobulk.sum_counts(adata)], donors, min_cells=2, min_samples_per_cell_type=2
    )
    assert list(pb.obs.columns) == [
        "cell_type",
        "donor_id",
        "n_cells",
        "sex",
        "development_stage",
        "age",
    ]
    assert list(pb.obs_names) == ["B|D1", "B|D2", "T|D1", "T|D3"]
    assert pb.obs["sex"].tolist() == ["male", "female", "male", "female"]
    np.testing.assert_array_equal(pb.obs["age"].to_numpy(), [63.0, 80.0, 63.0, np.nan])
    assert pb.X.dtype == np.float32
    np.testing.assert_array_equal(pb.X, [[6, 1, 1], [3, 0, 7], [1, 1, 2], [4, 3, 1]])
    assert report["kept"].all()


def test_finalize_counts_keeps_float64_for_huge_sums():
    pb = pseudobulk.sum_counts(cells_adata())
    pb.X[0, 0] = 2.0**24 + 1
    assert pseudobulk.finalize_counts(pb).X.dtype == np.float64
    pb.X[0, 0] = 2.0**24 - 1
    assert pseudobulk.finalize_counts(pb).X.dtype == np.float32


def test_summary_and_plots():
    adata = cells_adata()
    donors = age.donor_table(adata.obs, age_80_and_over=80.0)
    pb, report = pseudobulk.make_pseudobulk(
        [pseudobulk.sum_counts(adata)], donors, min_cells=1, min_samples_per_cell_type=3
    )
    got = pseudobulk.summary(pb, report, donors)
    assert got["samples"] == 3
    assert got["samples_per_cell_type"] == {"T": 3}
    assert got["dropped_cell_types"] == {"B": "2 samples with >= 1 cells (< 3)"}
    assert got["donors_unknown_age"] == 1
    assert got["donors_unknown_age_ids"] == ["D3"]
    assert got["age_forms"]["and_over"] == 1
    assert got["age_forms"]["years"] == 1
    assert got["age_forms"]["unknown"] == 1
    assert pseudobulk_plots.plot_samples(report, min_samples_per_cell_type=3).axes
    assert pseudobulk_plots.plot_ages(donors, age_80_and_over=80.0).axes


# --------------------------------------------------------------------------- stage


def write_inputs(tmp_path, adata=None, keep=None, cells=None):
    adata = cells_adata() if adata is None else adata
    write_selected(adata, tmp_path)
    if cells is None:
        keep = np.ones(adata.n_obs, dtype=bool) if keep is None else keep
        cells = pd.DataFrame(
            {"n_genes": 3, "keep": keep}, index=pd.Index(adata.obs_names, name="cell_id")
        )
    io.write_parquet(cells, tmp_path / "cells.parquet")


def run_stage(tmp_path, monkeypatch, **pb_params):
    """Run the stage in ``tmp_path`` with relative paths, as dvc does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", "logs")
    params = tiny_params(pseudobulk={"min_cells": 2, "min_samples_per_cell_type": 2, **pb_params})
    write_params(tmp_path / "params.yaml", params)
    argv = [
        "--params",
        "params.yaml",
        "--selection",
        "selection.h5ad",
        "--raw",
        "dataset.h5ad",
        "--cells",
        "cells.parquet",
        "--out",
        "out/pseudobulk.h5ad",
        "--metrics",
        "out/pseudobulk.json",
        "--plots",
        "out/plots",
    ]
    return stage.main(argv), tmp_path / "out"


def last_error(capsys):
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_stage_writes_pseudobulk_metrics_and_figures(tmp_path, monkeypatch):
    keep = np.ones(len(CELLS), dtype=bool)
    keep[3] = False  # one B cell of D1 fails QC
    write_inputs(tmp_path, keep=keep)
    code, out = run_stage(tmp_path, monkeypatch, min_samples_per_cell_type=2, min_cells=1)
    assert code == 0
    pb = io.read_h5ad(out / "pseudobulk.h5ad")
    assert list(pb.obs_names) == ["B|D1", "B|D2", "T|D1", "T|D2", "T|D3"]
    np.testing.assert_array_equal(pb.X, [[5, 0, 0], [3, 0, 7], [1, 1, 2], [2, 2, 2], [4, 3, 1]])
    assert pb.X.dtype == np.float32
    assert pb.obs["n_cells"].tolist() == [1, 2, 2, 1, 2]
    assert list(pb.var_names) == ["ENSG01", "ENSG02", "ENSG03"]
    assert list(pb.var.columns) == ["feature_name"]
    assert pb.uns["provenance"]["stage"] == "pseudobulk"
    metrics = json.loads((out / "pseudobulk.json").read_text())
    assert metrics["samples"] == 5
    assert metrics["samples_per_cell_type"] == {"B": 2, "T": 3}
    assert metrics["donors_unknown_age"] == 1
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "donor_ages.png",
        "donors.csv",
        "samples_per_cell_type.csv",
        "samples_per_cell_type.png",
    ]
    first = (out / "pseudobulk.h5ad").read_bytes()
    assert run_stage(tmp_path, monkeypatch, min_samples_per_cell_type=2, min_cells=1)[0] == 0
    assert (out / "pseudobulk.h5ad").read_bytes() == first


def test_stage_blocks_give_the_same_sums(tmp_path, monkeypatch):
    write_inputs(tmp_path)
    code, out = run_stage(tmp_path, monkeypatch)
    assert code == 0
    whole = (out / "pseudobulk.h5ad").read_bytes()
    monkeypatch.setattr(counts, "BLOCK_VALUES", 4)  # a few cells per block read
    monkeypatch.setattr(pseudobulk_samples, "SUM_VALUES", 4)  # and per sum
    monkeypatch.setenv(selection.BATCH_CELLS_ENV, "1")  # one donor per batch
    assert run_stage(tmp_path, monkeypatch)[0] == 0
    assert (out / "pseudobulk.h5ad").read_bytes() == whole


def test_stage_output_is_the_same_with_batches_on_dask_workers(tmp_path, monkeypatch, capsys):
    order = [4, 0, 8, 2, 5, 1, 7, 3, 6]  # the donors' cells interleaved
    adata = cells_adata()[order].copy()
    keep = np.ones(len(CELLS), dtype=bool)
    keep[0] = False  # the one T cell of D2 fails QC: D2 has no T sample
    monkeypatch.setenv(selection.BATCH_CELLS_ENV, "4")  # batches: D1; D3 and D2, interleaved
    outputs = []
    for scheduler in ("", "local:2"):
        monkeypatch.setenv(executor.SCHEDULER_VAR, scheduler)
        folder = tmp_path / (scheduler.replace(":", "") or "here")
        folder.mkdir()
        write_inputs(folder, adata, keep=keep)
        code, out = run_stage(folder, monkeypatch, min_cells=1)
        said = capsys.readouterr().err
        assert code == 0, said
        on_dask = "pseudobulk: donor batch: Dask scheduler" in said
        assert on_dask == bool(scheduler), said
        outputs.append([(out / n).read_bytes() for n in ("pseudobulk.h5ad", "pseudobulk.json")])
    assert outputs[0] == outputs[1]
    pb = io.read_h5ad(out / "pseudobulk.h5ad")
    assert list(pb.obs_names) == ["B|D1", "B|D2", "T|D1", "T|D3"]
    np.testing.assert_array_equal(pb.X, [[6, 1, 1], [3, 0, 7], [1, 1, 2], [4, 3, 1]])


def test_stage_reads_the_selected_cells_and_genes_of_the_input(tmp_path, monkeypatch):
    write_inputs(tmp_path)
    code, out = run_stage(tmp_path, monkeypatch)
    assert code == 0
    alone = io.read_h5ad(out / "pseudobulk.h5ad")
    # the same cells and genes among others the filter dropped: cells between and
    # after them, a gene before and one after, all full of counts
    adata = cells_adata()
    n = adata.n_obs
    dropped = ad.AnnData(
        X=sparse.csr_matrix(np.full((n, adata.n_vars), 9, dtype=np.float32)),
        obs=adata.obs.set_axis([f"gone{i}" for i in range(n)]),
        var=adata.var,
    )
    interleaved = np.column_stack([np.arange(n), n + np.arange(n)]).ravel()
    source = ad.concat([adata, dropped])[interleaved].copy()
    source = ad.AnnData(
        X=sparse.hstack(
            [np.full((2 * n, 1), 5), sparse.csr_matrix(source.X), np.full((2 * n, 1), 7)]
        ).tocsr(),
        obs=source.obs,
        var=pd.DataFrame(
            {"feature_name": ["A0", *adata.var["feature_name"], "A9"]},
            index=["E0", *adata.var_names, "E9"],
        ),
    )
    write_selected(adata, tmp_path, source=source)
    monkeypatch.setattr(counts, "BLOCK_VALUES", 5)  # a few cells per block
    assert run_stage(tmp_path, monkeypatch)[0] == 0
    within = io.read_h5ad(out / "pseudobulk.h5ad")
    np.testing.assert_array_equal(within.X, alone.X)
    pd.testing.assert_frame_equal(within.obs, alone.obs)
    pd.testing.assert_frame_equal(within.var, alone.var)


def test_stage_cells_table_with_cell_id_column(tmp_path, monkeypatch):
    adata = cells_adata()
    cells = pd.DataFrame({"cell_id": list(adata.obs_names)[::-1], "keep": True})
    write_inputs(tmp_path, adata, cells=cells)
    code, _ = run_stage(tmp_path, monkeypatch)
    assert code == 0


def test_stage_cells_missing_from_qc_table(tmp_path, monkeypatch, capsys):
    adata = cells_adata()
    cells = pd.DataFrame({"keep": True}, index=pd.Index(adata.obs_names[:-2], name="cell_id"))
    write_inputs(tmp_path, adata, cells=cells)
    code, out = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert last_error(capsys) == (
        "error: pseudobulk: cells.parquet: 2 cells of selection.h5ad are not listed "
        "(e.g. 'cell7'); expected one row per cell"
    )
    assert not out.exists()


def test_stage_cells_not_in_the_selection(tmp_path, monkeypatch, capsys):
    adata = cells_adata()
    ids = [*adata.obs_names, "stranger"]
    cells = pd.DataFrame({"keep": True}, index=pd.Index(ids, name="cell_id"))
    write_inputs(tmp_path, adata, cells=cells)
    code, _ = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert last_error(capsys) == (
        "error: pseudobulk: cells.parquet: 1 cells are not in selection.h5ad (e.g. 'stranger')"
    )


def test_stage_keep_not_boolean(tmp_path, monkeypatch, capsys):
    adata = cells_adata()
    cells = pd.DataFrame({"keep": 1}, index=pd.Index(adata.obs_names, name="cell_id"))
    write_inputs(tmp_path, adata, cells=cells)
    code, _ = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert last_error(capsys) == (
        "error: pseudobulk: cells.parquet: column 'keep' must be boolean, got int64"
    )


def test_stage_keep_nullable_boolean(tmp_path, monkeypatch, capsys):
    adata = cells_adata()
    index = pd.Index(adata.obs_names, name="cell_id")
    keep = pd.array([True] * adata.n_obs, dtype="boolean")
    write_inputs(tmp_path, adata, cells=pd.DataFrame({"keep": keep}, index=index))
    assert run_stage(tmp_path, monkeypatch)[0] == 0
    keep[0] = pd.NA
    write_inputs(tmp_path, adata, cells=pd.DataFrame({"keep": keep}, index=index))
    assert run_stage(tmp_path, monkeypatch)[0] == 2
    assert last_error(capsys) == (
        "error: pseudobulk: cells.parquet: column 'keep' has missing values"
    )


def test_stage_keep_missing(tmp_path, monkeypatch, capsys):
    adata = cells_adata()
    cells = pd.DataFrame({"n_genes": 1}, index=pd.Index(adata.obs_names, name="cell_id"))
    write_inputs(tmp_path, adata, cells=cells)
    code, _ = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert last_error(capsys) == "error: pseudobulk: cells.parquet: column 'keep' missing"


def test_stage_no_cell_id(tmp_path, monkeypatch, capsys):
    cells = pd.DataFrame({"keep": [True] * len(CELLS)})
    write_inputs(tmp_path, cells=cells)
    code, _ = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert last_error(capsys) == "error: pseudobulk: cells.parquet: no 'cell_id' index or column"


def test_stage_no_cell_kept(tmp_path, monkeypatch, capsys):
    write_inputs(tmp_path, keep=np.zeros(len(CELLS), dtype=bool))
    code, _ = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert last_error(capsys) == "error: pseudobulk: cells.parquet: no cell has keep == True"


def test_stage_qc_table_missing(tmp_path, monkeypatch, capsys):
    write_selected(cells_adata(), tmp_path)
    code, _ = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert last_error(capsys) == "error: pseudobulk: cells.parquet: file not found"


def test_stage_missing_sex(tmp_path, monkeypatch, capsys):
    adata = cells_adata()
    del adata.obs["sex"]
    write_inputs(tmp_path, adata)
    code, _ = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert last_error(capsys) == "error: pseudobulk: selection.h5ad: obs column 'sex' missing"


def test_stage_missing_development_stage(tmp_path, monkeypatch, capsys):
    adata = cells_adata()
    del adata.obs["development_stage"]
    write_inputs(tmp_path, adata)
    code, _ = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert last_error(capsys) == (
        "error: pseudobulk: selection.h5ad: obs column 'development_stage' missing "
        "(or a numeric 'age')"
    )


def test_stage_missing_feature_name(tmp_path, monkeypatch, capsys):
    adata = cells_adata()
    del adata.var["feature_name"]
    write_inputs(tmp_path, adata)
    code, _ = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert last_error(capsys) == (
        "error: pseudobulk: selection.h5ad: var column 'feature_name' missing"
    )


def test_stage_refuses_normalised_values(tmp_path, monkeypatch, capsys):
    adata = cells_adata()
    adata.X = adata.X.astype(np.float32) * 0.5
    write_inputs(tmp_path, adata)
    code, out = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert last_error(capsys) == (
        "error: pseudobulk: dataset.h5ad: X holds non-integer values (e.g. 0.5): "
        "raw counts are required"
    )
    assert not out.exists()


def test_stage_bad_age_label(tmp_path, monkeypatch, capsys):
    adata = cells_adata()
    adata.obs["development_stage"] = adata.obs["development_stage"].cat.rename_categories(
        {"unknown": "63 yrs"}
    )
    write_inputs(tmp_path, adata)
    code, _ = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert last_error(capsys).startswith(
        "error: pseudobulk: selection.h5ad: development_stage '63 yrs': cannot read an age"
    )


def test_stage_nothing_survives(tmp_path, monkeypatch, capsys):
    write_inputs(tmp_path)
    code, out = run_stage(tmp_path, monkeypatch, min_samples_per_cell_type=4)
    assert code == 2
    assert last_error(capsys) == (
        "error: pseudobulk: selection.h5ad: no cell type has 4 samples of >= 2 cells "
        "(pseudobulk.min_samples_per_cell_type, pseudobulk.min_cells)"
    )
    assert not out.exists()


def test_censored_ages_assigned_or_dropped():
    obs = pd.DataFrame(
        {
            "donor_id": ["D1", "D2", "D3"],
            "sex": ["male", "female", "male"],
            "development_stage": [
                "63-year-old stage",
                "80 year-old and over stage",
                "unknown",
            ],
        }
    )
    donors = age.donor_table(obs, age_80_and_over=85.0)
    kept = pseudobulk.censor_rule(donors, "assign")
    np.testing.assert_array_equal(kept["age"].to_numpy(), [63.0, 85.0, np.nan])
    dropped = pseudobulk.censor_rule(donors, "drop")
    np.testing.assert_array_equal(dropped["age"].to_numpy(), [63.0, np.nan, np.nan])
    assert donors.loc["D2", "age"] == 85.0  # not modified
    pb = ad.AnnData(np.zeros((3, 1)), obs=pd.DataFrame(index=["a", "b", "c"]))
    pb.obs["donor_id"] = ["D1", "D2", "D3"]
    summary = pseudobulk.summary(
        pb,
        pd.DataFrame(
            {"kept": [True], "samples_kept": [3], "samples_few_cells": [0], "reason": [""]},
            index=["T"],
        ),
        dropped,
        censored_age="drop",
    )
    assert summary["censored_age"] == {"rule": "drop", "donors": 1, "dropped": 1}
    assert summary["donors_unknown_age"] == 2


def test_donor_pools_take_the_main_pool_and_count_splits():
    obs = pd.DataFrame(
        {
            "donor_id": ["D1", "D1", "D1", "D2", "D2", "D3"],
            "pool": ["P2", "P1", "P2", "P3", "P1", "P1"],
        }
    )
    pools, n_split = pseudobulk.donor_pools(obs, "pool")
    # D2 is a tie between P1 and P3: the first name wins
    assert pools.to_dict() == {"D1": "P2", "D2": "P1", "D3": "P1"} and n_split == 2
    assert pseudobulk.donor_pools(obs, None) == (None, 0)
    assert pseudobulk.donor_pools(obs, "pool_number") == (None, 0)


def test_samples_carry_the_pool():
    adata = cells_adata()
    donors = age.donor_table(adata.obs, age_80_and_over=80.0)
    donors["pool"] = ["P1", "P2", "P1"]
    pb, _ = pseudobulk.make_pseudobulk(
        [pseudobulk.sum_counts(adata)], donors, min_cells=2, min_samples_per_cell_type=2
    )
    assert pb.obs["pool"].tolist() == ["P1", "P2", "P1", "P1"]
    assert isinstance(pb.obs["pool"].dtype, pd.CategoricalDtype)
