"""Cell quality control and doublet detection (stage ``qc``).

Order of operations, per cell:

1. The per-cell QC metrics of :func:`scanpy.pp.calculate_qc_metrics`; mitochondrial,
   ribosomal and hemoglobin genes are recognised by symbol
   (:mod:`immune_aging.analysis.genes`).
2. Threshold rules, each a boolean ``fail_<rule>`` column: ``fixed`` limits or
   ``mad`` windows per group (:mod:`immune_aging.analysis.qc_rules`).

3. Doublets with Scrublet per group, on the cells that passed every threshold
   rule (:mod:`immune_aging.analysis.doublets`).

Every step is per cell or per group, so :func:`qc_batch` runs them on a batch of
whole groups (the counts of one batch in memory at a time; here or in a Dask job,
:func:`immune_aging.batches.map_batches`) and :func:`combine_batches` folds the
batches into the same result as :func:`qc_cells` on all cells at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from immune_aging.analysis import genes, qc_rules
from immune_aging.errors import InputError

log = logging.getLogger(__name__)

QC_VARS = ("mt", "ribo", "hb")
#: per-cell metric columns written to cells.parquet
METRIC_COLUMNS = (
    "n_genes_by_counts",
    "total_counts",
    "total_counts_mt",
    "pct_counts_mt",
    "total_counts_ribo",
    "pct_counts_ribo",
    "total_counts_hb",
    "pct_counts_hb",
)
THRESHOLD_RULES = (
    "min_genes",
    "max_genes",
    "min_counts",
    "max_counts",
    "pct_mt",
    "pct_hb",
)
RULES = (*THRESHOLD_RULES, "doublet")


def qc_metrics(adata: ad.AnnData) -> pd.DataFrame:
    """Compute per-cell QC metrics on raw counts.

    The per-cell metrics of :func:`scanpy.pp.calculate_qc_metrics` with
    ``qc_vars=["mt", "ribo", "hb"]`` (same names and definitions; a unit test
    checks equality), computed directly: scanpy's function also derives per-gene
    metrics through a CSC copy of the matrix, twice the memory of the counts.

    Parameters
    ----------
    adata
        Raw counts in ``X``; gene symbols in ``var['feature_name']`` (not modified).

    Returns
    -------
    pandas.DataFrame
        One row per cell (index ``obs_names``), columns :data:`METRIC_COLUMNS`.

    Raises
    ------
    InputError
        If ``var['feature_name']`` is missing.
    """
    if "feature_name" not in adata.var.columns:
        raise InputError("var column 'feature_name' missing")
    flags = genes.classify_genes(adata.var["feature_name"])[list(QC_VARS)]
    X = adata.X
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)  # no copy for CSR input
        n_genes = np.diff(X.indptr).astype(np.int64)
        if _has_explicit_zeros(X):
            rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
            n_genes -= np.bincount(rows[X.data == 0], minlength=X.shape[0])
    else:
        X = np.asarray(X)
        n_genes = (X != 0).sum(axis=1).astype(np.int64)
    # in the matrix's own float type: a float64 operand would upcast a copy of X
    dtype = X.dtype if X.dtype.kind == "f" else np.float64
    total = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    by_class = np.asarray(X @ flags.to_numpy(dtype=dtype), dtype=np.float64)
    out = pd.DataFrame(
        {"n_genes_by_counts": n_genes, "total_counts": total}, index=adata.obs_names
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        for k, name in enumerate(QC_VARS):
            out[f"total_counts_{name}"] = by_class[:, k]
            out[f"pct_counts_{name}"] = by_class[:, k] / total * 100
    out = out.loc[:, list(METRIC_COLUMNS)]
    out.index = out.index.copy()
    log.info(
        "%d cells; %d mitochondrial, %d ribosomal, %d hemoglobin genes (by symbol)",
        len(out),
        int(flags["mt"].sum()),
        int(flags["ribo"].sum()),
        int(flags["hb"].sum()),
    )
    return out


def _has_explicit_zeros(X: Any, block: int = 1 << 24) -> bool:
    data = X.data
    return any((data[lo : lo + block] == 0).any() for lo in range(0, len(data), block))


def qc_table(metrics: pd.DataFrame, fails: pd.DataFrame, doublets: pd.DataFrame) -> pd.DataFrame:
    """Assemble the per-cell QC table written to ``cells.parquet``.

    Parameters
    ----------
    metrics
        Output of :func:`qc_metrics`.
    fails
        ``fail_<rule>`` columns of :func:`~immune_aging.analysis.qc_rules.threshold_rules`.
    doublets
        Per-cell output of :func:`detect_doublets`.

    Returns
    -------
    pandas.DataFrame
        Index ``cell_id``; metrics, ``doublet_score``, ``predicted_doublet``, one
        ``fail_<rule>`` column per rule of :data:`RULES`, and ``keep`` (no rule
        failed).
    """
    table = pd.concat([metrics, doublets], axis=1)
    for col in fails.columns:
        table[col] = fails[col].to_numpy(dtype=bool)
    table["fail_doublet"] = doublets["predicted_doublet"].to_numpy(dtype=bool)
    table["keep"] = ~table[[f"fail_{r}" for r in RULES]].any(axis=1)
    table.index = pd.Index(metrics.index.astype(str), name="cell_id")
    return table


def summary(
    table: pd.DataFrame,
    groups: pd.DataFrame,
    limits: pd.DataFrame,
    *,
    thresholds: str,
    group_key: str,
) -> dict[str, Any]:
    """Summarise QC for ``metrics/qc.json``.

    Parameters
    ----------
    table
        Output of :func:`qc_table`.
    groups
        Per-group output of :func:`immune_aging.analysis.doublets.detect_doublets`.
    limits
        Limits table of :func:`~immune_aging.analysis.qc_rules.threshold_rules`.
    thresholds
        ``"fixed"`` or ``"mad"`` (recorded).
    group_key
        The obs column of the groups (recorded).

    Returns
    -------
    dict
        Cells in, cells failing each rule (a cell may fail several), cells removed
        only by thresholds, doublets, groups not scored, cells kept and medians.

    Raises
    ------
    InputError
        If no cell passes QC, naming the threshold rule that alone removes the most.
    """
    if not table["keep"].any():
        fails = table[[f"fail_{r}" for r in THRESHOLD_RULES]].sum()
        raise InputError(
            f"no cell passes QC (rule {fails.idxmax().removeprefix('fail_')!r} alone removes "
            f"{int(fails.max())} of {len(table)}); check the qc.* limits"
        )
    fail_cols = [f"fail_{r}" for r in RULES]
    threshold_fail = table[[f"fail_{r}" for r in THRESHOLD_RULES]].any(axis=1)
    not_scored = groups.loc[~groups["scored"]]
    limits_out: dict[str, Any]
    if list(limits.index) == ["all"]:
        limits_out = {k: float(v) for k, v in limits.loc["all"].items()}
    else:
        limits_out = {f"median_{k}": float(v) for k, v in limits.median().items()}
    return {
        "cells_in": len(table),
        "limits": limits_out,
        "cells_failing": {c.removeprefix("fail_"): int(table[c].sum()) for c in fail_cols},
        "cells_failing_thresholds": int(threshold_fail.sum()),
        "doublets_found": int(table["predicted_doublet"].sum()),
        "doublet_rate_scored": float(table["predicted_doublet"].sum())
        / max(1, int(table["doublet_score"].notna().sum())),
        "groups": len(groups),
        "groups_scored": int(groups["scored"].sum()),
        "groups_not_scored": len(not_scored),
        "cells_in_groups_not_scored": int(not_scored["n_cells"].sum()),
        "groups_without_threshold": int(
            (groups["scored"] & ~np.isfinite(groups["threshold"].to_numpy(dtype=float))).sum()
        ),
        "cells_kept": int(table["keep"].sum()),
        "fraction_kept": float(table["keep"].mean()) if len(table) else 0.0,
        "median_n_genes": float(table["n_genes_by_counts"].median()),
        "median_total_counts": float(table["total_counts"].median()),
        "median_pct_mt": float(table["pct_counts_mt"].median()),
        "thresholds": thresholds,
        "group_key": group_key,
    }


def qc_cells(
    adata: ad.AnnData,
    *,
    group_key: str,
    rules: qc_rules.Rules,
    expected_doublet_rate: float,
    min_cells_scrublet: int,
    seed: int,
    n_jobs: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Run QC on cells whose counts are all in memory: metrics, rules, doublets.

    Parameters
    ----------
    adata
        Raw counts in ``X``, obs ``group_key``, var ``feature_name`` (not modified).
    group_key
        obs column of the Scrublet and MAD groups (donor or pool).
    rules
        The threshold rules' settings (:func:`~immune_aging.analysis.qc_rules.threshold_rules`).
    expected_doublet_rate, min_cells_scrublet, seed, n_jobs
        See :func:`immune_aging.analysis.doublets.detect_doublets` (``min_cells``).

    Returns
    -------
    tuple of pandas.DataFrame
        ``(table, fails, limits, groups)``: the :func:`qc_table` (one row per cell,
        in order), the threshold rule columns, the limits of
        :func:`~immune_aging.analysis.qc_rules.threshold_rules` and the per-group
        Scrublet summary (groups sorted).
    """
    from immune_aging.analysis import doublets

    groups = adata.obs[group_key]
    metrics = qc_metrics(adata)
    fails, limits = qc_rules.threshold_rules(metrics, groups=groups, rules=rules)
    cells, scrublet_groups = doublets.detect_doublets(
        adata,
        groups=groups,
        eligible=~fails.any(axis=1).to_numpy(),
        expected_doublet_rate=expected_doublet_rate,
        min_cells=min_cells_scrublet,
        seed=seed,
        n_jobs=n_jobs,
    )
    return qc_table(metrics, fails, cells), fails, limits, scrublet_groups


