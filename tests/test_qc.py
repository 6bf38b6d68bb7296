"""Cell QC: metrics by symbol, threshold rules, Scrublet per group, and the ``qc`` stage."""

from __future__ import annotations

import json
from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse
from tests.builders import tiny_params, write_params, write_selected

from immune_aging import executor, selection
from immune_aging.analysis import doublets, plots, qc, qc_rules
from immune_aging.errors import InputError
from immune_aging.params import load_section
from immune_aging.stages import qc as stage

FIXED = qc_rules.Rules(
    thresholds="fixed",
    min_genes=2,
    max_genes=10,
    min_counts=5,
    max_counts=100,
    max_pct_mt=20.0,
    max_pct_hb=5.0,
    n_mads=3.0,
)


def tiny_counts() -> ad.AnnData:
    """Three cells x four genes; the var index is Ensembl-like and misleading on purpose."""
    X = np.array([[10, 2, 0, 8], [0, 5, 5, 0], [1, 1, 0, 0]], dtype=np.float32)
    var = pd.DataFrame(
        # an index that looks mitochondrial/hemoglobin must not count: symbols decide
        {"feature_name": ["CD3E", "MT-CO1", "HBB", "HBEGF"]},
        index=["MT-DECOY", "ENSG00000198804", "ENSG00000244734", "HBA1"],
    )
    obs = pd.DataFrame({"donor_id": ["d1", "d1", "d2"]}, index=["c1", "c2", "c3"])
    return ad.AnnData(X=sparse.csr_matrix(X), obs=obs, var=var)


