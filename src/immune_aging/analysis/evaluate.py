"""Scoring the pipeline's results against the simulation's ground truth.

Every score is a flat key (``"de.recall"``...) so that ``dvc metrics show`` prints
it as is; all are ``None`` when there is no truth (real data), and a single score
is ``None`` when it is undefined (e.g. no significant gene, so no FDR).

Definitions (``alpha`` is ``evaluate.alpha``):

- ``de.recall``: share of the planted (cell type, gene) pairs, over the aged cell
  types that DE tested, with ``padj < alpha`` and the planted sign. A planted gene
  that was not tested (too few counts) counts as missed.
- ``de.fdr``: share of the significant (cell type, gene) pairs, over every tested
  cell type, that are not planted with that sign.
- ``gsea.planted_found`` / ``gsea.planted_total``: planted (set, cell type) pairs,
  over cell types that DE tested, with GSEA ``fdr < alpha`` and an NES of the
  planted sign.
- ``ora.planted_found``: the same pairs with ORA ``padj < alpha`` in the planted
  direction.
- ``predict.r2`` / ``predict.baseline_r2``: mean ``r2_mean`` /
  ``baseline_r2_mean`` over the aged cell types present (with scores) in
  ``predict.json``.
- ``cluster.ari``: adjusted Rand index of Leiden clusters against cell types;
  ``cluster.purity``: share of cells whose cluster's majority cell type is their own.
- ``qc.doublet_recall`` / ``qc.doublet_precision``: planted doublets among the
  filtered cells found by ``predicted_doublet``, and share of predicted doublets
  that are planted ones.

Specificity and power (added to the scores above):

- ``de.recall_by_effect``: recall of the planted (cell type, gene) pairs by bin of
  ``|log2 fold change per decade|`` (:data:`EFFECT_BINS`): per bin ``planted``,
  ``found`` and ``recall``. The truth's ``log2fc_per_decade_by_cell_type`` gives
  the effects where present (realistic preset), else ``log2fc_per_decade``.
- ``de.effect_scale``: the slope, through the origin, of the estimated
  ``log2fc_per_decade`` on the planted one over the planted pairs that were
  tested: 1 when effects are estimated without bias, above 1 when inflated.
- ``de.null_cell_types``, ``de.null_cell_types_with_discoveries`` and
  ``de.null_discoveries``: tested cell types without any planted effect, those with
  a gene at ``padj < alpha``, and the number of such genes.
- ``gsea.decoys_called`` / ``gsea.decoys_total`` / ``gsea.decoy_rate``: decoy (set,
  tested cell type) pairs with GSEA ``fdr < alpha`` in either direction; the same
  for ORA (``padj < alpha`` in either list); ``*.decoy_rate_by_kind`` splits them
  by the truth's ``decoy_kinds`` (``random``, ``program``...).
- ``predict.r2_null`` / ``predict.baseline_r2_null``: mean R^2 of the model and
  of the sex-only baseline over the cell types without an age effect; the first
  should not exceed the second by more than noise.

Gene-set terms match a planted set by name, or by ``<library>:<name>`` when the
``genesets`` stage prefixed it to resolve a name clash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from immune_aging.analysis.recovery import (
    EFFECT_BINS,
    de_scores,
    decoy_scores,
    gsea_scores,
    null_cell_types,
    ora_scores,
    planted_effects,
    planted_pairs,
    power_scores,
    ratio,
    recall_by_effect,
)
from immune_aging.errors import InputError

__all__ = [
    "EFFECT_BINS",
    "KEYS",
    "NO_TRUTH",
    "TRUTH_KEYS",
    "cluster_scores",
    "de_scores",
    "decoy_scores",
    "doublet_scores",
    "empty_de",
    "empty_scores",
    "evaluate",
    "gsea_scores",
    "null_cell_types",
    "ora_scores",
    "planted_effects",
    "planted_pairs",
    "power_scores",
    "predict_scores",
    "recall_by_effect",
    "validate_truth",
]

#: The keys of the evaluation metrics, in order.
KEYS = (
    "de.recall",
    "de.fdr",
    "gsea.planted_found",
    "gsea.planted_total",
    "ora.planted_found",
    "predict.r2",
    "predict.baseline_r2",
    "cluster.ari",
    "cluster.purity",
    "qc.doublet_recall",
    "qc.doublet_precision",
    "de.discoveries",
    "de.recall_by_effect",
    "de.effect_scale",
    "de.null_cell_types",
    "de.null_cell_types_with_discoveries",
    "de.null_discoveries",
    "gsea.decoys_called",
    "gsea.decoys_total",
    "gsea.decoy_rate",
    "gsea.decoy_rate_by_kind",
    "ora.decoys_called",
    "ora.decoys_total",
    "ora.decoy_rate",
    "ora.decoy_rate_by_kind",
    "predict.r2_null",
    "predict.baseline_r2_null",
)
TRUTH_KEYS = ("aged_cell_types", "age_genes", "gene_sets", "doublets")
#: A truth without any planted effect (for empty tables).
NO_TRUTH = {"aged_cell_types": [], "age_genes": {}, "gene_sets": {}, "doublets": []}


def empty_de() -> pd.DataFrame:
    """Return an empty DE table with the columns the scores read.

    Returns
    -------
    pandas.DataFrame
        No rows.
    """
    return pd.DataFrame(
        {
            "cell_type": pd.Series([], dtype=object),
            "gene_id": pd.Series([], dtype=object),
            "log2FoldChange": pd.Series([], dtype=float),
            "padj": pd.Series([], dtype=float),
        }
    )


def empty_scores() -> dict[str, None]:
    """Return every key with a ``None`` score (no truth available).

    Returns
    -------
    dict
        :data:`KEYS` mapped to ``None``.
    """
    return dict.fromkeys(KEYS)


def validate_truth(truth: Any, *, source: str = "truth.json") -> None:
    """Check that the truth holds what the scores need.

    Parameters
    ----------
    truth
        The decoded ``truth.json``.
    source
        Name used in error messages.

    Raises
    ------
    InputError
        When it is not a mapping or lacks a key.
    """
    if not isinstance(truth, Mapping):
        raise InputError(f"{source}: expected a JSON object")
    for key in TRUTH_KEYS:
        if key not in truth:
            raise InputError(f"{source}: key {key!r} missing")


def predict_scores(
    predict_metrics: Mapping[str, Mapping[str, Any]], truth: Mapping[str, Any]
) -> dict[str, float | None]:
    """Mean cross-validated R^2 over the aged cell types.

    Parameters
    ----------
    predict_metrics
        ``predict.json``: cell type to its scores.
    truth
        The simulation truth (``aged_cell_types``).

    Returns
    -------
    dict
        ``predict.r2`` and ``predict.baseline_r2`` (``None`` when no aged cell type
        has scores); ``predict.r2_null`` and ``predict.baseline_r2_null`` over the
        cell types without an age effect.
    """
    r2, base = [], []
    for ct in truth["aged_cell_types"]:
        m = predict_metrics.get(ct)
        if m and m.get("r2_mean") is not None:
            r2.append(float(m["r2_mean"]))
            base.append(float(m["baseline_r2_mean"]))
    r2_null, base_null = [], []
    for ct in null_cell_types(truth):
        m = predict_metrics.get(ct)
        if m and m.get("r2_mean") is not None:
            r2_null.append(float(m["r2_mean"]))
            base_null.append(float(m["baseline_r2_mean"]))
    return {
        "predict.r2": float(np.mean(r2)) if r2 else None,
        "predict.baseline_r2": float(np.mean(base)) if base else None,
        "predict.r2_null": float(np.mean(r2_null)) if r2_null else None,
        "predict.baseline_r2_null": float(np.mean(base_null)) if base_null else None,
    }


def cluster_scores(clusters: pd.DataFrame) -> dict[str, float | None]:
    """Agreement of Leiden clusters with the annotated cell types.

    Parameters
    ----------
    clusters
        Rows with ``leiden`` and ``cell_type``.

    Returns
    -------
    dict
        ``cluster.ari`` and ``cluster.purity``.
    """
    from sklearn.metrics import adjusted_rand_score

    if clusters.empty:
        return {"cluster.ari": None, "cluster.purity": None}
    leiden = clusters["leiden"].astype(str).to_numpy()
    ct = clusters["cell_type"].astype(str).to_numpy()
    table = pd.crosstab(leiden, ct)
    purity = float(table.max(axis=1).sum() / table.to_numpy().sum())
    return {"cluster.ari": float(adjusted_rand_score(ct, leiden)), "cluster.purity": purity}


def doublet_scores(cells: pd.DataFrame, truth: Mapping[str, Any]) -> dict[str, float | None]:
    """Recall and precision of the predicted doublets among the filtered cells.

    Parameters
    ----------
    cells
        The QC table: index cell IDs, boolean column ``predicted_doublet``.
    truth
        The simulation truth (``doublets``: cell IDs).

    Returns
    -------
    dict
        ``qc.doublet_recall`` and ``qc.doublet_precision``.
    """
    planted = set(map(str, truth["doublets"]))
    ids = cells.index.astype(str)
    is_true = ids.isin(planted)
    pred = cells["predicted_doublet"].fillna(False).to_numpy(dtype=bool)
    tp = int((pred & is_true).sum())
    return {
        "qc.doublet_recall": ratio(tp, int(is_true.sum())),
        "qc.doublet_precision": ratio(tp, int(pred.sum())),
    }


def evaluate(
    truth: Mapping[str, Any] | None,
    *,
    de_results: pd.DataFrame,
    gsea_results: pd.DataFrame,
    ora_results: pd.DataFrame,
    predict_metrics: Mapping[str, Mapping[str, Any]],
    clusters: pd.DataFrame,
    cells: pd.DataFrame,
    alpha: float,
) -> dict[str, float | int | None]:
    """Compute every score of :data:`KEYS`.

    Parameters
    ----------
    truth
        The decoded ``truth.json``, or ``None`` for real data (all scores ``None``).
    de_results, gsea_results, ora_results
        The result tables of those stages.
    predict_metrics
        The decoded ``predict.json``.
    clusters
        ``clusters.parquet`` (``leiden, cell_type``).
    cells
        ``cells.parquet`` (index cell IDs, ``predicted_doublet``).
    alpha
        Significance cut for DE, GSEA and ORA.

    Returns
    -------
    dict
        :data:`KEYS` to scores, in that order.
    """
    if truth is None:
        return empty_scores()
    scores: dict[str, Any] = {}
    scores |= de_scores(de_results, truth, alpha=alpha)
    scores |= power_scores(de_results, truth, alpha=alpha)
    tested = set(de_results["cell_type"].astype(str))
    pairs = planted_pairs(truth, tested)
    scores |= gsea_scores(gsea_results, pairs, alpha=alpha)
    scores |= ora_scores(ora_results, pairs, alpha=alpha)
    scores |= decoy_scores(gsea_results, ora_results, truth, tested, alpha=alpha)
    scores |= predict_scores(predict_metrics, truth)
    scores |= cluster_scores(clusters)
    scores |= doublet_scores(cells, truth)
    return {k: scores[k] for k in KEYS}