def qc_batch(
    positions: np.ndarray,
    counts: Any,
    obs: pd.DataFrame,
    *,
    var: pd.DataFrame,
    group_key: str,
    **kwargs: Any,
) -> tuple[np.ndarray, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    """Run :func:`qc_cells` on one batch of whole groups.

    The function of one batch of :func:`immune_aging.batches.map_batches` (with the
    settings bound by :func:`functools.partial`): it runs in the stage's process or
    in a Dask job, and its results are folded by :func:`combine_batches`.

    Parameters
    ----------
    positions
        Ascending positions of the batch's cells among all cells.
    counts
        Their raw counts (cells x ``var``).
    obs
        Their annotations (index: cell IDs), with ``group_key``.
    var
        Genes of the counts, with ``feature_name``.
    group_key
        obs column of the groups.
    **kwargs
        The other arguments of :func:`qc_cells`.

    Returns
    -------
    tuple
        ``(positions, result)``: the positions, and :func:`qc_cells` of the batch.
    """
    adata = ad.AnnData(X=counts, obs=obs, var=var)
    return np.asarray(positions), qc_cells(adata, group_key=group_key, **kwargs)


def combine_batches(
    results: Iterable[tuple[np.ndarray, tuple[pd.DataFrame, ...]]], *, labels: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Fold the :func:`qc_batch` results of batches of whole groups, in batch order.

    Metrics and threshold rules are per cell and per group, and Scrublet runs per
    group, so the result is the same as :func:`qc_cells` on all cells at once.
    Only the per-cell tables of the batches are held, never their counts.

    Parameters
    ----------
    results
        :func:`qc_batch` of each batch. Every group's cells are in one batch;
        every cell is in exactly one.
    labels
        Group of every cell (compared as strings).

    Returns
    -------
    tuple of pandas.DataFrame
        As :func:`qc_cells`: cells in the order of ``labels``, groups and limits
        sorted by group.

    Raises
    ------
    ValueError
        If the batches split a group or do not cover every cell exactly once.
    """
    labels = pd.Series(np.asarray(labels)).astype(str).to_numpy()
    parts: list[tuple[pd.DataFrame, ...]] = []
    where: list[np.ndarray] = []
    for positions, part in results:
        parts.append(part)
        where.append(positions)
    order = np.concatenate(where) if where else np.zeros(0, dtype=np.int64)
    if len(order) != len(labels) or not np.array_equal(np.sort(order), np.arange(len(labels))):
        raise ValueError(f"the batches hold {len(order)} cells, not each of {len(labels)} once")
    seen = [set(labels[p]) for p in where]
    if sum(len(s) for s in seen) != len(set().union(*seen)):
        raise ValueError("a group is split between batches")
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))
    table = pd.concat([p[0] for p in parts]).iloc[inverse]
    fails = pd.concat([p[1] for p in parts]).iloc[inverse]
    if list(parts[0][2].index) == ["all"]:  # fixed limits: the same in every batch
        limits = parts[0][2]
    else:
        limits = pd.concat([p[2] for p in parts])
        limits = limits.iloc[np.argsort(limits.index.to_numpy().astype(str), kind="stable")]
    groups = pd.concat([p[3] for p in parts], ignore_index=True)
    groups = groups.iloc[np.argsort(groups["group"].to_numpy().astype(str), kind="stable")]
    return table, fails, limits, groups.reset_index(drop=True)


def qc_batches(
    batches: Iterable[tuple[np.ndarray, Any]],
    *,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    group_key: str,
    **kwargs: Any,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Run :func:`qc_batch` on each batch in turn and fold them (:func:`combine_batches`).

    Parameters
    ----------
    batches
        ``(positions, counts)`` per batch: ascending positions of its cells in
        ``obs`` and their raw counts (cells x ``var``). Every group's cells are in
        one batch; every cell is in exactly one.
    obs
        Annotations of all cells (index: cell IDs), with ``group_key``.
    var
        Genes of the counts, with ``feature_name``.
    group_key
        obs column of the groups.
    **kwargs
        The other arguments of :func:`qc_cells`.

    Returns
    -------
    tuple of pandas.DataFrame
        As :func:`combine_batches`.
    """
    results = (
        qc_batch(p, c, obs.iloc[np.asarray(p)], var=var, group_key=group_key, **kwargs)
        for p, c in batches
    )
    return combine_batches(results, labels=obs[group_key].to_numpy())
