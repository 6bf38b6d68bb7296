"""Predicting donor age from pseudobulk expression, per cell type.

Features are the log counts per million (``log1p(CPM)``) of the ``n_top_genes``
genes with the highest mean log CPM, plus sex (:func:`sex_features`: female is the
reference, a 1/0 column for male and one for each other label present, such as
``unknown``, as the sex factor of the de stage's design). The gene
selection is unsupervised (it never looks at age) and is refitted inside every
training split (:class:`TopMeanGenes`), so the held-out donors influence neither
the genes chosen nor the model. The model is ``StandardScaler`` + ``LinearSVR``
fitted to the standardised age (``TransformedTargetRegressor``): LinearSVR
penalises its intercept, and on raw ages (mean ~50 years) that pulls predictions
towards zero. The baseline is the same model on sex alone. Splits are
``ShuffleSplit``; R^2 and MAE are computed on each held-out set and summarised by
their mean and sample SD. Donors of unknown age are left out.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import TransformedTargetRegressor
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import ShuffleSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVR

from immune_aging.executor import map_ordered

log = logging.getLogger(__name__)

#: Keys of each cell type's entry in the metrics, in order.
METRIC_KEYS = (
    "r2_mean",
    "r2_sd",
    "mae_mean",
    "mae_sd",
    "baseline_r2_mean",
    "baseline_r2_sd",
    "baseline_mae_mean",
    "baseline_mae_sd",
    "n_donors",
)
#: LinearSVR iterations at most (its default, 1000, stops short on a few thousand genes).
MAX_ITER = 100_000


class TopMeanGenes(TransformerMixin, BaseEstimator):
    """Keep the ``n_top`` feature columns with the highest mean, plus trailing columns.

    Parameters
    ----------
    n_top
        Gene columns kept (all when fewer).
    n_keep_last
        Trailing columns always kept (covariates such as sex).
    """

    def __init__(self, n_top: int = 2000, n_keep_last: int = 1) -> None:
        self.n_top = n_top
        self.n_keep_last = n_keep_last

    def fit(self, X: np.ndarray, y: Any = None) -> TopMeanGenes:
        """Choose the columns from the training rows.

        Parameters
        ----------
        X
            Samples x (genes + covariates).
        y
            Ignored (the choice is unsupervised).

        Returns
        -------
        TopMeanGenes
            Fitted, with ``columns_`` set.
        """
        X = np.asarray(X)
        n_genes = X.shape[1] - self.n_keep_last
        means = X[:, :n_genes].mean(axis=0)
        order = np.lexsort((np.arange(n_genes), -means))  # ties by column order
        top = np.sort(order[: min(self.n_top, n_genes)])
        self.columns_ = np.concatenate([top, np.arange(n_genes, X.shape[1])])
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Return the chosen columns.

        Parameters
        ----------
        X
            Samples x (genes + covariates).

        Returns
        -------
        ndarray
            Samples x chosen columns.
        """
        return np.asarray(X)[:, self.columns_]


def make_model(
    *, C: float, seed: int, n_top_genes: int | None, n_covariates: int = 1
) -> TransformedTargetRegressor:
    """Build the age regressor.

    Parameters
    ----------
    C
        LinearSVR regularisation.
    seed
        LinearSVR random state.
    n_top_genes
        Genes kept by :class:`TopMeanGenes`; ``None`` for the sex-only baseline
        (no selection step).
    n_covariates
        Trailing feature columns kept by the selection (the sex columns).

    Returns
    -------
    TransformedTargetRegressor
        Scaler + LinearSVR on the standardised target.
    """
    steps: list[tuple[str, Any]] = []
    if n_top_genes is not None:
        steps.append(("select", TopMeanGenes(n_top=n_top_genes, n_keep_last=n_covariates)))
    steps += [
        ("scale", StandardScaler()),
        ("svr", LinearSVR(C=C, random_state=seed, max_iter=MAX_ITER, dual="auto")),
    ]
    return TransformedTargetRegressor(regressor=Pipeline(steps), transformer=StandardScaler())


def log_cpm(counts: Any) -> np.ndarray:
    """Return ``log1p`` counts per million of a samples x genes count matrix.

    Parameters
    ----------
    counts
        Dense or sparse summed counts.

    Returns
    -------
    ndarray
        Dense float64 matrix (samples with no counts stay 0).
    """
    x = counts.toarray() if sp.issparse(counts) else np.array(counts, dtype=np.float64)
    x = x.astype(np.float64, copy=False)
    totals = x.sum(axis=1, keepdims=True)
    return np.log1p(np.divide(x * 1e6, totals, out=np.zeros_like(x), where=totals > 0))