def two_type_counts(n_cells: int, *, n_genes: int = 300, seed: int = 0, doublets: int = 0):
    """Negative-binomial counts of two cell types, plus summed-pair doublets."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(0.5, 1.0, n_genes)
    profiles = np.stack([base.copy(), base.copy()])
    profiles[0, :40] *= 15
    profiles[1, 40:80] *= 15
    profiles /= profiles.sum(axis=1, keepdims=True)
    types = rng.integers(0, 2, n_cells)
    mu = profiles[types] * rng.lognormal(np.log(1500), 0.3, n_cells)[:, None]
    for i in range(doublets):
        mu[i] = profiles[0] * 1500 + profiles[1] * 1500
    counts = rng.negative_binomial(5, 5 / (5 + mu)).astype(np.float32)
    return sparse.csr_matrix(counts)


def cells_dataset() -> ad.AnnData:
    """Two donors of 120 cells (10 planted doublets each) and one of 30 cells."""
    blocks = [
        two_type_counts(120, seed=1, doublets=10),
        two_type_counts(120, seed=2, doublets=10),
        two_type_counts(30, seed=3),
    ]
    X = sparse.vstack(blocks).tocsr()
    donors = ["d1"] * 120 + ["d2"] * 120 + ["d3"] * 30
    obs = pd.DataFrame(
        {
            "donor_id": pd.Categorical(donors),
            "cell_type": "T cell",
            "development_stage": "40-year-old stage",
            "sex": "male",
        },
        index=[f"cell{i:03d}" for i in range(X.shape[0])],
    )
    symbols = ["MT-CO1", "MT-ND1", "HBB", "HBA1"] + [f"GENE{i}" for i in range(296)]
    var = pd.DataFrame({"feature_name": symbols}, index=[f"ENSG{i:011d}" for i in range(300)])
    return ad.AnnData(X=X, obs=obs, var=var)


# --------------------------------------------------------------------------- metrics


def test_metrics_use_symbols_not_the_ensembl_index():
    adata = tiny_counts()
    m = qc.qc_metrics(adata)
    assert list(m.columns) == list(qc.METRIC_COLUMNS)
    assert m.index.tolist() == ["c1", "c2", "c3"]
    assert m["total_counts"].tolist() == [20.0, 10.0, 2.0]
    assert m["n_genes_by_counts"].tolist() == [3, 2, 2]
    # MT-CO1 is the second gene (its index is an Ensembl ID); MT-DECOY is CD3E
    assert m["pct_counts_mt"].tolist() == pytest.approx([10.0, 50.0, 50.0])
    # HBB counts; HBEGF (indexed HBA1) does not
    assert m["pct_counts_hb"].tolist() == pytest.approx([0.0, 50.0, 0.0])


@pytest.mark.parametrize("layout", ["csr", "explicit zero", "dense"])
def test_metrics_equal_scanpy_calculate_qc_metrics(layout):
    adata = cells_dataset()
    adata.var["mt"] = adata.var["feature_name"].str.startswith("MT-")
    adata.var["ribo"] = False
    adata.var["hb"] = adata.var["feature_name"].isin(["HBB", "HBA1"])
    if layout == "explicit zero":
        adata.X.data[:50] = 0  # stored zeros are not detected genes
    elif layout == "dense":
        adata.X = adata.X.toarray()
    ref, _ = sc.pp.calculate_qc_metrics(
        adata.copy(), qc_vars=["mt", "ribo", "hb"], percent_top=None, inplace=False
    )
    ours = qc.qc_metrics(adata)
    pd.testing.assert_frame_equal(
        ours, ref[list(qc.METRIC_COLUMNS)], check_dtype=False, check_exact=False, rtol=1e-6
    )
    if layout == "explicit zero":
        assert (adata.X.data[:50] == 0).all()  # input left as it was


def test_metrics_do_not_modify_input_and_need_symbols():
    adata = tiny_counts()
    before = adata.copy()
    qc.qc_metrics(adata)
    assert adata.var.equals(before.var) and adata.obs.equals(before.obs)
    assert (adata.X != before.X).nnz == 0
    adata.var = adata.var.drop(columns="feature_name")
    with pytest.raises(InputError, match=r"^var column 'feature_name' missing$"):
        qc.qc_metrics(adata)


# --------------------------------------------------------------------------- thresholds


def metrics_table(**cols) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    base = {"n_genes_by_counts": [5] * n, "total_counts": [50.0] * n}
    base |= {"pct_counts_mt": [1.0] * n, "pct_counts_hb": [0.0] * n}
    return pd.DataFrame(base | cols, index=[f"c{i}" for i in range(n)])


def test_fixed_limits_are_strict():
    m = metrics_table(
        n_genes_by_counts=[2, 3, 9, 10, 5, 5, 5, 5],
        total_counts=[50, 50, 50, 50, 5, 6, 99, 100],
    )
    fails, limits = qc_rules.threshold_rules(m, groups=pd.Series(["g"] * 8), rules=FIXED)
    assert fails["fail_min_genes"].tolist() == [True] + [False] * 7
    assert fails["fail_max_genes"].tolist() == [False] * 3 + [True] + [False] * 4
    assert fails["fail_min_counts"].tolist() == [False] * 4 + [True] + [False] * 3
    assert fails["fail_max_counts"].tolist() == [False] * 7 + [True]
    assert limits.index.tolist() == ["all"]
    assert limits.loc["all", "max_counts"] == 100


def test_mitochondrial_and_hemoglobin_limits():
    m = metrics_table(pct_counts_mt=[19.9, 20.0, 1.0, 1.0], pct_counts_hb=[0, 0, 4.99, 5.0])
    fails, _ = qc_rules.threshold_rules(m, groups=pd.Series(["g"] * 4), rules=FIXED)
    assert fails["fail_pct_mt"].tolist() == [False, True, False, False]
    assert fails["fail_pct_hb"].tolist() == [False, False, False, True]


def test_mad_windows_per_group():
    totals = [100, 110, 120, 130, 140, 1000, 1000, 1100, 1200, 1300, 1400, 100]
    m = metrics_table(total_counts=totals, n_genes_by_counts=[50] * 12)
    groups = pd.Series(["a"] * 6 + ["b"] * 6)
    fails, limits = qc_rules.threshold_rules(
        m, groups=groups, rules=replace(FIXED, thresholds="mad")
    )
    # the outlier of each group is flagged, on its own side of the window
    assert fails["fail_max_counts"].tolist() == [False] * 5 + [True] + [False] * 6
    assert fails["fail_min_counts"].tolist() == [False] * 11 + [True]
    assert not fails["fail_min_genes"].any()  # MAD 0: the window is the median itself
    assert limits.index.tolist() == ["a", "b"]
    assert limits.loc["a", "min_genes"] == pytest.approx(50.0)
    assert limits.loc["b", "max_pct_hb"] == 5.0


def test_rules_are_taken_from_the_qc_params_by_name(tmp_path):
    write_params(tmp_path / "params.yaml", tiny_params(qc={"n_mads": 4.5}))
    params = load_section("qc", tmp_path / "params.yaml")
    rules = qc_rules.Rules.of(params)
    assert rules.thresholds == params.thresholds and rules.n_mads == params.n_mads == 4.5
    assert rules.min_genes == params.min_genes and rules.max_pct_hb == params.max_pct_hb


def test_fixed_limits_must_be_ordered():
    m = metrics_table(total_counts=[1.0])
    with pytest.raises(
        InputError, match=r"^qc.min_genes \(10\) must be below qc.max_genes \(10\)$"
    ):
        qc_rules.threshold_rules(m, groups=pd.Series(["g"]), rules=replace(FIXED, min_genes=10))


# --------------------------------------------------------------------------- doublets


def test_doublet_threshold_between_two_modes():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.1, 0.02, 1000), rng.normal(0.6, 0.05, 400)]
    t = doublets.doublet_threshold(scores)
    assert 0.2 < t < 0.5
    unimodal = np.repeat(np.arange(10) + 0.5, [1, 2, 3, 4, 5, 4, 3, 2, 1, 1])
    assert np.isnan(doublets.doublet_threshold(unimodal, nbins=10))
    assert np.isnan(doublets.doublet_threshold(np.full(10, 0.3)))
    assert np.isnan(doublets.doublet_threshold(np.array([])))


def test_doublet_threshold_matches_skimage_minimum_method():
    # two peaks (values 2.5 and 7.5); after one 3-bin smoothing the valley is at 5.5
    values = np.repeat(np.arange(10) + 0.5, [1, 5, 9, 5, 2, 1, 3, 8, 4, 1])
    t = doublets.doublet_threshold(values, nbins=10)
    assert abs(t - 5.5) < 0.9  # within one bin of the valley


def test_scrublet_per_group_and_small_group_not_scored():
    adata = cells_dataset()
    before = adata.copy()
    eligible = np.ones(adata.n_obs, dtype=bool)
    eligible[5] = False  # a cell failing a threshold rule is not scored
    cells, groups = doublets.detect_doublets(
        adata,
        groups=adata.obs["donor_id"],
        eligible=eligible,
        expected_doublet_rate=0.06,
        min_cells=100,
        seed=0,
    )
    assert groups["group"].tolist() == ["d1", "d2", "d3"]
    assert groups["n_cells"].tolist() == [119, 120, 30]
    assert groups["scored"].tolist() == [True, True, False]
    assert groups.loc[2, "note"] == "fewer than 100 cells"
    small = adata.obs["donor_id"] == "d3"
    assert cells.loc[small.to_numpy(), "doublet_score"].isna().all()
    assert not cells.loc[small.to_numpy(), "predicted_doublet"].any()
    assert np.isnan(cells["doublet_score"].iloc[5])
    assert cells.loc[~small.to_numpy(), "doublet_score"].notna().sum() == 239
    # the planted doublets (first 10 cells of d1 and d2) score higher than the rest
    for start in (0, 120):
        scores = cells["doublet_score"].iloc[start : start + 120].to_numpy()
        assert np.nanmean(scores[:10]) > 1.5 * np.nanmean(scores[10:])
    assert cells.index.equals(adata.obs_names)
    assert (adata.X != before.X).nnz == 0 and adata.obs.equals(before.obs)


def test_scrublet_failure_marks_the_group_not_scored():
    # 100 cells but only 20 genes: fewer variable genes than Scrublet's 30 components
    X = two_type_counts(100, n_genes=20)
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=[f"c{i}" for i in range(100)]))
    cells, groups = doublets.detect_doublets(
        adata,
        groups=pd.Series(["g"] * 100),
        eligible=np.ones(100, dtype=bool),
        expected_doublet_rate=0.06,
        min_cells=50,
        seed=0,
    )
    assert groups["scored"].tolist() == [False]
    assert groups.loc[0, "note"].startswith("Scrublet failed: ")
    assert cells["doublet_score"].isna().all()


def test_qc_table_keep_and_summary():
    m = metrics_table(total_counts=[50.0, 2.0, 50.0])
    fails, limits = qc_rules.threshold_rules(m, groups=pd.Series(["g"] * 3), rules=FIXED)
    doublets = pd.DataFrame(
        {"doublet_score": [0.1, np.nan, 0.9], "predicted_doublet": [False, False, True]},
        index=m.index,
    )
    table = qc.qc_table(m, fails, doublets)
    assert table.index.name == "cell_id"
    assert table["keep"].tolist() == [True, False, False]
    assert [c for c in table.columns if c.startswith("fail_")] == [f"fail_{r}" for r in qc.RULES]
    groups = pd.DataFrame(
        {"group": ["g", "h"], "n_cells": [3, 7], "scored": [True, False], "threshold": [0.5, None]}
    )
    summary = qc.summary(table, groups, limits, thresholds="fixed", group_key="donor_id")
    assert summary["cells_in"] == 3
    assert summary["cells_kept"] == 1
    assert summary["cells_failing"]["min_counts"] == 1
    assert summary["cells_failing"]["doublet"] == 1
    assert summary["doublets_found"] == 1
    assert summary["groups_not_scored"] == 1
    assert summary["cells_in_groups_not_scored"] == 7
    assert summary["limits"]["max_pct_hb"] == 5.0


def test_histogram_table():
    hist = plots.histogram_table([0.0, 1.0, 1.0, np.nan], bins=2)
    assert hist["n_cells"].tolist() == [1, 2]
    assert plots.histogram_table([], bins=3).empty


# --------------------------------------------------------------------------- stage


def run_stage(tmp_path, monkeypatch, adata=None, **qc_params):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", "logs")
    params = {"min_genes": 100, "min_counts": 200, "min_cells_scrublet": 100} | qc_params
    write_params(tmp_path / "params.yaml", tiny_params(qc=params))
    if adata is not None:
        write_selected(adata)
    argv = ["--params", "params.yaml", "--selection", "selection.h5ad", "--raw", "dataset.h5ad"]
    argv += ["--out", "out/cells.parquet", "--metrics", "out/qc.json", "--plots", "out/plots"]
    return stage.main(argv), tmp_path / "out"


def test_stage_writes_cell_table(tmp_path, monkeypatch):
    adata = cells_dataset()
    code, out = run_stage(tmp_path, monkeypatch, adata)
    assert code == 0
    table = pd.read_parquet(out / "cells.parquet")
    assert table.index.name == "cell_id"
    assert table.index.tolist() == adata.obs_names.tolist()
    expected = [*qc.METRIC_COLUMNS, "doublet_score", "predicted_doublet"]
    expected += [f"fail_{r}" for r in qc.RULES] + ["keep"]
    assert table.columns.tolist() == expected
    assert table["keep"].dtype == bool
    assert table.loc[table["predicted_doublet"], "keep"].eq(False).all()
    metrics = json.loads((out / "qc.json").read_text())
    assert metrics["cells_in"] == adata.n_obs
    assert metrics["groups_not_scored"] == 1
    assert metrics["cells_in_groups_not_scored"] == 30
    assert metrics["cells_kept"] == int(table["keep"].sum())
    assert metrics["group_key"] == "donor_id"
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "counts_vs_genes.png",
        "doublet_score_hist.csv",
        "doublet_scores.png",
        "hemoglobin_hist.csv",
        "hemoglobin_hist.png",
        "limits.csv",
        "qc_violins.png",
        "scrublet_groups.csv",
    ]
    first = (out / "cells.parquet").read_bytes()
    code, out = run_stage(tmp_path, monkeypatch)
    assert (out / "cells.parquet").read_bytes() == first


def test_stage_mad_thresholds_and_pool_groups(tmp_path, monkeypatch):
    adata = cells_dataset()
    adata.obs["pool"] = np.where(adata.obs["donor_id"] == "d1", "P1", "P2")
    code, out = run_stage(tmp_path, monkeypatch, adata, thresholds="mad", pool_key="pool")
    assert code == 0
    metrics = json.loads((out / "qc.json").read_text())
    assert metrics["thresholds"] == "mad"
    assert metrics["group_key"] == "pool"
    assert metrics["groups"] == 2
    assert metrics["groups_not_scored"] == 0
    limits = pd.read_csv(out / "plots" / "limits.csv", index_col=0)
    assert limits.index.tolist() == ["P1", "P2"]


def test_stage_missing_pool_column(tmp_path, monkeypatch, capsys):
    code, out = run_stage(tmp_path, monkeypatch, cells_dataset(), pool_key="lane")
    assert code == 2
    assert not out.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: qc: selection.h5ad: obs column 'lane' missing (qc.pool_key)"
    )


def test_stage_no_cell_left(tmp_path, monkeypatch, capsys):
    code, out = run_stage(tmp_path, monkeypatch, cells_dataset(), min_genes=5000, max_genes=6000)
    assert code == 2
    assert not out.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: qc: selection.h5ad: no cell passes QC (rule 'min_genes' alone removes "
        "270 of 270); check the qc.* limits"
    )


# --------------------------------------------------------------------------- batches


def shuffled_cells() -> ad.AnnData:
    """:func:`cells_dataset` with the donors' cells interleaved (not contiguous)."""
    adata = cells_dataset()
    order = np.random.default_rng(7).permutation(adata.n_obs)
    return adata[order].copy()


