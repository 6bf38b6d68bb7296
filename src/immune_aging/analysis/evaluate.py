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

from immune_aging.errors import InputError

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
#: Bins of |planted log2 fold change per decade| for ``de.recall_by_effect``: label,
#: lower bound (inclusive), upper bound (exclusive).
EFFECT_BINS = (
    ("<0.05", 0.0, 0.05),
    ("0.05-0.1", 0.05, 0.1),
    ("0.1-0.2", 0.1, 0.2),
    (">=0.2", 0.2, float("inf")),
)


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


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def de_scores(
    de_results: pd.DataFrame, truth: Mapping[str, Any], *, alpha: float
) -> dict[str, float | None]:
    """Recall and false-discovery proportion of the planted age genes.

    Parameters
    ----------
    de_results
        DE rows with ``cell_type, gene_id, log2FoldChange, padj``.
    truth
        The simulation truth (``aged_cell_types``, ``age_genes``).
    alpha
        Adjusted p-value cut.

    Returns
    -------
    dict
        ``de.recall`` and ``de.fdr``.
    """
    planted: dict[tuple[str, str], int] = {}
    for ct in truth["aged_cell_types"]:
        genes = truth["age_genes"].get(ct, {})
        for gene in genes.get("up", []):
            planted[(ct, gene)] = 1
        for gene in genes.get("down", []):
            planted[(ct, gene)] = -1
    tested_cts = set(de_results["cell_type"].astype(str))
    sig = de_results[de_results["padj"].to_numpy(dtype=float) < alpha]
    found_sign = {
        (str(c), str(g)): int(np.sign(v))
        for c, g, v in zip(sig["cell_type"], sig["gene_id"], sig["log2FoldChange"], strict=True)
    }
    relevant = {k: s for k, s in planted.items() if k[0] in tested_cts}
    hits = sum(found_sign.get(k) == s for k, s in relevant.items())
    false = sum(planted.get(k) != s for k, s in found_sign.items())
    return {"de.recall": _ratio(hits, len(relevant)), "de.fdr": _ratio(false, len(found_sign))}