def sex_feature(sex: pd.Series) -> np.ndarray:
    """Encode sex as 1.0 for male and 0.0 otherwise.

    Parameters
    ----------
    sex
        Values ``male``/``female``/``unknown``.

    Returns
    -------
    ndarray
        One column.
    """
    return (sex.astype(str).str.lower() == "male").to_numpy(dtype=float)[:, None]


def sex_features(sex: pd.Series) -> np.ndarray:
    """Encode sex with female as the reference, as the sex factor of the de stage.

    Labels are normalised by :func:`immune_aging.analysis.age.sex_labels` (missing
    or empty is ``unknown``). The first column is :func:`sex_feature` (1.0 for
    male); each other label present besides ``female`` and ``male`` (such as
    ``unknown``) gets a 1.0/0.0 column of its own, so a donor of unknown sex is
    counted neither as female nor as male.

    Parameters
    ----------
    sex
        Sex label per sample.

    Returns
    -------
    ndarray
        One column, plus one per further label, in sorted order.
    """
    from immune_aging.analysis.age import sex_labels

    labels = sex_labels(sex)
    columns = [sex_feature(pd.Series(labels))]
    for level in sorted(set(labels) - {"female", "male"}):
        columns.append((labels == level).astype(float)[:, None])
    return np.hstack(columns)


def min_donors(test_size: float) -> int:
    """Fewest donors giving at least 2 held-out and 3 training donors per split.

    Parameters
    ----------
    test_size
        Held-out fraction.

    Returns
    -------
    int
        The minimum number of donors.
    """
    n = 5
    while True:
        n_test = int(np.ceil(test_size * n))
        if n_test >= 2 and n - n_test >= 3:
            return n
        n += 1


