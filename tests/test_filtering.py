"""Donor and cell-type prevalence filter: rules, assembly, and the ``filter`` stage."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from tests.builders import tiny_params, write_params

from immune_aging import io, selection
from immune_aging.analysis import filter_rules, filtering
from immune_aging.errors import InputError
from immune_aging.stages import filter as stage


def make_obs(layout: dict[str, dict[str, int]], *, pool: bool = False) -> pd.DataFrame:
    """Cells from ``{donor: {cell_type: n_cells}}``, in that order."""
    rows = []
    for donor, types in layout.items():
        for ctype, n in types.items():
            rows += [(donor, ctype)] * n
    obs = pd.DataFrame(rows, columns=["donor_id", "cell_type"])
    obs.index = [f"cell{i}" for i in range(len(obs))]
    obs["development_stage"] = "63-year-old human stage"
    obs["sex"] = "female"
    if pool:
        obs["pool"] = "P1"
    return obs


def select(obs, **kw):
    params = {"cutoff_percentile": 0.0, "min_cells_per_celltype": 2, "percent_donors": 1.0}
    return filtering.select_cells(obs, **{**params, **kw})


# --------------------------------------------------------------------------- rules


def test_cutoff_percentile_rounds_down_and_drops_small_donors():
    obs = make_obs({"d1": {"A": 3}, "d2": {"A": 5}, "d3": {"A": 7}})
    # 50th percentile of (3, 5, 7) is 5: d1 (3 cells) goes
    sel = select(obs, cutoff_percentile=50.0)
    assert sel.cutoff == 5.0
    assert sel.min_cells_per_donor == 5
    assert sel.donors_removed_cutoff == ["d1"]
    assert sel.keep.tolist() == [False] * 3 + [True] * 12
    # 60th percentile is 5.4, rounded down to 5: d2 stays
    assert select(obs, cutoff_percentile=60.0).donors_removed_cutoff == ["d1"]


def test_cell_type_absent_in_some_donors_is_dropped():
    obs = make_obs(
        {"d1": {"A": 3, "B": 2}, "d2": {"A": 3}, "d3": {"A": 3, "B": 3}, "d4": {"A": 4}}
    )
    sel = select(obs, percent_donors=0.75)
    assert sel.cell_types_kept == ["A"]
    assert sel.cell_types_removed == ["B"]
    assert sel.cells_removed == {
        "missing_donor": 0,
        "donor_cutoff": 0,
        "cell_type_prevalence": 5,
        "donor_completeness": 0,
    }
    assert int(sel.keep.sum()) == 13
    # at half the donors B qualifies; then d2 and d4 lack it and are dropped
    sel = select(obs, percent_donors=0.5)
    assert sel.cell_types_kept == ["A", "B"]
    assert sel.donors_removed_cell_types == ["d2", "d4"]
    assert sel.cells_removed["donor_completeness"] == 7
    assert int(sel.keep.sum()) == 11


def test_prevalence_tolerates_float_rounding():
    # 0.95 * 20 is 18.999999999999996 in floating point: 19 donors must suffice
    layout = {f"d{i:02d}": {"A": 2} for i in range(19)}
    layout["d19"] = {"A": 1}
    sel = select(make_obs(layout), percent_donors=0.95)
    assert sel.cell_types_kept == ["A"]


def aged_obs(lacking: dict[str, int], n_donors: int = 40) -> pd.DataFrame:
    """Donors aged 20 to 85; type A everywhere, type B in donors per ``lacking``.

    ``lacking`` maps ``"B"`` (cell type thinning out with age: absent from the oldest
    donors) or ``"A"`` (absent from the oldest few) to how many oldest donors lack it.
    """
    ages = np.linspace(20, 85, n_donors).round()
    layout = {}
    for i in range(n_donors):
        old_rank = n_donors - 1 - i
        layout[f"d{i:02d}"] = {
            "A": 0 if old_rank < lacking.get("A", 0) else 12,
            "B": 1 if old_rank < lacking.get("B", 0) else 12,
        }
    obs = make_obs(layout)
    stage_of = {
        f"d{i:02d}": ("80 year-old and over stage" if a >= 80 else f"{int(a)}-year-old stage")
        for i, a in enumerate(ages)
    }
    obs["development_stage"] = obs["donor_id"].map(stage_of)
    return obs


def test_rule_2_removing_a_type_by_age_is_reported_with_a_warning():
    obs = aged_obs({"B": 12})
    sel = select(obs, min_cells_per_celltype=10, percent_donors=0.95)
    assert sel.cell_types_removed == ["B"]
    report, warnings = filtering.rule_ages(obs, sel, min_cells_per_celltype=10)
    entry = report["cell_type_prevalence"]["B"]
    assert entry["donors"] == 12 and entry["mean_age"] > entry["mean_age_rest"] + 30
    assert entry["p_value"] < 0.001 and entry["share_age_spearman"] < -0.5
    assert len(warnings) == 1 and warnings[0].startswith("rule 2 removed cell type 'B'")
    # the per-sample alternative keeps it (pseudobulk drops the small samples)
    kept = select(obs, min_cells_per_celltype=10, percent_donors=0.95, prevalence="samples")
    assert kept.cell_types_kept == ["A", "B"] and kept.keep.all()


def test_rule_3_dropping_old_donors_is_reported_with_a_warning():
    obs = aged_obs({"A": 3}, n_donors=60)  # 57 of 60 have A: kept at 95 %
    sel = select(obs, min_cells_per_celltype=10, percent_donors=0.95)
    assert sel.cell_types_kept == ["A", "B"] and len(sel.donors_removed_cell_types) == 3
    report, warnings = filtering.rule_ages(obs, sel, min_cells_per_celltype=10)
    assert report["donor_completeness"]["mean_age"] >= 80
    assert report["donor_completeness"]["p_value"] < 0.01
    assert [w.split(" removed")[0] for w in warnings] == ["rule 3"]


def test_rules_removing_regardless_of_age_do_not_warn():
    obs = aged_obs({})
    # B absent from every fourth donor, whatever its age
    keep = ~(
        (obs["cell_type"] == "B") & obs["donor_id"].isin([f"d{i:02d}" for i in range(0, 40, 4)])
    )
    obs = obs[keep.to_numpy()]
    sel = select(obs, min_cells_per_celltype=10, percent_donors=0.95)
    assert sel.cell_types_removed == ["B"]
    report, warnings = filtering.rule_ages(obs, sel, min_cells_per_celltype=10)
    assert report["cell_type_prevalence"]["B"]["p_value"] > 0.05 and warnings == []
    # without readable ages there is nothing to report
    obs = obs.assign(development_stage="a-year-old stage")
    assert filtering.rule_ages(obs, sel, min_cells_per_celltype=10) == ({}, [])


def test_rules_do_not_modify_obs():
    obs = make_obs({"d1": {"A": 3, "B": 1}, "d2": {"A": 3}})
    obs["cell_type"] = obs["cell_type"].astype("category")
    before = obs.copy()
    select(obs)
    pd.testing.assert_frame_equal(obs, before)


def test_no_cell_type_left_names_the_params():
    obs = make_obs({"d1": {"A": 1}, "d2": {"A": 1}})
    with pytest.raises(InputError) as err:
        select(obs, min_cells_per_celltype=10, percent_donors=0.95)
    assert str(err.value) == (
        "filter.min_cells_per_celltype=10 and filter.percent_donors=0.95 keep no cell type: "
        "none has >= 10 cells in >= 1.9 of 2 donors"
    )


def test_no_cell_left_names_the_param():
    # A and B each reach 2 cells in one of two donors: both kept at 50 %, no donor has both
    obs = make_obs({"d1": {"A": 2, "B": 1}, "d2": {"A": 1, "B": 2}})
    with pytest.raises(InputError) as err:
        select(obs, percent_donors=0.5)
    assert str(err.value) == (
        "filter.min_cells_per_celltype=2 leaves no cell: no donor has >= 2 cells of every "
        "kept cell type (2 types)"
    )


def test_missing_column_is_named():
    obs = make_obs({"d1": {"A": 2}}).drop(columns="cell_type")
    with pytest.raises(InputError, match=r"^obs column 'cell_type' missing$"):
        select(obs)


def test_cells_per_group_counts_zero_for_absent_pairs():
    obs = make_obs({"d1": {"A": 2, "B": 1}, "d2": {"B": 3}})
    table = filter_rules.cells_per_group(obs, keys=["donor_id", "cell_type"])
    assert table.loc["d2", "A"] == 0
    assert table.loc["d2", "B"] == 3
    assert filter_rules.cells_per_group(obs, keys=["donor_id"]).to_dict() == {"d1": 3, "d2": 3}


# --------------------------------------------------------------------------- assembly


def test_assemble_selection_keeps_positions_and_tidies_metadata():
    obs = make_obs({"d1": {"A": 2}, "d2": {"A": 2}}, pool=True)
    obs["donor_id"] = pd.Categorical(obs["donor_id"], categories=["d0", "d1", "d2"])
    obs["extra"] = 1
    var = pd.DataFrame({"feature_name": ["G1", "G2", "G3"], "other": 0}, index=["E1", "E2", "E3"])
    keep = np.array([True, False, True, True])
    out = filtering.assemble_selection(
        obs, var, keep=keep, genes=np.array([True, False, True]), location="raw.X"
    )
    assert out.X is None
    assert out.obs_names.tolist() == obs.index[keep].tolist()
    assert out.obs.columns.tolist() == [
        "donor_id",
        "cell_type",
        "development_stage",
        "sex",
        "pool",
        "row",
    ]
    assert out.obs["row"].tolist() == [0, 2, 3]
    assert out.obs["row"].dtype == np.int64
    assert out.var_names.tolist() == ["E1", "E3"]
    assert out.var.columns.tolist() == ["feature_name", "column"]
    assert out.var["column"].tolist() == [0, 2]
    assert out.obs["donor_id"].cat.categories.tolist() == ["d1", "d2"]
    assert out.uns["selection"] == {"location": "raw.X", "n_obs": 4, "n_vars": 3}
    assert obs["donor_id"].cat.categories.tolist() == ["d0", "d1", "d2"]  # input untouched


def test_assemble_selection_rejects_mismatched_masks_and_missing_symbols():
    obs = make_obs({"d1": {"A": 2}})
    var = pd.DataFrame({"feature_name": ["G1"]}, index=["E1"])
    keep = np.ones(2, dtype=bool)
    with pytest.raises(InputError, match=r"masks of 2 cells and 2 genes do not match"):
        filtering.assemble_selection(obs, var, keep=keep, genes=np.ones(2, bool), location="X")
    with pytest.raises(InputError, match=r"^var column 'feature_name' missing$"):
        filtering.assemble_selection(
            obs, var.drop(columns="feature_name"), keep=keep, genes=np.ones(1, bool), location="X"
        )
    obs["row"] = 1
    with pytest.raises(InputError, match=r"^obs column 'row' cannot be carried"):
        filtering.assemble_selection(
            obs, var, keep=keep, genes=np.ones(1, bool), location="X", extra_obs=["row"]
        )


def test_donor_table_and_plot():
    obs = make_obs({"d1": {"A": 1}, "d2": {"A": 3}, "d3": {"A": 2, "B": 2}})
    sel = select(obs, cutoff_percentile=50.0, percent_donors=0.5)
    out = filtering.assemble_selection(
        obs, _var(2), keep=sel.keep, genes=np.ones(2, dtype=bool), location="X"
    )
    table = filtering.donor_table(sel, out)
    assert table.columns.tolist() == [
        "donor_id",
        "n_cells",
        "passes_cutoff",
        "kept",
        "n_cells_kept",
    ]
    assert table["donor_id"].tolist() == ["d1", "d2", "d3"]
    assert table["passes_cutoff"].tolist() == [False, True, True]
    assert table["kept"].tolist() == [False, False, True]
    assert table["n_cells_kept"].tolist() == [0, 0, 4]
    fig = filtering.plot_cells_per_donor(table, cutoff=sel.cutoff)
    assert fig.axes[0].get_ylabel() == "cells per donor"


def _var(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"feature_name": [f"G{i}" for i in range(n)]}, index=[f"ENSG{i:011d}" for i in range(n)]
    )


# --------------------------------------------------------------------------- stage


def dataset(*, dense: bool = False, raw: bool = False) -> ad.AnnData:
    """Three donors; d3 is small, cell type C is rare; gene 3 has no count."""
    rng = np.random.default_rng(0)
    obs = make_obs(
        {
            "d1": {"A": 12, "B": 10, "C": 1},
            "d2": {"A": 11, "B": 12, "C": 12},
            "d3": {"A": 3},
        }
    )
    obs["donor_id"] = obs["donor_id"].astype("category")
    values = rng.poisson(2.0, (len(obs), 6)).astype(np.float32)
    values[:, 3] = 0
    X = values if dense else sparse.csr_matrix(values)
    adata = ad.AnnData(X=X, obs=obs, var=_var(6))
    if raw:
        adata.raw = adata.copy()
        adata.X = sparse.csr_matrix(np.log1p(values / 3.0))
    return adata


def run_stage(tmp_path, monkeypatch, adata=None, **filter_params):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", "logs")
    params = {"cutoff_percentile": 50.0, "min_cells_per_celltype": 10, "percent_donors": 0.6}
    write_params(tmp_path / "params.yaml", tiny_params(filter={**params, **filter_params}))
    if adata is not None:
        io.write_h5ad(adata, "dataset.h5ad")
    argv = ["--params", "params.yaml", "--input", "dataset.h5ad", "--out", "out/selection.h5ad"]
    argv += ["--metrics", "out/filter.json", "--plots", "out/plots"]
    return stage.main(argv), tmp_path / "out"


@pytest.mark.parametrize("layout", ["sparse", "dense", "raw"])
def test_stage_writes_the_selection(tmp_path, monkeypatch, layout):
    adata = dataset(dense=layout == "dense", raw=layout == "raw")
    code, out = run_stage(tmp_path, monkeypatch, adata)
    assert code == 0
    kept = io.read_h5ad(out / "selection.h5ad")
    assert kept.X is None  # no copy of the counts
    # d3 is below the median donor size; C is rare; d1 lacks C? no: C is dropped first
    assert sorted(kept.obs["donor_id"].unique()) == ["d1", "d2"]
    assert sorted(kept.obs["cell_type"].unique()) == ["A", "B"]
    assert kept.n_obs == 12 + 10 + 11 + 12
    assert kept.var_names.tolist() == [f"ENSG{i:011d}" for i in (0, 1, 2, 4, 5)]
    assert kept.var["column"].tolist() == [0, 1, 2, 4, 5]
    assert kept.obs["row"].tolist() == adata.obs_names.get_indexer(kept.obs_names).tolist()
    assert kept.uns["selection"]["location"] == ("raw.X" if layout == "raw" else "X")
    # the counts read through the selection are the input's
    chosen = selection.read_selection(out / "selection.h5ad", "dataset.h5ad")
    matrix = chosen.read()
    assert isinstance(matrix, sparse.csr_matrix)
    assert matrix.dtype == np.float32
    source = adata.raw.X if layout == "raw" else adata.X
    source = source.toarray() if sparse.issparse(source) else source
    rows = adata.obs_names.get_indexer(kept.obs_names)
    np.testing.assert_array_equal(matrix.toarray(), source[rows][:, [0, 1, 2, 4, 5]])
    assert kept.uns["provenance"]["stage"] == "filter"
    assert list(json.loads(kept.uns["provenance"]["inputs"])) == ["dataset.h5ad"]
    metrics = json.loads((out / "filter.json").read_text())
    assert metrics["cells_in"] == adata.n_obs
    assert metrics["cells_out"] == kept.n_obs
    assert metrics["donor_cutoff"]["donors"] == ["d3"]
    assert metrics["cell_type_prevalence"]["cell_types"] == ["C"]
    assert metrics["cells_removed"]["cell_type_prevalence"] == 13
    assert metrics["zero_count_genes_removed"] == 1
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "cells_per_donor.csv",
        "cells_per_donor.png",
    ]
    csv = pd.read_csv(out / "plots" / "cells_per_donor.csv")
    assert csv["n_cells"].tolist() == [3, 23, 35]


def test_stage_is_deterministic(tmp_path, monkeypatch):
    code, out = run_stage(tmp_path, monkeypatch, dataset())
    first = {p.name: p.read_bytes() for p in [out / "selection.h5ad", *(out / "plots").iterdir()]}
    code, out = run_stage(tmp_path, monkeypatch)
    assert code == 0
    again = {p.name: p.read_bytes() for p in [out / "selection.h5ad", *(out / "plots").iterdir()]}
    assert again == first


def test_stage_error_writes_nothing(tmp_path, monkeypatch, capsys):
    code, out = run_stage(tmp_path, monkeypatch, dataset(), min_cells_per_celltype=50)
    assert code == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "error: filter: filter.min_cells_per_celltype=50 and filter.percent_donors=0.6 keep no "
        "cell type: none has >= 50 cells in >= 1.2 of 2 donors"
    )


# --------------------------------------------------------------------------- pool column


def test_assemble_carries_the_extra_columns_named(caplog):
    obs = make_obs({"d1": {"A": 2}, "d2": {"A": 1}})
    obs["pool_number"] = pd.Categorical(["7", "7", "9"], categories=["7", "8", "9"])
    obs["pool"] = "P1"
    var = pd.DataFrame({"feature_name": ["G1", "G2"]}, index=["E1", "E2"])
    with caplog.at_level("INFO", logger="immune_aging.analysis.filtering"):
        out = filtering.assemble_selection(
            obs,
            var,
            keep=np.ones(3, dtype=bool),
            genes=np.ones(2, dtype=bool),
            location="X",
            extra_obs=["pool_number", "lane", "sex", "pool_number"],
        )
    assert out.obs.columns.tolist() == [
        "donor_id",
        "cell_type",
        "development_stage",
        "sex",
        "pool_number",
        "row",
    ]  # not 'pool' (not named), 'sex' once, the absent 'lane' logged
    assert out.obs["pool_number"].cat.categories.tolist() == ["7", "9"]
    assert "obs columns not in the input, not carried: lane" in caplog.text


def test_stage_carries_the_pool_column_named_by_keep_obs(tmp_path, monkeypatch):
    """OneK1K names its 10x pool 'pool_number': filter.keep_obs carries it for qc.pool_key."""
    adata = dataset()
    adata.obs["pool_number"] = pd.Categorical(np.where(adata.obs["donor_id"] == "d1", "1", "2"))
    code, out = run_stage(tmp_path, monkeypatch, adata, keep_obs=["pool_number"])
    assert code == 0
    kept = io.read_h5ad(out / "selection.h5ad")
    assert "pool_number" in kept.obs.columns
    assert kept.obs["pool_number"].astype(str).to_dict() == (
        adata.obs.loc[kept.obs_names, "pool_number"].astype(str).to_dict()
    )
