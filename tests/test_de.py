"""Differential expression with age (PyDESeq2 on pseudobulk), and the de stage."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from tests.builders import CT, make_pseudobulk, tiny_params, write_params

from immune_aging import count_checks, io, names
from immune_aging.analysis import age, de, de_plots, de_samples
from immune_aging.errors import InputError
from immune_aging.stages import de as de_stage

DE_PARAMS = {"alpha": 0.05, "min_total_count": 10, "min_donors": 6}


def run(adata, **kw):
    opts = DE_PARAMS | kw
    return de.differential_expression(adata, **opts)


def test_planted_age_effect_has_the_right_sign():
    results, summaries = run(make_pseudobulk(extra=False))
    assert list(results.columns) == de.RESULT_COLUMNS
    up = results.set_index("gene").loc["GENE0"]
    down = results.set_index("gene").loc["GENE1"]
    assert up["log2FoldChange"] > 0 and up["stat"] > 0 and up["padj"] < 0.05
    assert down["log2FoldChange"] < 0 and down["stat"] < 0 and down["padj"] < 0.05
    # per-decade effect recovered from the per-SD coefficient
    assert up["log2fc_per_decade"] == pytest.approx(1.0, abs=0.25)
    assert down["log2fc_per_decade"] == pytest.approx(-1.0, abs=0.25)
    (s,) = summaries
    assert s.design == "~age_scaled + sex"
    assert s.age_sd_years == pytest.approx(np.std(np.linspace(22, 85, 10), ddof=1))
    assert s.n_up >= 1 and s.n_down >= 1


def test_unknown_age_donors_are_dropped_and_counted():
    _, summaries = run(make_pseudobulk(n_donors=10, unknown_age=2, extra=False))
    (s,) = summaries
    assert (s.n_samples, s.n_donors, s.n_dropped_unknown_age) == (10, 8, 2)


def test_empty_and_single_donor_cell_types_are_skipped():
    results, summaries = run(make_pseudobulk())
    by = {s.cell_type: s for s in summaries}
    assert by["empty"].skipped == "no samples"
    assert by["natural killer cell"].skipped == (
        "1 donor(s) of known age, fewer than de.min_donors=6"
    )
    assert set(results["cell_type"]) == {CT}


def test_every_cell_type_skipped_gives_empty_table():
    results, summaries = run(make_pseudobulk(n_donors=4, extra=False))
    assert results.empty and list(results.columns) == de.RESULT_COLUMNS
    assert summaries[0].skipped.startswith("4 donor(s) of known age")


def test_single_sex_falls_back_to_age_only_design():
    adata = make_pseudobulk(extra=False)
    adata.obs["sex"] = "female"
    _, (s,) = run(adata)
    assert s.design == "~age_scaled" and s.skipped is None


def test_pool_covariate_enters_the_design_when_it_varies():
    adata = make_pseudobulk(extra=False)
    adata.obs["pool"] = pd.Categorical(["P1"] * 5 + ["P2"] * 5)
    results, (s,) = run(adata, covariates=["sex", "pool"])
    assert s.design == "~age_scaled + sex + pool"
    assert results.set_index("gene").loc["GENE0", "padj"] < 0.05
    adata.obs["pool"] = "P1"
    _, (s,) = run(adata, covariates=["sex", "pool"])
    assert s.design == "~age_scaled + sex"
    _, (s,) = run(adata, covariates=[])
    assert s.design == "~age_scaled"


def test_pools_of_one_sample_share_a_level():
    merged = de_samples._pool_levels(np.array(["A", "A", "B", "C", "D", "D"]))
    assert merged.tolist() == ["A", "A", "other pools", "other pools", "D", "D"]
    # a single lone pool joins the largest one
    assert de_samples._pool_levels(np.array(["A", "A", "A", "B", "C", "C"])).tolist() == [
        "A",
        "A",
        "A",
        "A",
        "C",
        "C",
    ]
    assert de_samples._pool_levels(np.array(["A", "A"])).tolist() == ["A", "A"]


def test_genes_below_min_total_count_are_not_tested():
    adata = make_pseudobulk(extra=False)
    x = adata.X.toarray()
    x[:, 5] = 0
    x[:, 6] = 0
    x[0, 6] = 3
    adata.X = sp.csr_matrix(x)
    results, (s,) = run(adata)
    assert s.n_genes_tested == 28
    assert not {"GENE5", "GENE6"} & set(results["gene"])


def test_same_age_everywhere_is_skipped():
    adata = make_pseudobulk(extra=False)
    adata.obs["age"] = 50.0
    _, (s,) = run(adata)
    assert s.skipped == "every donor has the same age"


def test_input_is_not_modified():
    adata = make_pseudobulk()
    before = adata.copy()
    run(adata)
    assert (adata.X != before.X).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, before.obs)


def test_parallel_gives_the_same_results():
    adata = ad.concat(
        [make_pseudobulk(extra=False, seed=1), _relabel(make_pseudobulk(extra=False, seed=2))],
        merge="same",
    )
    serial, _ = run(adata, n_jobs=1)
    parallel, _ = run(adata, n_jobs=2)
    pd.testing.assert_frame_equal(serial, parallel)


def _relabel(adata):
    adata.obs["cell_type"] = pd.Categorical(["naive B cell"] * adata.n_obs)
    adata.obs_names = [f"naive B cell|{d}" for d in adata.obs["donor_id"]]
    return adata


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.obs.pop("age"), "pb.h5ad: obs column 'age' missing"),
        (
            lambda a: a.var.pop("feature_name"),
            "pb.h5ad: var column 'feature_name' missing",
        ),
        (
            lambda a: setattr(a, "X", a.X * 0.5),
            "pb.h5ad: X holds non-integer values (e.g. 11.5): raw counts are required",
        ),
        (
            lambda a: a.obs.__setitem__("age", "old"),
            "pb.h5ad: obs column 'age' must be numeric years (NaN when unknown)",
        ),
    ],
)
def test_validation_messages(change, message):
    adata = make_pseudobulk()
    change(adata)
    with pytest.raises(InputError) as err:
        count_checks.validate_pseudobulk(adata, "pb.h5ad")
    assert str(err.value) == message


def test_duplicate_sample_is_refused():
    adata = make_pseudobulk(extra=False)
    adata.obs["donor_id"] = "D0"
    with pytest.raises(InputError) as err:
        count_checks.validate_pseudobulk(adata, "pb.h5ad")
    assert str(err.value) == f"pb.h5ad: more than one sample for cell type {CT!r} and donor 'D0'"


def test_slugs_are_safe_and_unique():
    assert names.slug(CT) == "central_memory_cd4_positive_alpha_beta_t_cell"
    assert names.unique_slugs(["a b", "a-b", "c"]) == {"a b": "a_b", "a-b": "a_b_2", "c": "c"}


# --------------------------------------------------------------------------- stage


@pytest.fixture
def stage_env(tmp_path, monkeypatch):
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("IMMUNE_AGING_THREADS", "1")
    write_params(tmp_path / "params.yaml", tiny_params(de=DE_PARAMS))
    return tmp_path


def stage_args(root):
    return [
        "--params", str(root / "params.yaml"),
        "--input", str(root / "pb.h5ad"),
        "--out", str(root / "de" / "results.parquet"),
        "--metrics", str(root / "metrics" / "de.json"),
        "--plots", str(root / "plots" / "de"),
    ]  # fmt: skip


def test_stage_writes_results_metrics_and_plots(stage_env):
    io.write_h5ad(make_pseudobulk(unknown_age=1), stage_env / "pb.h5ad")
    assert de_stage.main(stage_args(stage_env)) == 0
    results = pd.read_parquet(stage_env / "de" / "results.parquet")
    assert list(results.columns) == de.RESULT_COLUMNS
    metrics = json.loads((stage_env / "metrics" / "de.json").read_text())
    assert metrics["n_cell_types_tested"] == 1 and metrics["n_cell_types_skipped"] == 2
    entry = metrics["cell_types"][CT]
    assert entry["n_donors"] == 9 and entry["n_dropped_unknown_age"] == 1
    assert entry["n_genes_tested"] == 30 and entry["n_up"] >= 1
    assert metrics["cell_types"]["empty"]["skipped"] == "no samples"
    plots = sorted(p.name for p in (stage_env / "plots" / "de").iterdir())
    assert plots == [
        "de_counts.csv",
        "de_counts.png",
        "volcano_central_memory_cd4_positive_alpha_beta_t_cell.png",
    ]


def test_stage_bad_input_writes_nothing(stage_env, capsys):
    adata = make_pseudobulk()
    del adata.obs["donor_id"]
    io.write_h5ad(adata, stage_env / "pb.h5ad")
    assert de_stage.main(stage_args(stage_env)) == 2
    assert f"error: de: {stage_env / 'pb.h5ad'}: obs column 'donor_id' missing" in (
        capsys.readouterr().err
    )
    assert not (stage_env / "de").exists() and not (stage_env / "metrics").exists()


def test_stage_every_cell_type_skipped_is_an_error(stage_env, capsys):
    io.write_h5ad(make_pseudobulk(n_donors=4, extra=False), stage_env / "pb.h5ad")
    assert de_stage.main(stage_args(stage_env)) == 2
    assert (
        f"error: de: {stage_env / 'pb.h5ad'}: no cell type can be tested for age effects: all 1"
        f" skipped (e.g. {CT!r}: 4 donor(s) of known age, fewer than de.min_donors=6)"
    ) in capsys.readouterr().err
    assert not (stage_env / "de").exists()


def test_volcano_labels_the_most_significant_genes_by_symbol():
    import io as _io

    rows = pd.DataFrame(
        {
            "gene_id": ["E1", "E2", "E3", "E4"],
            "gene": ["AAA", "B$C$", "", "DDD"],
            "log2FoldChange": [1.0, -2.0, 0.5, 0.1],
            "pvalue": [1e-6, 1e-8, 1e-3, 0.5],
            "padj": [1e-5, 1e-7, 1e-2, np.nan],
        }
    )
    fig = de_plots.plot_volcano(rows, cell_type="T", alpha=0.05, label_top=3)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert sorted(labels) == ["AAA", "B\\$C\\$", "E3"]  # top 3 by padj; no symbol: the ID
    fig.savefig(_io.BytesIO(), format="png")  # "$" in a symbol does not break rendering


def test_sex_labels_make_missing_and_empty_unknown():
    labels = age.sex_labels(pd.Categorical(["Female", "male ", None, "unknown"]))
    assert labels.tolist() == ["female", "male", "unknown", "unknown"]
    assert age.sex_labels(np.array(["male", "", np.nan], dtype=object)).tolist() == [
        "male",
        "unknown",
        "unknown",
    ]


def test_unknown_sex_is_a_level_of_its_own_in_the_design():
    adata = make_pseudobulk(12, extra=False)
    sexes = adata.obs["sex"].astype(str).to_numpy().copy()
    sexes[[0, 1]] = ["unknown", ""]
    adata.obs["sex"] = pd.Categorical(sexes)
    _, metadata, summary = de_samples.prepare_cell_type(
        adata, CT, min_total_count=10, min_donors=6
    )
    assert summary.design == "~age_scaled + sex"
    assert sorted(metadata["sex"].cat.categories) == ["female", "male", "unknown"]
    assert metadata["sex"].astype(str).tolist()[:2] == ["unknown", "unknown"]
    # neither counted as female nor as male
    assert (metadata["sex"] == "female").sum() == (sexes[2:] == "female").sum()


def test_genes_below_min_mean_count_are_not_tested_and_counted():
    adata = make_pseudobulk(extra=False)
    x = adata.X.toarray()
    x[:, 5] = 1  # 10 counts in all: above min_total_count=10, mean 1 per donor
    adata.X = sp.csr_matrix(x)
    results, (s,) = run(adata, min_mean_count=2.0)
    assert (s.n_genes_tested, s.n_genes_low_mean) == (29, 1)
    assert "GENE5" not in set(results["gene"])
    _, (s,) = run(adata)
    assert (s.n_genes_tested, s.n_genes_low_mean) == (30, 0)


def test_cell_types_limit_the_cell_types_tested():
    adata = ad.concat(
        [make_pseudobulk(extra=False, seed=1), _relabel(make_pseudobulk(extra=False, seed=2))],
        merge="same",
    )
    both, _ = run(adata)
    one, summaries = run(adata, cell_types=["naive B cell"])
    assert [s.cell_type for s in summaries] == ["naive B cell"]
    assert set(one["cell_type"]) == {"naive B cell"}
    pd.testing.assert_frame_equal(
        one, both[both["cell_type"] == "naive B cell"].reset_index(drop=True)
    )
    with pytest.raises(ValueError, match="cell type 'monocyte' not in the data"):
        run(adata, cell_types=["monocyte"])


def test_solvers_agree():
    """PyDESeq2's per-gene fits and the batched ones: the same results to rounding."""
    adata = make_pseudobulk(n_donors=40, n_genes=60, extra=False)
    batched, _ = run(adata, solver="batched")
    reference, _ = run(adata, solver="pydeseq2")
    for col in ("log2FoldChange", "stat", "baseMean"):
        np.testing.assert_allclose(batched[col], reference[col], rtol=1e-3, atol=1e-4)
    pd.testing.assert_series_equal(batched["padj"] < 0.05, reference["padj"] < 0.05)


def test_stage_cell_types_param(stage_env, capsys):
    io.write_h5ad(make_pseudobulk(), stage_env / "pb.h5ad")
    write_params(stage_env / "params.yaml", tiny_params(de=DE_PARAMS | {"cell_types": [CT]}))
    assert de_stage.main(stage_args(stage_env)) == 0
    metrics = json.loads((stage_env / "metrics" / "de.json").read_text())
    assert list(metrics["cell_types"]) == [CT]
    write_params(
        stage_env / "params.yaml", tiny_params(de=DE_PARAMS | {"cell_types": [CT, "B cell"]})
    )
    (stage_env / "metrics" / "de.json").unlink()
    assert de_stage.main(stage_args(stage_env)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: de: {stage_env / 'pb.h5ad'}: de.cell_types: cell type 'B cell' not in the "
        f"data (2 cell types, e.g. {CT!r})"
    )
    assert not (stage_env / "metrics" / "de.json").exists()
