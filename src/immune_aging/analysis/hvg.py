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
from collections.abc import Iterable
from dataclasses import dataclass, field
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


class ColumnMoments:
    """Running column sums and sums of squares of count matrices, in float64.

    Counts are integers, so every partial sum is an exact float64 integer (below
    2**53) and the result does not depend on how the rows are split into blocks
    or batches, nor on their order: streaming gives the bits of one pass.

    Parameters
    ----------
    n_cols
        Columns (genes).
    """

    def __init__(self, n_cols: int) -> None:
        self.n_rows = 0
        self.sums = np.zeros(n_cols, dtype=np.float64)
        self.squares = np.zeros(n_cols, dtype=np.float64)

    def add(self, X: sparse.csr_matrix, block: int = 1 << 24) -> None:
        """Add the rows of a CSR matrix (no copy of it).

        Parameters
        ----------
        X
            Rows to add (same columns).
        block
            Stored entries summed at a time.
        """
        n_cols = len(self.sums)
        for lo in range(0, X.nnz, block):
            idx, val = X.indices[lo : lo + block], X.data[lo : lo + block].astype(np.float64)
            self.sums += np.bincount(idx, weights=val, minlength=n_cols)
            self.squares += np.bincount(idx, weights=val * val, minlength=n_cols)
        self.n_rows += X.shape[0]

    def merge(self, other: ColumnMoments) -> None:
        """Add another's rows (moments of other rows of the same columns).

        The partial sums are exact float64 integers, so merging partial moments
        gives the bits of adding all their rows to one.

        Parameters
        ----------
        other
            Moments of other rows.
        """
        self.sums += other.sums
        self.squares += other.squares
        self.n_rows += other.n_rows

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the mean and unbiased variance of each column.

        Returns
        -------
        tuple of numpy.ndarray
            ``(means, variances)``.
        """
        n = self.n_rows
        means = self.sums / max(n, 1)
        variances = (self.squares / max(n, 1) - means**2) * (n / (n - 1) if n > 1 else 1.0)
        return means, variances


def _fit_batch(
    sub: sparse.csr_matrix, var_names: pd.Index, *, n_top_genes: int, span: float
) -> np.ndarray | str:
    """Seurat v3's normalised variances of one batch (donor), or why it was skipped."""
    import scanpy as sc

    if _variable_genes(sub) < MIN_VARIABLE_GENES:
        return f"{sub.shape[0]} cells, too few variable genes for the loess fit"
    try:
        df = sc.pp.highly_variable_genes(
            ad.AnnData(X=sub, var=pd.DataFrame(index=var_names)),
            flavor="seurat_v3",
            n_top_genes=n_top_genes,
            span=span,
            check_values=False,
            inplace=False,
        )
    except ValueError as exc:  # skmisc reports a failed loess fit as ValueError
        return f"{sub.shape[0]} cells, loess fit failed ({exc})"
    return df["variances_norm"].to_numpy(dtype=np.float64)


