"""Age prediction from pseudobulk expression, and the predict stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from tests.builders import CT, make_pseudobulk, tiny_params, write_params

from immune_aging import io
from immune_aging.analysis import age, predict
from immune_aging.stages import predict as predict_stage

OPTS = {"C": 1.0, "n_splits": 3, "test_size": 0.25, "seed": 42, "n_top_genes": 20}


def test_metrics_have_exactly_the_documented_keys():
    metrics, predictions = predict.predict_age(make_pseudobulk(24, effect=1.0), **OPTS)
    assert list(metrics) == [CT, "natural killer cell"]
    assert tuple(metrics[CT]) == predict.METRIC_KEYS
    assert set(metrics[CT]) == {
        "r2_mean", "r2_sd", "mae_mean", "mae_sd", "baseline_r2_mean", "baseline_r2_sd",
        "baseline_mae_mean", "baseline_mae_sd", "n_donors",
    }  # fmt: skip
    assert metrics[CT]["n_donors"] == 24
    assert list(predictions.columns) == [
        "cell_type", "donor_id", "split", "age", "predicted", "model",
    ]  # fmt: skip
    # 3 splits x 6 held-out donors x 2 models
    assert len(predictions) == 36
    assert set(predictions["model"]) == {"expression", "baseline"}


def test_too_few_donors_give_null_scores():
    metrics, _ = predict.predict_age(make_pseudobulk(24), **OPTS)
    nk = metrics["natural killer cell"]
    assert nk["n_donors"] == 1
    assert all(nk[k] is None for k in predict.METRIC_KEYS if k != "n_donors")


def test_strong_age_signal_beats_the_sex_baseline():
    adata = make_pseudobulk(40, n_genes=30, effect=1.5, extra=False)
    metrics, _ = predict.predict_age(adata, **OPTS)
    m = metrics[CT]
    assert m["r2_mean"] > 0.7
    assert m["r2_mean"] > m["baseline_r2_mean"] + 0.3
    assert m["mae_mean"] < m["baseline_mae_mean"]


def test_unknown_ages_are_left_out():
    metrics, predictions = predict.predict_age(make_pseudobulk(24, unknown_age=4), **OPTS)
    assert metrics[CT]["n_donors"] == 20
    assert predictions["age"].notna().all()


def test_top_mean_genes_selects_in_fit_and_keeps_covariates():
    X = np.array([[1.0, 9.0, 5.0, 0.0], [3.0, 7.0, 5.0, 1.0]])
    sel = predict.TopMeanGenes(n_top=2, n_keep_last=1).fit(X)
    np.testing.assert_array_equal(sel.columns_, [1, 2, 3])
    np.testing.assert_array_equal(sel.transform(X), X[:, [1, 2, 3]])


def test_log_cpm_and_sex_feature():
    x = predict.log_cpm(np.array([[1.0, 3.0], [0.0, 0.0]]))
    np.testing.assert_allclose(x, [[np.log1p(250_000), np.log1p(750_000)], [0.0, 0.0]])
    sex = predict.sex_feature(pd.Series(["male", "female", "unknown"]))
    np.testing.assert_array_equal(sex.ravel(), [1.0, 0.0, 0.0])


def test_min_donors_allows_two_test_and_three_train_donors():
    assert predict.min_donors(0.2) == 6
    assert predict.min_donors(0.5) == 6
    assert predict.min_donors(0.25) == 5


def test_input_is_not_modified():
    adata = make_pseudobulk(24)
    before = adata.copy()
    predict.predict_age(adata, **OPTS)
    assert (adata.X != before.X).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, before.obs)


@pytest.fixture
def stage_env(tmp_path, monkeypatch):
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", str(tmp_path / "logs"))
    write_params(tmp_path / "params.yaml", tiny_params(predict=OPTS))
    io.write_h5ad(make_pseudobulk(24), tmp_path / "pb.h5ad")
    return tmp_path


def stage_args(root):
    return [
        "--params", str(root / "params.yaml"),
        "--input", str(root / "pb.h5ad"),
        "--metrics", str(root / "metrics" / "predict.json"),
        "--plots", str(root / "plots" / "predict"),
    ]  # fmt: skip


def test_stage_writes_metrics_and_plots(stage_env):
    assert predict_stage.main(stage_args(stage_env)) == 0
    metrics = json.loads((stage_env / "metrics" / "predict.json").read_text())
    assert set(metrics) == {CT, "natural killer cell"}
    assert set(metrics[CT]) == set(predict.METRIC_KEYS)
    plots = stage_env / "plots" / "predict"
    assert sorted(p.name for p in plots.iterdir()) == ["predictions.csv", "predictions.png"]
    table = pd.read_csv(plots / "predictions.csv")
    assert list(table.columns) == ["cell_type", "donor_id", "split", "age", "predicted", "model"]


def test_stage_is_deterministic(stage_env, tmp_path):
    assert predict_stage.main(stage_args(stage_env)) == 0
    first = (stage_env / "metrics" / "predict.json").read_bytes()
    png = (stage_env / "plots" / "predict" / "predictions.png").read_bytes()
    assert predict_stage.main(stage_args(stage_env)) == 0
    assert (stage_env / "metrics" / "predict.json").read_bytes() == first
    assert (stage_env / "plots" / "predict" / "predictions.png").read_bytes() == png


def test_unknown_sex_gets_its_own_column_as_in_de():

    sex = pd.Series(["male", "female", "unknown", None, ""])
    features = predict.sex_features(sex)
    np.testing.assert_array_equal(features, [[1, 0], [0, 0], [0, 1], [0, 1], [0, 1]])
    # the same donors are unknown for de (a level of its own of the sex factor)
    assert (age.sex_labels(sex) == "unknown").tolist() == (features[:, 1] == 1).tolist()
    # female and male only: one column, as sex_feature
    two = pd.Series(["male", "female", "female"])
    np.testing.assert_array_equal(predict.sex_features(two), predict.sex_feature(two))


def test_prediction_runs_with_donors_of_unknown_sex():
    adata = make_pseudobulk(24, effect=1.0)
    sexes = adata.obs["sex"].astype(str).to_numpy().copy()
    sexes[:3] = "unknown"
    adata.obs["sex"] = pd.Categorical(sexes)
    metrics, _ = predict.predict_age(adata, **OPTS)
    assert metrics[CT]["n_donors"] == 24
    assert np.isfinite(metrics[CT]["r2_mean"]) and np.isfinite(metrics[CT]["baseline_r2_mean"])