def batches_of(adata, key, max_cells):
    labels = adata.obs[key].astype(str).to_numpy()
    for positions in selection.group_batches(labels, max_cells):
        yield positions, adata.X[positions]


@pytest.mark.parametrize("thresholds", ["fixed", "mad"])
@pytest.mark.parametrize("max_cells", [1, 130, 150, 10_000])
def test_batches_of_whole_groups_equal_one_pass(thresholds, max_cells):
    adata = shuffled_cells()
    rules = replace(
        FIXED,
        thresholds=thresholds,
        min_genes=100,
        min_counts=200,
        max_genes=10_000,
        max_counts=100_000,
    )
    kwargs = {
        "rules": rules,
        "expected_doublet_rate": 0.06,
        "min_cells_scrublet": 100,
        "seed": 0,
    }
    whole = qc.qc_cells(adata, group_key="donor_id", **kwargs)
    parts = qc.qc_batches(
        batches_of(adata, "donor_id", max_cells),
        obs=adata.obs,
        var=adata.var,
        group_key="donor_id",
        **kwargs,
    )
    assert (
        len(selection.group_batches(adata.obs["donor_id"], max_cells))
        == {
            1: 3,
            130: 3,
            150: 2,
            10_000: 1,
        }[max_cells]
    )
    for a, b in zip(whole, parts, strict=True):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    table, _, limits, groups = parts
    assert table.index.equals(pd.Index(adata.obs_names, name="cell_id"))
    assert groups["group"].tolist() == ["d1", "d2", "d3"]
    assert groups["scored"].any() and not groups["scored"].iloc[2]  # d3: 30 cells
    assert table["predicted_doublet"].sum() > 0
    if thresholds == "mad":
        assert limits.index.tolist() == ["d1", "d2", "d3"]


