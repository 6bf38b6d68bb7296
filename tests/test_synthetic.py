from __future__ import annotations

import json
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from immune_aging import io, synthetic

TINY = dict(
    seed=0,
    n_donors=16,
    n_cell_types=4,
    cells_per_donor=200,
    n_genes=600,
    doublet_rate=0.06,
    dying_rate=0.03,
    rbc_rate=0.01,
)
#: even smaller, for the tests that write files
SMALL = {**TINY, "n_donors": 6, "n_cell_types": 3, "cells_per_donor": 100, "n_genes": 500}


@pytest.fixture(scope="module")
def design() -> synthetic.Design:
    return synthetic.design_simulation(**TINY)


@pytest.fixture(scope="module")
def adata(design) -> ad.AnnData:
    return synthetic.simulate(design)


def _share(x: sp.csr_matrix, cols: np.ndarray) -> np.ndarray:
    total = np.asarray(x.sum(axis=1)).ravel()
    return np.asarray(x[:, cols].sum(axis=1)).ravel() / np.maximum(total, 1)


def test_schema(adata):
    obs, var = adata.obs, adata.var
    for column in ("donor_id", "cell_type", "cell_type_ontology_term_id", "development_stage"):
        assert isinstance(obs[column].dtype, pd.CategoricalDtype)
    for column, value in (("assay", "10x 3' v2"), ("tissue", "blood"), ("disease", "normal")):
        assert set(obs[column]) == {value}
    assert set(obs["sex"]) == {"female", "male"}
    assert obs.index.is_unique and var.index.is_unique
    assert all(re.fullmatch(r"[ACGT]{16}-\d+", c) for c in obs.index[:50])
    assert all(re.fullmatch(r"ENSG\d{11}", g) for g in var.index)
    assert "central memory CD4-positive, alpha-beta T cell" in set(obs["cell_type"])
    assert obs["pool"].nunique() == 2  # 16 donors, about 8 per pool
    symbols = set(var["feature_name"])
    assert {f"MT-{g}" for g in ("CO1", "ND6", "CYB", "ATP8")} <= symbols
    assert sum(s.startswith("MT-") for s in symbols) == 13
    assert {"HBB", "HBA1", "HBA2", "HBP1", "HBEGF", "XIST", "RPS4Y1", "CD3E", "LYZ"} <= symbols
    assert any(re.match(r"^(IG[HKL]|TR[ABDG])[VDJC]", s) for s in symbols)
    assert sum(bool(re.match(r"^RP[SL]", s)) for s in symbols) >= 20


def test_development_stage_uses_every_form(adata):
    stages = set(adata.obs["development_stage"])
    assert "unknown" in stages
    assert "80 year-old and over stage" in stages
    assert any(re.fullmatch(r"\d+-year-old stage", s) for s in stages)
    assert any(re.fullmatch(r"\d+-year-old human stage", s) for s in stages)


def test_counts_are_csr_float32_integers(adata):
    x = adata.X
    assert sp.isspmatrix_csr(x) and x.dtype == np.float32
    assert x.has_canonical_format
    assert np.all(x.data == np.round(x.data)) and x.data.min() >= 1


def test_library_sizes_realistic(design, adata):
    singlets = design.cell_state == 0
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    assert 2000 <= np.median(totals[singlets]) <= 5000
    q10, q90 = np.percentile(totals[singlets], [10, 90])
    assert q90 / q10 > 2  # a realistic spread


def test_doublets_have_larger_libraries(design, adata):
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    doublets = design.cell_state == 3
    assert doublets.sum() > 0
    assert np.median(totals[doublets]) > 1.6 * np.median(totals[design.cell_state == 0])


def test_dying_cells_have_high_mitochondrial_share(design, adata):
    mt = np.flatnonzero(adata.var["feature_name"].str.startswith("MT-"))
    share = _share(adata.X, mt)
    dying = design.cell_state == 1
    normal = design.cell_state == 0
    assert dying.sum() > 0
    assert np.all(share[dying] > 0.2) and np.median(share[dying]) > 0.3
    assert np.percentile(share[normal], 99) < 0.1
    genes = np.diff(adata.X.indptr)
    assert np.median(genes[dying]) < 0.8 * np.median(genes[normal])