def highly_variable_genes(
    adata: ad.AnnData,
    *,
    n_top_genes: int,
    span: float,
    batch_key: str = "donor_id",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Select highly variable genes with Seurat v3's method, batch by batch.

    The counts are all in memory: one batch of :func:`highly_variable_genes_streamed`.

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
    if batch_key not in adata.obs.columns:
        raise InputError(f"obs column {batch_key!r} missing")
    X = sparse.csr_matrix(adata.X)
    return highly_variable_genes_streamed(
        [(np.arange(X.shape[0]), X)],
        labels=adata.obs[batch_key].to_numpy(),
        var_names=adata.var_names,
        n_top_genes=n_top_genes,
        span=span,
        batch_key=batch_key,
    )


@dataclass
class BatchFits:
    """What one batch of whole donors contributes to the HVG selection.

    Attributes
    ----------
    fits
        Seurat v3's normalised variances of each donor of the batch, or why the
        donor was skipped.
    moments
        Column moments of the batch's counts.
    """

    fits: dict[str, np.ndarray | str]
    moments: ColumnMoments = field(repr=False)


def fit_batch(
    counts: sparse.csr_matrix,
    labels: np.ndarray,
    *,
    var_names: pd.Index,
    n_top_genes: int,
    span: float,
) -> BatchFits:
    """Fit each donor of one batch and sum the batch's column moments.

    Parameters
    ----------
    counts
        Raw counts of the batch's cells (cells x ``var_names``; not modified).
    labels
        Donor of each of the batch's cells.
    var_names, n_top_genes, span
        See :func:`highly_variable_genes`.

    Returns
    -------
    BatchFits
        The donors' fits and the batch's moments, for :func:`combine_batches`.
    """
    X = sparse.csr_matrix(counts)
    labels = pd.Series(np.asarray(labels)).astype(str).to_numpy()
    fits = {
        batch: _fit_batch(X[rows], var_names, n_top_genes=n_top_genes, span=span)
        for batch, rows in _batch_rows(labels).items()
    }
    moments = ColumnMoments(len(var_names))
    moments.add(X)
    return BatchFits(fits, moments)


def combine_batches(
    parts: Iterable[tuple[np.ndarray, BatchFits]],
    *,
    labels: np.ndarray,
    var_names: pd.Index,
    n_top_genes: int,
    batch_key: str = "donor_id",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Fold the batches' :func:`fit_batch` results into the HVG table, in batch order.

    Parameters
    ----------
    parts
        ``(positions, fits)``: ascending positions of a batch's cells among all
        cells and what :func:`fit_batch` made of them. A donor's cells are all in
        one batch; every cell is in exactly one.
    labels
        Donor (``batch_key``) of every cell.
    var_names, n_top_genes, batch_key
        See :func:`highly_variable_genes`.

    Returns
    -------
    tuple
        ``(table, info)`` as :func:`highly_variable_genes`.

    Raises
    ------
    InputError
        If no donor can be fitted.
    ValueError
        If the batches split a donor or do not cover every cell exactly once.
    """
    labels = pd.Series(np.asarray(labels)).astype(str).to_numpy()
    moments = ColumnMoments(len(var_names))
    fits: dict[str, np.ndarray | str] = {}
    seen = np.zeros(len(labels), dtype=bool)
    for positions, part in parts:
        positions = np.asarray(positions)
        if seen[positions].any():
            raise ValueError("a cell is in more than one batch")
        seen[positions] = True
        for batch, fit in part.fits.items():
            if batch in fits:
                raise ValueError(f"{batch_key} {batch!r} is split between batches")
            fits[batch] = fit
        moments.merge(part.moments)
    if not seen.all():
        raise ValueError(f"the batches miss {int((~seen).sum())} of {len(labels)} cells")
    fits = {batch: fits[batch] for batch in sorted(fits)}  # the order of np.unique
    return _combine(fits, *moments.mean_var(), var_names, n_top_genes, batch_key)


def highly_variable_genes_streamed(
    batches: Iterable[tuple[np.ndarray, sparse.csr_matrix]],
    *,
    labels: np.ndarray,
    var_names: pd.Index,
    n_top_genes: int,
    span: float,
    batch_key: str = "donor_id",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """:func:`highly_variable_genes` from counts streamed a few whole donors at a time.

    Each batch is fitted on its own (:func:`fit_batch`) and the results folded in
    batch order (:func:`combine_batches`), as a cluster's workers do it; each donor
    is fitted on its own and the column moments add up exactly
    (:class:`ColumnMoments`), so the result is the same bits for any split into
    batches, one batch of all cells included.

    Parameters
    ----------
    batches
        ``(positions, counts)``: ascending positions of a batch's cells among all
        cells and their raw CSR counts (cells x ``var_names``). A donor's cells
        are all in one batch; every cell is in exactly one.
    labels
        Donor (``batch_key``) of every cell.
    var_names
        The genes.
    n_top_genes, span, batch_key
        See :func:`highly_variable_genes`.

    Returns
    -------
    tuple
        ``(table, info)`` as :func:`highly_variable_genes`.

    Raises
    ------
    InputError
        If no donor can be fitted.
    ValueError
        If the batches split a donor or do not cover every cell exactly once.
    """
    labels = pd.Series(np.asarray(labels)).astype(str).to_numpy()
    parts = (
        (
            positions,
            fit_batch(
                counts,
                labels[np.asarray(positions)],
                var_names=var_names,
                n_top_genes=n_top_genes,
                span=span,
            ),
        )
        for positions, counts in batches
    )
    return combine_batches(
        parts, labels=labels, var_names=var_names, n_top_genes=n_top_genes, batch_key=batch_key
    )


def _combine(
    fits: dict[str, np.ndarray | str],
    means: np.ndarray,
    variances: np.ndarray,
    var_names: pd.Index,
    n_top_genes: int,
    batch_key: str,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Combine the per-batch fits (in sorted batch order) as scanpy does."""
    norm_vars = [v for v in fits.values() if not isinstance(v, str)]
    used = [b for b, v in fits.items() if not isinstance(v, str)]
    skipped = {b: v for b, v in fits.items() if isinstance(v, str)}
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
    table = pd.DataFrame(
        {
            "means": means,
            "variances": variances,
            "variances_norm": norm.mean(axis=0),
            "highly_variable_rank": median_rank,
            "highly_variable_nbatches": nbatches.astype(np.int64),
        },
        index=var_names.copy(),
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