def planted_effects(truth: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """Every planted effect: (cell type, gene id) -> log2 fold change per decade.

    Parameters
    ----------
    truth
        The simulation truth: ``log2fc_per_decade_by_cell_type`` when present,
        else ``age_genes`` of ``aged_cell_types`` with ``log2fc_per_decade``.

    Returns
    -------
    dict
        Non-zero effects only.
    """
    by_type = truth.get("log2fc_per_decade_by_cell_type")
    if by_type is not None:
        return {
            (str(ct), str(g)): float(v) for ct, genes in by_type.items() for g, v in genes.items()
        }
    effect = truth.get("log2fc_per_decade", {})
    out = {}
    for ct in truth["aged_cell_types"]:
        genes = truth["age_genes"].get(ct, {})
        for gene in [*genes.get("up", []), *genes.get("down", [])]:
            if gene in effect:
                out[(str(ct), str(gene))] = float(effect[gene])
    return out


def null_cell_types(truth: Mapping[str, Any]) -> list[str]:
    """Return the simulated cell types without any planted age effect.

    Parameters
    ----------
    truth
        The simulation truth (``null_cell_types`` when present, else ``cell_types``
        not in ``aged_cell_types``).

    Returns
    -------
    list of str
        Labels.
    """
    if "null_cell_types" in truth:
        return [str(c) for c in truth["null_cell_types"]]
    aged = set(truth["aged_cell_types"])
    return [str(c) for c in truth.get("cell_types", []) if c not in aged]


def recall_by_effect(
    de_results: pd.DataFrame, truth: Mapping[str, Any], *, alpha: float
) -> pd.DataFrame:
    """Recall of the planted pairs of the tested cell types per effect-size bin.

    Parameters
    ----------
    de_results
        DE rows with ``cell_type, gene_id, log2FoldChange, padj``.
    truth
        The simulation truth.
    alpha
        Adjusted p-value cut.

    Returns
    -------
    pandas.DataFrame
        One row per bin of :data:`EFFECT_BINS`: ``bin, low, high, planted, found,
        recall`` (recall NaN for an empty bin).
    """
    tested = set(de_results["cell_type"].astype(str))
    sig = de_results[de_results["padj"].to_numpy(dtype=float) < alpha]
    found = {
        (str(c), str(g)): float(np.sign(v))
        for c, g, v in zip(sig["cell_type"], sig["gene_id"], sig["log2FoldChange"], strict=True)
    }
    rows = []
    effects = {k: v for k, v in planted_effects(truth).items() if k[0] in tested}
    for label, low, high in EFFECT_BINS:
        pairs = [(k, v) for k, v in effects.items() if low <= abs(v) < high]
        hits = sum(found.get(k) == np.sign(v) for k, v in pairs)
        rows.append(
            {
                "bin": label,
                "low": low,
                "high": high,
                "planted": len(pairs),
                "found": int(hits),
                "recall": hits / len(pairs) if pairs else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def _none_if_nan(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def power_scores(
    de_results: pd.DataFrame, truth: Mapping[str, Any], *, alpha: float
) -> dict[str, Any]:
    """Recall by effect size, effect-size bias and discoveries in null cell types.

    Parameters
    ----------
    de_results
        DE rows with ``cell_type, gene_id, log2FoldChange, padj`` and, for
        ``de.effect_scale``, ``log2fc_per_decade``.
    truth
        The simulation truth.
    alpha
        Adjusted p-value cut.

    Returns
    -------
    dict
        ``de.discoveries, de.recall_by_effect, de.effect_scale, de.null_cell_types,
        de.null_cell_types_with_discoveries, de.null_discoveries``.
    """
    table = recall_by_effect(de_results, truth, alpha=alpha)
    by_bin = {
        r.bin: {"planted": int(r.planted), "found": int(r.found), "recall": _none_if_nan(r.recall)}
        for r in table.itertuples(index=False)
    }
    sig = de_results["padj"].to_numpy(dtype=float) < alpha
    scale = None
    if "log2fc_per_decade" in de_results.columns:
        est = dict(
            zip(
                zip(
                    de_results["cell_type"].astype(str),
                    de_results["gene_id"].astype(str),
                    strict=True,
                ),
                de_results["log2fc_per_decade"].to_numpy(dtype=float),
                strict=True,
            )
        )
        pairs = [(est[k], v) for k, v in planted_effects(truth).items() if k in est]
        pairs = [(e, v) for e, v in pairs if np.isfinite(e)]
        if pairs:
            e, v = np.array(pairs).T
            scale = float(np.sum(e * v) / np.sum(v * v))
    tested = set(de_results["cell_type"].astype(str))
    null = [c for c in null_cell_types(truth) if c in tested]
    cts = de_results["cell_type"].astype(str).to_numpy()
    per_null = {c: int((sig & (cts == c)).sum()) for c in null}
    return {
        "de.discoveries": int(sig.sum()),
        "de.recall_by_effect": by_bin,
        "de.effect_scale": scale,
        "de.null_cell_types": len(null),
        "de.null_cell_types_with_discoveries": sum(n > 0 for n in per_null.values()),
        "de.null_discoveries": sum(per_null.values()),
    }


def decoy_scores(
    gsea_results: pd.DataFrame,
    ora_results: pd.DataFrame,
    truth: Mapping[str, Any],
    cell_types: set[str],
    *,
    alpha: float,
) -> dict[str, Any]:
    """Decoy gene sets called significant by GSEA and by ORA.

    Parameters
    ----------
    gsea_results
        GSEA rows with ``cell_type, term, fdr``.
    ora_results
        ORA rows with ``cell_type, term, padj``.
    truth
        The simulation truth (``decoy_sets``, optionally ``decoy_kinds``).
    cell_types
        The cell types DE tested; every (decoy, cell type) pair counts.
    alpha
        Significance cut.

    Returns
    -------
    dict
        ``{gsea,ora}.decoys_called``, ``.decoys_total``, ``.decoy_rate`` and
        ``.decoy_rate_by_kind``.
    """
    decoys = [str(d) for d in truth.get("decoy_sets", [])]
    kinds = {d: str(truth.get("decoy_kinds", {}).get(d, "random")) for d in decoys}
    out: dict[str, Any] = {}
    for name, table, column in (("gsea", gsea_results, "fdr"), ("ora", ora_results, "padj")):
        called_rows = table[table[column].to_numpy(dtype=float) < alpha]
        called_pairs = set(
            zip(called_rows["cell_type"].astype(str), called_rows["term"].astype(str), strict=True)
        )
        by_kind: dict[str, list[int]] = {}
        for decoy in decoys:
            for ct in sorted(cell_types):
                hit = any(
                    c == ct and (t == decoy or t.endswith(f":{decoy}")) for c, t in called_pairs
                )
                by_kind.setdefault(kinds[decoy], []).append(int(hit))
        calls = [h for hits in by_kind.values() for h in hits]
        out[f"{name}.decoys_called"] = int(sum(calls))
        out[f"{name}.decoys_total"] = len(calls)
        out[f"{name}.decoy_rate"] = _ratio(int(sum(calls)), len(calls))
        out[f"{name}.decoy_rate_by_kind"] = {
            kind: _ratio(int(sum(h)), len(h)) for kind, h in sorted(by_kind.items())
        }
    return out


def _term_index(terms: pd.Series, name: str) -> pd.Series:
    t = terms.astype(str)
    return (t == name) | t.str.endswith(f":{name}")


def planted_pairs(truth: Mapping[str, Any], cell_types: set[str]) -> list[tuple[str, str, str]]:
    """List the planted (set, cell type, direction) triples in the given cell types.

    Parameters
    ----------
    truth
        The simulation truth (``gene_sets``).
    cell_types
        Cell types to keep (those DE tested).

    Returns
    -------
    list of tuple
        ``(set name, cell type, "up" | "down")``, sorted.
    """
    out = []
    for name, info in truth["gene_sets"].items():
        for ct in info.get("cell_types", []):
            if ct in cell_types:
                out.append((name, ct, info["direction"]))
    return sorted(out)


def gsea_scores(
    gsea_results: pd.DataFrame, pairs: list[tuple[str, str, str]], *, alpha: float
) -> dict[str, int]:
    """Count planted (set, cell type) pairs found by GSEA with the planted sign.

    Parameters
    ----------
    gsea_results
        GSEA rows with ``cell_type, term, nes, fdr``.
    pairs
        From :func:`planted_pairs`.
    alpha
        FDR cut.

    Returns
    -------
    dict
        ``gsea.planted_found`` and ``gsea.planted_total``.
    """
    found = 0
    for name, ct, direction in pairs:
        rows = gsea_results[
            (gsea_results["cell_type"].astype(str) == ct) & _term_index(gsea_results["term"], name)
        ]
        sign = 1.0 if direction == "up" else -1.0
        ok = (rows["fdr"].to_numpy(float) < alpha) & (np.sign(rows["nes"].to_numpy(float)) == sign)
        found += bool(ok.any())
    return {"gsea.planted_found": found, "gsea.planted_total": len(pairs)}


def ora_scores(
    ora_results: pd.DataFrame, pairs: list[tuple[str, str, str]], *, alpha: float
) -> dict[str, int]:
    """Count planted (set, cell type) pairs found by ORA in the planted direction.

    Parameters
    ----------
    ora_results
        ORA rows with ``cell_type, direction, term, padj``.
    pairs
        From :func:`planted_pairs`.
    alpha
        Adjusted p-value cut.

    Returns
    -------
    dict
        ``ora.planted_found``.
    """
    found = 0
    for name, ct, direction in pairs:
        rows = ora_results[
            (ora_results["cell_type"].astype(str) == ct)
            & (ora_results["direction"].astype(str) == direction)
            & _term_index(ora_results["term"], name)
        ]
        found += bool((rows["padj"].to_numpy(float) < alpha).any())
    return {"ora.planted_found": found}


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
        "qc.doublet_recall": _ratio(tp, int(is_true.sum())),
        "qc.doublet_precision": _ratio(tp, int(pred.sum())),
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