def test_rbc_contaminated_cells_exceed_5_percent_hemoglobin(design, adata):
    symbols = adata.var["feature_name"].astype(str)
    hb = np.flatnonzero(symbols.isin(list(synthetic.catalogue.HB_GENES)).to_numpy())
    share = _share(adata.X, hb)
    rbc = design.cell_state == 2
    assert rbc.sum() > 0
    assert np.all(share[rbc] > 0.05)
    assert np.percentile(share[design.cell_state == 0], 99) < 0.01
    # HBP1 and HBEGF are not hemoglobin: never part of the contamination
    lookalike = np.flatnonzero(symbols.isin(["HBP1", "HBEGF"]).to_numpy())
    assert np.median(_share(adata.X, lookalike)[rbc]) < 0.01


def test_sex_genes_follow_sex(design, adata):
    symbols = adata.var["feature_name"].astype(str).to_numpy()
    female = (adata.obs["sex"] == "female").to_numpy()
    for gene, in_female, mean in (
        ("XIST", True, 2.0),
        ("RPS4Y1", False, 1.5),
        ("DDX3Y", False, 0.3),
    ):
        col = np.asarray(adata.X[:, np.flatnonzero(symbols == gene)].sum(axis=1)).ravel()
        on, off = (female, ~female) if in_female else (~female, female)
        assert col[on].mean() > mean
        # only a doublet could mix sexes, and doublets are from one donor
        assert col[off].sum() == 0


def test_planted_age_effects(design, adata):
    """Planted up genes rise with age in aged cell types, not in the others."""
    t = synthetic.truth(design)
    ids = list(adata.var_names)
    ages = design.donors.set_index("donor_id")["age"]
    normal = design.cell_state == 0
    all_up = sorted({g for sets in t["age_genes"].values() for g in sets["up"]})
    for label in t["cell_types"]:
        up = t["age_genes"][label]["up"] if label in t["aged_cell_types"] else all_up
        cols = [ids.index(g) for g in up]
        mask = normal & (adata.obs["cell_type"] == label).to_numpy()
        donors = adata.obs["donor_id"].astype(str).to_numpy()[mask]
        x = adata.X[np.flatnonzero(mask)]
        values, age = [], []
        for donor in sorted(set(donors)):
            sub = x[donors == donor]
            values.append(np.log(sub[:, cols].sum() / sub.sum()))
            age.append(ages[donor])
        r = np.corrcoef(age, values)[0, 1]
        if label in t["aged_cell_types"]:
            assert r > 0.7, label
        else:
            assert abs(r) < 0.6, label


def test_truth_schema(design):
    t = synthetic.truth(design)
    assert set(t) == {
        "seed",
        "n_cells",
        "n_donors",
        "donors",
        "cell_types",
        "aged_cell_types",
        "age_genes",
        "log2fc_per_decade",
        "gene_sets",
        "decoy_sets",
        "doublets",
        "dying_cells",
        "rbc_contaminated",
    }
    assert t["n_donors"] == len(t["donors"]) == 16
    assert t["n_cells"] == design.n_cells
    for info in t["donors"].values():
        assert set(info) == {"age", "sex", "development_stage"}
        assert 20 <= info["age"] <= 90 and info["sex"] in ("male", "female")
        stage = info["development_stage"]
        if info["age"] >= 80 and stage != "unknown":
            assert stage == "80 year-old and over stage"
        elif stage != "unknown":
            assert stage.startswith(f"{int(info['age'])}-year-old")
    assert (
        set(t["age_genes"])
        == set(t["aged_cell_types"])
        == {
            "central memory CD4-positive, alpha-beta T cell",
            "CD8-positive, alpha-beta T cell",
        }
    )
    for sets in t["age_genes"].values():
        assert all(t["log2fc_per_decade"][g] > 0 for g in sets["up"])
        assert all(t["log2fc_per_decade"][g] < 0 for g in sets["down"])
    symbol = dict(zip(design.var.index, design.var["feature_name"].astype(str), strict=True))
    for name, info in t["gene_sets"].items():
        assert info["direction"] in ("up", "down") and name not in t["decoy_sets"]
        assert set(info["cell_types"]) <= set(t["aged_cell_types"])
        planted = {symbol[g] for g in t["log2fc_per_decade"]}
        assert set(info["genes"]) <= planted
    cells = set(design.obs.index)
    for key in ("doublets", "dying_cells", "rbc_contaminated"):
        assert t[key] and set(t[key]) <= cells


