"""The per-batch steps of ``preprocess``: what one batch of whole donors contributes.

A batch's job reads its cells' counts (here, or on a Dask worker:
:func:`immune_aging.batches.map_batches`) and returns

1. :func:`summarise_batch`: its cells' totals, each donor's seurat_v3 fit and the
   batch's column moments (the first pass of :func:`immune_aging.analysis.preprocess.preprocess`);
2. :func:`normalise_batch`: its PCA genes' columns normalised to the cells' totals
   and log1p-transformed (:func:`scale_log1p`, element-wise, so the bits of one
   matrix normalised at once); :func:`stack_rows` puts the blocks back in cell order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from immune_aging.analysis import hvg as hvg_select

#: rows normalised at a time by :func:`scale_log1p` (no per-entry copy of the whole
#: matrix)
SCALE_ROWS = 1 << 16
#: ``fn(positions, counts, extra)``: the work on one batch of whole donors' counts.
BatchFn = Callable[[np.ndarray, sparse.csr_matrix, Any], Any]
#: ``each_batch(fn, extra)`` yields ``fn(positions, counts, extra(positions))`` for
#: each batch of whole donors, in batch order (:func:`immune_aging.batches.map_batches`).
EachBatch = Callable[[BatchFn, Callable[[np.ndarray], Any]], Iterable[Any]]


@dataclass
class BatchSummary:
    """What one batch of whole donors contributes to the first pass of :func:`preprocess`.

    Attributes
    ----------
    positions
        Ascending positions of the batch's cells among all cells.
    totals
        Each of those cells' total count over all genes.
    hvg
        The donors' HVG fits and the batch's column moments.
    """

    positions: np.ndarray
    totals: np.ndarray
    hvg: hvg_select.BatchFits = field(repr=False)


def summarise_batch(
    positions: np.ndarray,
    counts: sparse.csr_matrix,
    donors: np.ndarray,
    *,
    var_names: pd.Index,
    n_top_genes: int,
    span: float,
) -> BatchSummary:
    """First pass on one batch: the cells' totals, each donor's HVG fit, the column moments.

    A job of :func:`preprocess` (top level, so that a cluster's worker can run it
    on the batch it reads).

    Parameters
    ----------
    positions
        Ascending positions of the batch's cells among all cells.
    counts
        Their raw CSR counts over all genes (not modified).
    donors
        Donor of each of the batch's cells.
    var_names, n_top_genes, span
        See :func:`immune_aging.analysis.hvg.highly_variable_genes`.

    Returns
    -------
    BatchSummary
        What the batch contributes.
    """
    X = sparse.csr_matrix(counts)
    # per row, as log_normalise sums the whole matrix
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    fits = hvg_select.fit_batch(X, donors, var_names=var_names, n_top_genes=n_top_genes, span=span)
    return BatchSummary(np.asarray(positions), totals, fits)


def normalise_batch(
    positions: np.ndarray,
    counts: sparse.csr_matrix,
    totals: np.ndarray,
    *,
    columns: np.ndarray,
    target_sum: float,
) -> tuple[np.ndarray, sparse.csr_matrix]:
    """Second pass on one batch: its PCA genes' columns, normalised and log1p-transformed.

    Element-wise (:func:`scale_log1p`), so the values are the bits of the same
    cells normalised in one matrix.

    Parameters
    ----------
    positions
        Ascending positions of the batch's cells among all cells.
    counts
        Their raw CSR counts over all genes (not modified).
    totals
        Those cells' totals over all genes (from the first pass).
    columns
        Boolean mask of the PCA genes.
    target_sum
        Counts per cell after normalisation.

    Returns
    -------
    tuple
        ``(positions, block)``: the block is float32 CSR, the batch's cells x PCA genes.
    """
    sub = sparse.csr_matrix(counts)[:, np.asarray(columns, dtype=bool)]
    sub = sub.astype(np.float32) if sub.dtype != np.float32 else sub
    if np.shares_memory(sub.data, counts.data):  # never write into the input
        sub = sub.copy()
    return np.asarray(positions), scale_log1p(sub, totals, target_sum=target_sum)


def stack_rows(
    blocks: Iterable[tuple[np.ndarray, sparse.csr_matrix]], n_rows: int
) -> sparse.csr_matrix:
    """Put the rows of batches back in cell order, one CSR matrix.

    Each block is dropped as soon as its rows are copied; the result's arrays are
    filled in place, so the peak is at most twice the result.

    Parameters
    ----------
    blocks
        ``(positions, block)``: each block's rows are those cells; every cell in
        exactly one block, all blocks with the same columns.
    n_rows
        Number of cells.

    Returns
    -------
    scipy.sparse.csr_matrix
        The rows of all blocks, row ``i`` being cell ``i``; indices as the blocks'.

    Raises
    ------
    ValueError
        If the blocks do not cover every cell exactly once.
    """
    parts = list(blocks)
    row_nnz = np.zeros(n_rows, dtype=np.int64)
    seen = np.zeros(n_rows, dtype=bool)
    for positions, block in parts:
        if seen[positions].any():
            raise ValueError("a cell is in more than one block")
        seen[positions] = True
        row_nnz[positions] = np.diff(block.indptr)
    if not seen.all():
        raise ValueError(f"the blocks miss {int((~seen).sum())} of {n_rows} cells")
    n_cols = parts[0][1].shape[1] if parts else 0
    nnz = int(row_nnz.sum())
    wide = max(nnz, n_cols) >= np.iinfo(np.int32).max
    index_dtype = np.int64 if wide else np.int32
    indptr = np.zeros(n_rows + 1, dtype=index_dtype)
    np.cumsum(row_nnz, out=indptr[1:])
    data = np.empty(nnz, dtype=np.float32)
    indices = np.empty(nnz, dtype=index_dtype)
    while parts:
        positions, block = parts.pop(0)
        lengths = np.diff(block.indptr)
        # where each stored entry of the block goes: its row's start there + its offset
        to = np.repeat(indptr[positions].astype(np.int64) - block.indptr[:-1], lengths)
        to += np.arange(block.nnz, dtype=np.int64)
        data[to] = block.data
        indices[to] = block.indices
        del block, to
    return sparse.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols), copy=False)


def scale_log1p(
    data: sparse.csr_matrix, totals: np.ndarray, *, target_sum: float
) -> sparse.csr_matrix:
    """Scale each row to ``target_sum`` by its cell's total, then log1p, in place.

    Rows are scaled :data:`SCALE_ROWS` at a time (no per-entry copy of the whole
    matrix); each value is multiplied by the float32 factor of its row, so the
    result does not depend on how the rows are chunked.

    Parameters
    ----------
    data
        Counts of some genes, cells x genes (CSR; modified in place when float32).
    totals
        Each cell's total count over all genes (a cell with 0 gets 0s).
    target_sum
        Counts per cell after normalisation.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``data`` itself when it was float32 (else a float32 copy), normalised and
        log1p-transformed.
    """
    data = data.astype(np.float32) if data.dtype != np.float32 else data
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    scale = scale.astype(np.float32)
    for lo in range(0, data.shape[0], SCALE_ROWS):
        hi = min(lo + SCALE_ROWS, data.shape[0])
        a, b = int(data.indptr[lo]), int(data.indptr[hi])
        data.data[a:b] *= np.repeat(scale[lo:hi], np.diff(data.indptr[lo : hi + 1]))
    np.log1p(data.data, out=data.data)
    return data