def predict_cell_type(
    counts: Any,
    age: np.ndarray,
    sex: pd.Series,
    donors: np.ndarray,
    *,
    C: float,
    n_splits: int,
    test_size: float,
    seed: int,
    n_top_genes: int,
) -> tuple[dict[str, float | int | None], pd.DataFrame]:
    """Cross-validate the age model and its sex-only baseline on one cell type.

    Parameters
    ----------
    counts
        Samples x genes summed counts (donors of known age only).
    age
        Age in years per sample.
    sex
        Sex per sample.
    donors
        Donor ID per sample.
    C
        LinearSVR regularisation.
    n_splits, test_size
        ShuffleSplit repetitions and held-out fraction.
    seed
        Seed of the splits and of LinearSVR.
    n_top_genes
        Most expressed genes used as features.

    Returns
    -------
    metrics : dict
        :data:`METRIC_KEYS` (SDs with ``ddof=1``).
    predictions : DataFrame
        ``donor_id, split, age, predicted, model`` for every held-out donor
        (``model``: ``expression`` or ``baseline``).
    """
    baseline_features = sex_features(sex)
    features = np.hstack([log_cpm(counts), baseline_features])
    age = np.asarray(age, dtype=float)
    splitter = ShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
    scores: dict[str, list[float]] = {"r2": [], "mae": [], "baseline_r2": [], "baseline_mae": []}
    rows = []
    for split, (train, test) in enumerate(splitter.split(features)):
        for name, X, n_top, prefix in (
            ("expression", features, n_top_genes, ""),
            ("baseline", baseline_features, None, "baseline_"),
        ):
            model = make_model(
                C=C, seed=seed, n_top_genes=n_top, n_covariates=baseline_features.shape[1]
            )
            model.fit(X[train], age[train])
            pred = model.predict(X[test])
            scores[f"{prefix}r2"].append(float(r2_score(age[test], pred)))
            scores[f"{prefix}mae"].append(float(mean_absolute_error(age[test], pred)))
            rows.append(
                pd.DataFrame(
                    {
                        "donor_id": donors[test],
                        "split": split,
                        "age": age[test],
                        "predicted": pred,
                        "model": name,
                    }
                )
            )
    metrics: dict[str, float | int | None] = {}
    for key, values in scores.items():
        metrics[f"{key}_mean"] = float(np.mean(values))
        metrics[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    metrics["n_donors"] = len(age)
    return {k: metrics[k] for k in METRIC_KEYS}, pd.concat(rows, ignore_index=True)


def predict_age(
    adata: Any,
    *,
    C: float,
    n_splits: int,
    test_size: float,
    seed: int,
    n_top_genes: int,
    n_jobs: int = 1,
) -> tuple[dict[str, dict[str, float | int | None]], pd.DataFrame]:
    """Predict donor age from expression in every cell type of a pseudobulk AnnData.

    Parameters
    ----------
    adata
        Pseudobulk samples (obs ``cell_type, donor_id, sex, age``); not modified.
    C
        LinearSVR regularisation.
    n_splits, test_size
        ShuffleSplit repetitions and held-out fraction.
    seed
        Seed of the splits and of LinearSVR.
    n_top_genes
        Most expressed genes used as features.
    n_jobs
        Local worker processes for the cell types (:func:`immune_aging.executor.map_ordered`;
        1 runs them here, one after the other; under a Dask scheduler they run on its
        workers). Results do not depend on it.

    Returns
    -------
    metrics : dict
        Cell type label to :data:`METRIC_KEYS`; a cell type with too few donors of
        known age for the splits has ``None`` scores and its ``n_donors``.
    predictions : DataFrame
        ``cell_type, donor_id, split, age, predicted, model`` for held-out donors.
    """
    need = min_donors(test_size)
    out: dict[str, dict[str, float | int | None]] = {}
    tables = []
    ages = adata.obs["age"].to_numpy(dtype=float)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    fitted = []
    for ct in sorted(set(labels)):
        idx = np.flatnonzero((labels == ct) & np.isfinite(ages))
        if len(idx) < need:
            log.warning("cell type %r: %d donors of known age, need %d", ct, len(idx), need)
            out[ct] = {k: None for k in METRIC_KEYS} | {"n_donors": len(idx)}
            continue
        out[ct] = {}  # filled below, in this (sorted) place
        fitted.append((ct, idx))
    options = {
        "C": C,
        "n_splits": n_splits,
        "test_size": test_size,
        "seed": seed,
        "n_top_genes": n_top_genes,
    }
    sex = adata.obs["sex"]
    donors = adata.obs["donor_id"].astype(str).to_numpy()
    jobs = (((adata.X[idx], ages[idx], sex.iloc[idx], donors[idx]), options) for _, idx in fitted)
    results = map_ordered(
        _predict_job, jobs, n_jobs, label="cell types cross-validated", total=len(fitted)
    )
    for (ct, _), (metrics, pred) in zip(fitted, results, strict=True):
        log.info(
            "%s: R2 %.2f (baseline %.2f), MAE %.1f years, %d donors",
            ct,
            metrics["r2_mean"],
            metrics["baseline_r2_mean"],
            metrics["mae_mean"],
            metrics["n_donors"],
        )
        out[ct] = metrics
        pred.insert(0, "cell_type", ct)
        tables.append(pred)
    if tables:
        predictions = pd.concat(tables, ignore_index=True)
    else:
        predictions = pd.DataFrame(
            {
                "cell_type": pd.Series([], dtype=object),
                "donor_id": pd.Series([], dtype=object),
                "split": pd.Series([], dtype=np.int64),
                "age": pd.Series([], dtype=float),
                "predicted": pd.Series([], dtype=float),
                "model": pd.Series([], dtype=object),
            }
        )
    return out, predictions


def _predict_job(
    job: tuple[tuple[Any, np.ndarray, pd.Series, np.ndarray], dict[str, Any]],
) -> tuple[dict[str, float | int | None], pd.DataFrame]:
    """Worker: :func:`predict_cell_type` of one ``((counts, age, sex, donors), options)`` job."""
    data, options = job
    return predict_cell_type(*data, **options)


def plot_predictions(predictions: pd.DataFrame) -> Any:
    """Draw predicted against actual age, one panel per cell type.

    Parameters
    ----------
    predictions
        Rows from :func:`predict_age`.

    Returns
    -------
    matplotlib.figure.Figure
        Expression model in colour, baseline in grey, identity line dashed.
    """
    from matplotlib.figure import Figure

    cts = sorted(predictions["cell_type"].unique())
    ncol = min(4, max(len(cts), 1))
    nrow = max(1, int(np.ceil(len(cts) / ncol)))
    fig = Figure(figsize=(3 * ncol, 3 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.ravel()[len(cts) :]:
        ax.set_axis_off()
    if not cts:
        axes[0, 0].text(0.5, 0.5, "no cell type with enough donors", ha="center")
        return fig
    lo = float(min(predictions["age"].min(), predictions["predicted"].min()))
    hi = float(max(predictions["age"].max(), predictions["predicted"].max()))
    for ax, ct in zip(axes.ravel(), cts, strict=False):
        rows = predictions[predictions["cell_type"] == ct]
        for model, colour in (("baseline", "0.6"), ("expression", "tab:purple")):
            part = rows[rows["model"] == model]
            ax.scatter(part["age"], part["predicted"], s=10, c=colour, label=model)
        ax.plot([lo, hi], [lo, hi], ls="--", c="0.3", lw=0.7)
        ax.set_title(ct, fontsize=7)
        ax.set_xlabel("age (years)", fontsize=7)
        ax.set_ylabel("predicted", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return fig