def test_default_design_drops_a_rare_cell_type():
    """With the default sizes, pDC fails the filter's prevalence rule; the rest pass."""
    design = synthetic.design_simulation(
        seed=0,
        n_donors=48,
        n_cell_types=8,
        cells_per_donor=520,
        n_genes=6000,
        doublet_rate=0.06,
        dying_rate=0.03,
        rbc_rate=0.01,
    )
    per = pd.crosstab(design.obs["donor_id"], design.obs["cell_type"])
    share_ok = (per >= 10).mean(axis=0)
    assert share_ok["plasmacytoid dendritic cell"] < 0.95
    assert (share_ok.drop("plasmacytoid dendritic cell") >= 0.95).all()


def test_gene_set_library_sizes(design):
    sets = synthetic.gene_set_library(design)
    assert list(sets)[:4] == list(design.gene_sets)
    assert all(15 <= len(genes) <= 200 for genes in sets.values())


@pytest.fixture(scope="module")
def small() -> synthetic.Design:
    return synthetic.design_simulation(**SMALL)


def _write(tmp_path, name, **overrides):
    out = tmp_path / name
    out.mkdir()
    synthetic.write_simulation(out, **{**SMALL, "chunk_cells": 1000, **overrides})
    return out


def test_files_are_byte_identical_for_a_seed_and_differ_for_another(tmp_path):
    a = _write(tmp_path, "a")
    b = _write(tmp_path, "b", chunk_cells=150, threads=2)
    c = _write(tmp_path, "c", seed=1)
    for name in ("dataset.h5ad", "genesets.gmt", "truth.json"):
        assert io.sha256_file(a / name) == io.sha256_file(b / name), name
    assert io.sha256_file(a / "dataset.h5ad") != io.sha256_file(c / "dataset.h5ad")
    assert io.sha256_file(a / "truth.json") != io.sha256_file(c / "truth.json")


def test_threads_do_not_change_the_result(small):
    one = synthetic.simulate(small, threads=1)
    two = synthetic.simulate(small, threads=2)
    assert (one.X != two.X).nnz == 0


def test_incremental_file_reads_in_memory_and_backed(tmp_path, small):
    adata = synthetic.simulate(small)
    path = tmp_path / "sim.h5ad"
    synthetic.write_h5ad_incremental(small, path, chunk_cells=150, uns={"title": "t"})
    memory = ad.read_h5ad(path)
    assert (memory.X != adata.X).nnz == 0
    pd.testing.assert_frame_equal(memory.obs, adata.obs)
    pd.testing.assert_frame_equal(memory.var, adata.var)
    assert memory.uns["title"] == "t"
    backed = ad.read_h5ad(path, backed="r")
    try:
        block = backed.X[100:110]
        assert (block != adata.X[100:110]).nnz == 0
    finally:
        backed.file.close()
    with pytest.raises(ValueError):
        synthetic.design_simulation(**{**TINY, "n_genes": 400})


def test_written_gmt_and_truth_match_design(tmp_path, small):
    out = _write(tmp_path, "d")
    sets = io.read_gmt(out / "genesets.gmt")
    assert sets == synthetic.gene_set_library(small)
    assert json.loads((out / "truth.json").read_text()) == json.loads(
        json.dumps(synthetic.truth(small))
    )