def test_batches_must_hold_whole_groups_and_every_cell():
    adata = shuffled_cells()
    kwargs = {"rules": FIXED, "expected_doublet_rate": 0.06, "min_cells_scrublet": 100, "seed": 0}
    half = np.arange(0, adata.n_obs, 2), np.arange(1, adata.n_obs, 2)
    split = ((p, adata.X[p]) for p in half)  # every donor in both halves
    with pytest.raises(ValueError, match="split between batches"):
        qc.qc_batches(split, obs=adata.obs, var=adata.var, group_key="donor_id", **kwargs)
    first = ((p, adata.X[p]) for p in half[:1])
    with pytest.raises(ValueError, match="not each of 270 once"):
        qc.qc_batches(first, obs=adata.obs, var=adata.var, group_key="donor_id", **kwargs)


def test_stage_output_does_not_depend_on_the_batch_size(tmp_path, monkeypatch):
    adata = shuffled_cells()
    outputs = []
    for size in ("1", "150", ""):
        monkeypatch.setenv(selection.BATCH_CELLS_ENV, size)
        folder = tmp_path / (size or "default")
        folder.mkdir()
        code, out = run_stage(folder, monkeypatch, adata, thresholds="mad")
        assert code == 0
        outputs.append(
            [(out / name).read_bytes() for name in ("cells.parquet", "qc.json")]
            + [(out / "plots" / n).read_bytes() for n in ("limits.csv", "scrublet_groups.csv")]
        )
    assert outputs[0] == outputs[1]


