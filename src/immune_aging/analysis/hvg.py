"""Highly variable genes with Seurat v3's method, donor by donor (stage ``preprocess``).

Seurat v3's method (``flavor="seurat_v3"``) on the raw counts, per donor
(``batch_key``), exactly as :func:`scanpy.pp.highly_variable_genes` combines
batches: rank genes by normalised variance in each donor, keep the
``n_top_genes`` with the best median rank, ties broken by the number of donors
where the gene is variable. Each donor is fitted on its own so that a donor whose
loess fit is impossible is left out of the ranking (and reported) instead of
failing the whole run: donors with fewer than 2 cells or fewer than
:data:`MIN_VARIABLE_GENES` genes of non-zero variance are skipped before fitting
(the loess library aborts the process on such input), and donors whose fit fails
are skipped after.
"""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from immune_aging.errors import InputError

log = logging.getLogger(__name__)

#: donors with fewer genes of non-zero variance are not fitted (the loess needs points)
MIN_VARIABLE_GENES = 10


def _batch_rows(labels: np.ndarray) -> dict[str, np.ndarray]:
    order = np.argsort(labels, kind="stable")
    values, starts = np.unique(labels[order], return_index=True)
    bounds = [*starts[1:], len(labels)]
    return {str(v): order[a:b] for v, a, b in zip(values, starts, bounds, strict=True)}


def _variable_genes(counts: sparse.csr_matrix) -> int:
    """Count genes with non-zero variance (at least two distinct values) in ``counts``."""
    if counts.shape[0] < 2:
        return 0
    present = np.bincount(counts.indices, minlength=counts.shape[1])
    squares = np.bincount(counts.indices, weights=counts.data**2, minlength=counts.shape[1])
    sums = np.bincount(counts.indices, weights=counts.data, minlength=counts.shape[1])
    n = counts.shape[0]
    var = squares / n - (sums / n) ** 2
    return int(((present > 0) & (var > 1e-12)).sum())


def _column_mean_var(X: sparse.csr_matrix, block: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased variance of each column, summed block by block (no copy of X)."""
    sums = np.zeros(X.shape[1], dtype=np.float64)
    squares = np.zeros(X.shape[1], dtype=np.float64)
    for lo in range(0, X.nnz, block):
        idx, val = X.indices[lo : lo + block], X.data[lo : lo + block].astype(np.float64)
        sums += np.bincount(idx, weights=val, minlength=X.shape[1])
        squares += np.bincount(idx, weights=val * val, minlength=X.shape[1])
    n = X.shape[0]
    means = sums / max(n, 1)
    variances = (squares / max(n, 1) - means**2) * (n / (n - 1) if n > 1 else 1.0)
    return means, variances


def highly_variable_genes(
    adata: ad.AnnData,
    *,
    n_top_genes: int,
    span: float,
    batch_key: str = "donor_id",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Select highly variable genes with Seurat v3's method, batch by batch.

    Parameters
    ----------
    adata
        Raw counts in ``X`` (not modified).
    n_top_genes
        Genes to select.
    span
        Loess span of the mean-variance fit.
    batch_key
        obs column of the batches (donors).

    Returns
    -------
    tuple
        ``(table, info)``. ``table`` has one row per gene (index ``var_names``):
        ``means``, ``variances`` (all cells), ``variances_norm`` (mean over fitted
        batches), ``highly_variable_rank`` (median rank among batches where the
        gene is in the top ``n_top_genes``; NaN elsewhere),
        ``highly_variable_nbatches`` and ``highly_variable``. ``info`` lists the
        batches used and skipped (with the reason).

    Raises
    ------
    InputError
        If ``batch_key`` is missing or no batch can be fitted.
    """
    import scanpy as sc

    if batch_key not in adata.obs.columns:
        raise InputError(f"obs column {batch_key!r} missing")
    X = sparse.csr_matrix(adata.X)
    labels = adata.obs[batch_key].astype(str).to_numpy()
    norm_vars, used, skipped = [], [], {}
    for batch, rows in _batch_rows(labels).items():
        sub = X[rows]
        if _variable_genes(sub) < MIN_VARIABLE_GENES:
            skipped[batch] = f"{len(rows)} cells, too few variable genes for the loess fit"
            continue
        try:
            df = sc.pp.highly_variable_genes(
                ad.AnnData(X=sub, var=pd.DataFrame(index=adata.var_names)),
                flavor="seurat_v3",
                n_top_genes=n_top_genes,
                span=span,
                check_values=False,
                inplace=False,
            )
        except ValueError as exc:  # skmisc reports a failed loess fit as ValueError
            skipped[batch] = f"{len(rows)} cells, loess fit failed ({exc})"
            continue
        norm_vars.append(df["variances_norm"].to_numpy(dtype=np.float64))
        used.append(batch)
    for batch, reason in skipped.items():
        log.warning("HVG: batch %s skipped: %s", batch, reason)
    if not used:
        raise InputError(
            f"obs column {batch_key!r}: no batch allows the seurat_v3 loess fit "
            f"({len(skipped)} batches skipped)"
        )
    norm = np.vstack(norm_vars)
    # ranks per batch, then scanpy's combination (SelectIntegrationFeatures in Seurat)
    # a stable sort ranks tied genes by position: numpy's default sort breaks ties
    # differently in its AVX-512, AVX2 and baseline code
    ranked = np.argsort(np.argsort(-norm, axis=1, kind="stable"), axis=1, kind="stable")
    ranked = ranked.astype(np.float32)
    nbatches = (ranked < n_top_genes).sum(axis=0)
    ranked[ranked >= n_top_genes] = np.nan
    median_rank = np.ma.median(np.ma.masked_invalid(ranked), axis=0).filled(np.nan)
    means, variances = _column_mean_var(X)
    table = pd.DataFrame(
        {
            "means": means,
            "variances": variances,
            "variances_norm": norm.mean(axis=0),
            "highly_variable_rank": median_rank,
            "highly_variable_nbatches": nbatches.astype(np.int64),
        },
        index=adata.var_names.copy(),
    )
    order = (
        table[["highly_variable_rank", "highly_variable_nbatches"]]
        .sort_values(
            ["highly_variable_rank", "highly_variable_nbatches"],
            ascending=[True, False],
            na_position="last",
        )
        .index
    )
    table["highly_variable"] = table.index.isin(order[: int(n_top_genes)])
    info = {"batches_used": len(used), "batches_skipped": skipped}
    log.info(
        "%d HVGs from %d batches (%d skipped)",
        table["highly_variable"].sum(),
        len(used),
        len(skipped),
    )
    return table, info
