"""PCA of a sparse cells x genes matrix through its gene x gene covariance.

The PCA genes are few (a few thousand HVGs) while the cells are many (OneK1K:
1.25 M), so the covariance matrix of the genes is small and dense. It is summed
from the sparse rows in one pass over the data, split over numba threads by
**fixed blocks of genes** (each block owns its rows of the matrix and adds the
cells in their order), so every sum is done in the same order whatever the
thread count and the result is the same bytes at 1 or 16 threads. A dense
symmetric eigendecomposition of the small matrix (LAPACK, one BLAS thread) then
gives the components, and the cells' scores are one more parallel pass (each
cell's row computed by one thread). The cost is the sum over cells of
``nnz(cell)**2 / 2`` multiply-adds plus one ``genes**3`` eigendecomposition that
does not grow with the cells; ARPACK instead runs hundreds of single-threaded
sparse products.

Signs follow scikit-learn >= 1.5 (and so scanpy's ARPACK path): each component's
largest loading, in absolute value, is positive.
"""

from __future__ import annotations

import logging

import numba
import numpy as np
from scipy import linalg, sparse

log = logging.getLogger(__name__)

#: Blocks of genes the covariance is split into (fixed: never the thread count).
GENE_BLOCKS = 64


@numba.njit(cache=True)
def _gene_work(indptr, indices, n_genes):  # pragma: no cover - compiled
    """Multiply-adds that each gene's rows of the (upper) Gram matrix cost."""
    work = np.zeros(n_genes)
    for c in range(indptr.shape[0] - 1):
        end = indptr[c + 1]
        for p in range(indptr[c], end):
            work[indices[p]] += end - p
    return work


@numba.njit(parallel=True, cache=True)
def _gram_upper(indptr, indices, data, bounds, n_genes):  # pragma: no cover - compiled
    """Upper triangle of ``X.T @ X`` and the column sums, float64, by gene blocks."""
    gram = np.zeros((n_genes, n_genes))
    sums = np.zeros(n_genes)
    n_cells = indptr.shape[0] - 1
    for b in numba.prange(bounds.shape[0] - 1):
        lo = bounds[b]
        hi = bounds[b + 1]
        for c in range(n_cells):
            start = indptr[c]
            end = indptr[c + 1]
            p = start + np.searchsorted(indices[start:end], lo)
            while p < end and indices[p] < hi:
                i = indices[p]
                xi = np.float64(data[p])
                sums[i] += xi
                row = gram[i]
                for q in range(p, end):
                    row[indices[q]] += xi * data[q]
                p += 1
    return gram, sums


@numba.njit(parallel=True, cache=True)
def _project(indptr, indices, data, loadings, offset):  # pragma: no cover - compiled
    """``X @ loadings - offset`` row by row (each row summed by one thread, in order)."""
    n_cells = indptr.shape[0] - 1
    k = loadings.shape[1]
    out = np.empty((n_cells, k))
    for c in numba.prange(n_cells):
        for j in range(k):
            out[c, j] = -offset[j]
        for p in range(indptr[c], indptr[c + 1]):
            x = np.float64(data[p])
            g = indices[p]
            for j in range(k):
                out[c, j] += x * loadings[g, j]
    return out


def gene_blocks(work: np.ndarray, n_blocks: int = GENE_BLOCKS) -> np.ndarray:
    """Cut the genes into contiguous blocks of about equal work.

    Parameters
    ----------
    work
        Cost of each gene (non-negative).
    n_blocks
        Blocks wanted (fewer when there are fewer genes or the work is lumpy).

    Returns
    -------
    numpy.ndarray
        int64 block bounds, starting at 0 and ending at ``len(work)``, increasing.
    """
    n = len(work)
    cum = np.cumsum(np.asarray(work, dtype=np.float64))
    total = cum[-1] if n else 0.0
    if total <= 0:
        cuts = np.linspace(0, n, min(n_blocks, max(n, 1)) + 1).round()
    else:
        # a block closes at the gene where the running work reaches its share
        cuts = np.searchsorted(cum, total * np.arange(1, n_blocks) / n_blocks) + 1
    return np.unique(np.concatenate([[0], cuts, [n]]).astype(np.int64))


def covariance_pca(data: sparse.csr_matrix, *, n_comps: int) -> dict[str, np.ndarray]:
    """Principal components (centred, not scaled) from the gene covariance matrix.

    Parameters
    ----------
    data
        Cells x genes (not modified); any float dtype.
    n_comps
        Components to return (at most the number of genes).

    Returns
    -------
    dict
        ``X_pca`` (cells x comps), ``PCs`` (genes x comps), ``variance`` (of each
        component, ``ddof=1``) and ``variance_ratio`` (over the total variance of
        the genes), all float32 like scanpy's.
    """
    x = sparse.csr_matrix(data)
    if not x.has_sorted_indices:
        x = x.sorted_indices()
    n_cells, n_genes = x.shape
    indptr = x.indptr.astype(np.int64, copy=False)
    indices = x.indices
    bounds = gene_blocks(_gene_work(indptr, indices, n_genes))
    upper, sums = _gram_upper(indptr, indices, x.data, bounds, n_genes)
    gram = np.triu(upper) + np.triu(upper, 1).T
    del upper
    mean = sums / n_cells
    cov = (gram - n_cells * np.outer(mean, mean)) / (n_cells - 1)
    del gram
    total = float(np.trace(cov))
    values, vectors = linalg.eigh(cov, subset_by_index=[n_genes - n_comps, n_genes - 1])
    values = values[::-1]
    vectors = np.ascontiguousarray(vectors[:, ::-1])
    top = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[top, np.arange(n_comps)])
    signs[signs == 0] = 1.0
    vectors *= signs
    scores = _project(indptr, indices, x.data, vectors, mean @ vectors)
    values = np.clip(values, 0.0, None)
    log.info(
        "PCA by covariance: %d cells, %d genes, %d gene blocks; first %d components "
        "explain %.1f %%",
        n_cells,
        n_genes,
        len(bounds) - 1,
        n_comps,
        100 * values.sum() / total if total > 0 else 0.0,
    )
    return {
        "X_pca": scores.astype(np.float32),
        "PCs": vectors.astype(np.float32),
        "variance": values.astype(np.float32),
        "variance_ratio": (values / total if total > 0 else np.zeros_like(values)).astype(
            np.float32
        ),
    }