def test_stage_refuses_a_bad_batch_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(selection.BATCH_CELLS_ENV, "many")
    code, _ = run_stage(tmp_path, monkeypatch, cells_dataset())
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: qc: IMMUNE_AGING_BATCH_CELLS='many': expected a positive number of cells"
    )


def test_stage_output_is_the_same_with_batches_on_dask_workers(tmp_path, monkeypatch, capsys):
    adata = shuffled_cells()
    monkeypatch.setenv(selection.BATCH_CELLS_ENV, "150")  # two batches, donors interleaved
    outputs = []
    for scheduler in ("", "local:2"):
        monkeypatch.setenv(executor.SCHEDULER_VAR, scheduler)
        folder = tmp_path / (scheduler.replace(":", "") or "here")
        folder.mkdir()
        code, out = run_stage(folder, monkeypatch, adata, thresholds="mad")
        said = capsys.readouterr().err
        assert code == 0
        assert ("qc: QC batch (donor_id): Dask scheduler" in said) == bool(scheduler), said
        outputs.append(
            [(out / name).read_bytes() for name in ("cells.parquet", "qc.json")]
            + [(out / "plots" / n).read_bytes() for n in ("limits.csv", "scrublet_groups.csv")]
        )
    assert outputs[0] == outputs[1]
