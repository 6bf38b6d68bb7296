"""Scrublet doublet scores for one group of droplets (stage ``qc``).

Scrublet (Wolock, Lopez & Klein, Cell Systems 2019) as :func:`scanpy.pp.scrublet`
computes it, step for step, with the same defaults:

1. genes detected in fewer than 3 droplets are dropped, then droplets with fewer
   than 3 detected genes (they get no score);
2. highly variable genes: Seurat's dispersion method (scanpy's default flavor
   ``"seurat"``: mean > 0.0125, mean < 3, normalised dispersion > 0.5 in 20 mean
   bins) on counts normalised to the median total;
3. ``sim_doublet_ratio * n`` doublets are simulated by adding the raw counts (of the
   variable genes) of two droplets, the pairs drawn without repetition from the
   ``n x n`` grid with the seed (the same pairs as scanpy);
4. observed and simulated droplets are normalised to 10^6 counts over the variable
   genes and z-scored with the observed droplets' gene means and standard
   deviations (``ddof=1``);
5. principal components (30) are fitted on the observed droplets; both are projected;
6. each droplet's neighbours among all observed and simulated droplets (exact
   Euclidean distances) give its doublet score, ``k = round(0.5 * sqrt(n))``
   neighbours scaled by ``1 + n_sim / n``, with the expected doublet rate
   correction of the paper.

Three things make it fast; none changes the result beyond floating-point rounding.
(i) The principal components come from the top eigenvectors of ``Z Z^T`` (droplets x
droplets; ``Z^T Z`` when there are more droplets than variable genes), one matrix
product and then Lanczos (ARPACK) on a small dense matrix: the exact components that
scanpy obtains by ARPACK on ``Z``, not an approximation. (ii) A simulated doublet is
never built: normalisation to 10^6 counts, the z-score and the projection are
affine, so its coordinates are the average of its two parents' coordinates weighted
by their counts over the variable genes. (iii) Neighbours are counted, not listed:
distances are computed in blocks and only the number of simulated droplets among
each droplet's nearest is kept.

A droplet is not its own neighbour: each droplet, observed or simulated, counts
the simulated droplets among its ``k_adj - 1`` nearest others (the original Scrublet
counts ``k_adj`` others). scanpy (1.11) counts ``k_adj`` columns of its neighbour
table, and whether the droplet itself is one of them depends on floating-point
ties: its table lists the droplet itself first and then ``k_adj - 1`` others, but
when some droplet's exact duplicate (simulated pairs ``(i, j)``, ``(j, i)`` and
``(i, i)`` coincide) sorts before it, the self column is dropped for the whole
group. Observed scores are the same either way (a droplet is not simulated); the
simulated scores, which set the call threshold, are one step higher in the groups
where scanpy keeps the self column. Here every group is scored the same way, as
scanpy scores most groups (38 of 39 donors at OneK1K's shape, 35 of 46 on the
default data have scanpy's threshold; ``bench/results/scrublet.md``). Equal
distances at the last neighbour, which only coinciding droplets produce, are
resolved by numpy's selection, the same way on every run.

Runs on one BLAS/OpenMP thread whatever the caller's settings, so the result does
not depend on the number of threads or of groups scored in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.linalg import ArpackError, eigsh
from sklearn.utils.random import sample_without_replacement
from threadpoolctl import threadpool_limits

#: genes detected in fewer droplets are dropped; droplets with fewer genes too (scanpy)
MIN_CELLS_PER_GENE = 3
MIN_GENES_PER_CELL = 3
#: Seurat dispersion cut-offs (scanpy's defaults for ``flavor="seurat"``)
HVG_MIN_MEAN, HVG_MAX_MEAN, HVG_MIN_DISP, HVG_N_BINS = 0.0125, 3.0, 0.5, 20
#: observed and simulated droplets are normalised to this many counts
TARGET_SUM = 1e6
#: distances are computed for at most this many pairs at a time (bounds memory)
BLOCK_PAIRS = 1 << 18


@dataclass(frozen=True)
class ScrubletResult:
    """Doublet scores of one group.

    Attributes
    ----------
    obs
        Score per input droplet; NaN for droplets with fewer than 3 detected genes.
    sim
        Score per simulated doublet (for the call threshold).
    n_genes
        Highly variable genes used.
    n_neighbors
        Neighbours per droplet (``k`` scaled by ``1 + n_sim / n``).
    """

    obs: np.ndarray
    sim: np.ndarray
    n_genes: int
    n_neighbors: int


def scrublet(
    counts: sparse.spmatrix | np.ndarray,
    *,
    expected_doublet_rate: float,
    seed: int,
    sim_doublet_ratio: float = 2.0,
    n_comps: int = 30,
) -> ScrubletResult:
    """Score the droplets of one group with Scrublet.

    Parameters
    ----------
    counts
        Raw counts, droplets x genes (not modified).
    expected_doublet_rate
        Prior doublet rate of the score's correction.
    seed
        Seed of the doublet simulation (and of the Lanczos start vector).
    sim_doublet_ratio
        Simulated doublets per observed droplet.
    n_comps
        Principal components.

    Returns
    -------
    ScrubletResult
        Observed and simulated doublet scores (Scrublet's standard errors, which need
        its ``stdev_doublet_rate``, are not computed).

    Raises
    ------
    ValueError
        When there are not more than ``n_comps`` variable genes and droplets (PCA
        impossible, as in :func:`scanpy.pp.scrublet`), or the eigensolver does not
        converge.
    """
    with threadpool_limits(limits=1):
        return _scrublet(
            sparse.csr_matrix(counts), expected_doublet_rate, seed, sim_doublet_ratio, n_comps
        )


def _scrublet(
    X: sparse.csr_matrix,
    expected_doublet_rate: float,
    seed: int,
    sim_doublet_ratio: float,
    n_comps: int,
) -> ScrubletResult:
    n_input = X.shape[0]
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    cells, keep_gene = _filter(X)
    if len(cells) < n_input:
        X = X[cells]
    hvg = _variable_genes(X, keep_gene)
    n_obs, n_genes = X.shape[0], len(hvg)
    if min(n_obs, n_genes) <= n_comps:
        raise ValueError(
            f"{n_genes} variable genes and {n_obs} droplets: PCA needs more than {n_comps} of each"
        )
    R = sparse.csr_matrix(X[:, hvg], dtype=np.float64)
    totals = np.asarray(R.sum(axis=1)).ravel()
    pcs = _principal_components(R, totals, n_comps, seed)

    n_sim = int(n_obs * sim_doublet_ratio)
    pairs = _doublet_pairs(n_obs, n_sim, seed)
    weight = _parent_weights(totals[pairs[:, 0]], totals[pairs[:, 1]])
    sim = weight[:, None] * pcs[pairs[:, 0]] + (1 - weight)[:, None] * pcs[pairs[:, 1]]

    k = round(0.5 * np.sqrt(n_obs))
    k_adj = round(k * (1 + n_sim / float(n_obs)))
    n_sim_neighbors = _count_neighbors(np.vstack([pcs, sim]), n_obs, k_adj - 1)
    scores = _doublet_scores(n_sim_neighbors, k_adj, n_sim / float(n_obs), expected_doublet_rate)
    obs = np.full(n_input, np.nan)
    obs[cells] = scores[:n_obs]
    return ScrubletResult(obs=obs, sim=scores[n_obs:], n_genes=n_genes, n_neighbors=k_adj)


def _filter(X: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Droplets kept (indices) and genes kept (mask), as scanpy's filters in that order.

    Genes detected (count > 0) in at least 3 droplets; then droplets with at least
    3 detected genes among those.
    """
    detected = X.data > 0
    per_gene = np.bincount(X.indices[detected], minlength=X.shape[1])
    keep_gene = per_gene >= MIN_CELLS_PER_GENE
    counted = np.concatenate([[0], np.cumsum(detected & keep_gene[X.indices], dtype=np.int64)])
    per_cell = counted[X.indptr[1:]] - counted[X.indptr[:-1]]
    return np.flatnonzero(per_cell >= MIN_GENES_PER_CELL), keep_gene


def _variable_genes(X: sparse.csr_matrix, keep_gene: np.ndarray) -> np.ndarray:
    """Genes (columns of ``X`` among ``keep_gene``) highly variable by Seurat's method.

    As scanpy's ``highly_variable_genes(flavor="seurat")`` after ``normalize_total``
    on the kept genes: counts are normalised to the median total; each gene's log
    dispersion is z-scored within 20 equal-width bins of log1p mean (a single-gene
    bin gives normalised dispersion 1). Means and variances (ddof=1) are computed in
    float64 from sums of the scaled counts and their squares.
    """
    n = X.shape[0]
    totals = X @ keep_gene.astype(np.float64)
    scale = np.divide(np.median(totals), totals, out=np.ones_like(totals), where=totals > 0)
    squares = sparse.csr_matrix((X.data.astype(np.float64) ** 2, X.indices, X.indptr), X.shape)
    genes = np.flatnonzero(keep_gene)
    mean = (X.T @ scale)[genes] / n
    var = ((squares.T @ (scale * scale))[genes] / n - mean**2) * (n / (n - 1))
    mean[mean == 0] = 1e-12
    dispersion = var / mean
    dispersion[dispersion <= 0] = np.nan
    frame = pd.DataFrame({"mean": np.log1p(mean), "dispersion": np.log(dispersion)})
    frame["bin"] = pd.cut(frame["mean"], bins=HVG_N_BINS)
    stats = frame.groupby("bin", observed=True)["dispersion"].agg(avg="mean", dev="std")
    single = stats["dev"].isna()
    stats.loc[single, "dev"] = stats.loc[single, "avg"]
    stats.loc[single, "avg"] = 0.0
    per_gene = stats.loc[frame["bin"]]
    norm = (frame["dispersion"].to_numpy() - per_gene["avg"].to_numpy()) / per_gene[
        "dev"
    ].to_numpy()
    norm = np.nan_to_num(norm)
    log_mean = frame["mean"].to_numpy()
    keep = (log_mean > HVG_MIN_MEAN) & (log_mean < HVG_MAX_MEAN) & (norm > HVG_MIN_DISP)
    return genes[keep & (norm < np.inf)]


def _column_mean_var(
    data: np.ndarray, indices: np.ndarray, n_rows: int, n_cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased variance of each column of a sparse matrix (two passes)."""
    mean = np.bincount(indices, weights=data, minlength=n_cols) / n_rows
    deviation = data - mean[indices]
    stored = np.bincount(indices, minlength=n_cols)
    squares = np.bincount(indices, weights=deviation * deviation, minlength=n_cols)
    squares += (n_rows - stored) * mean**2  # the zeros
    return mean, squares / (n_rows - 1)


def _principal_components(
    R: sparse.csr_matrix, totals: np.ndarray, n_comps: int, seed: int
) -> np.ndarray:
    """Coordinates of the observed droplets on the first ``n_comps`` principal components.

    ``R``: raw counts of the variable genes. Rows are normalised to 10^6, columns
    z-scored (ddof=1). The components are the top eigenvectors of ``Z Z^T`` (droplets
    x droplets) or of ``Z^T Z`` (genes x genes), whichever is smaller, found by
    Lanczos (ARPACK) from a seeded start; the product is formed in float32 (the
    z-scores need no more), the eigenproblem solved in float64. Returns the PCA
    scores ``Z V``, up to the sign of each component.
    """
    n_obs, n_genes = R.shape
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    data = R.data * np.repeat(scale, np.diff(R.indptr))
    mean, var = _column_mean_var(data, R.indices, n_obs, n_genes)
    sd = np.sqrt(var)
    if not (sd > 0).all():
        raise ValueError("a variable gene has zero variance")
    scaled = sparse.csr_matrix((data / sd[R.indices], R.indices, R.indptr), shape=R.shape)
    Z = scaled.astype(np.float32).toarray()
    Z -= (mean / sd).astype(np.float32)
    gram = n_obs <= n_genes
    product = (Z @ Z.T if gram else Z.T @ Z).astype(np.float64)
    start = np.random.RandomState(seed).uniform(-1, 1, product.shape[0])
    try:
        values, vectors = eigsh(product, k=n_comps, v0=start)
    except ArpackError as exc:
        raise ValueError(f"principal components: {exc}") from None
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0, None), vectors[:, order]
    if gram:
        return vectors * np.sqrt(values)
    return Z.astype(np.float64) @ vectors


def _doublet_pairs(n_obs: int, n_sim: int, seed: int) -> np.ndarray:
    """Parent pairs of the simulated doublets (as scanpy: distinct cells of the n x n grid)."""
    flat = sample_without_replacement(n_obs * n_obs, n_sim, random_state=seed)
    return np.vstack(np.unravel_index(flat, (n_obs, n_obs))).T


def _parent_weights(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Weight of the first parent in a doublet's normalised profile (its share of counts)."""
    both = first + second
    return np.divide(first, both, out=np.full(both.shape, 0.5), where=both > 0)


def _count_neighbors(points: np.ndarray, n_obs: int, k: int) -> np.ndarray:
    """Count simulated points (index >= ``n_obs``) among each point's ``k`` nearest others.

    Squared Euclidean distances in row blocks, less each row's own squared norm
    (constant within a row, so the ranking is unchanged).
    """
    n = points.shape[0]
    norms = np.einsum("ij,ij->i", points, points)
    block = max(16, BLOCK_PAIRS // n)
    counts = np.empty(n, dtype=np.int64)
    is_sim = np.arange(n) >= n_obs
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        dist = (-2 * points[lo:hi]) @ points.T
        dist += norms
        dist[np.arange(hi - lo), np.arange(lo, hi)] = np.inf  # not its own neighbour
        nearest = np.argpartition(dist, k - 1, axis=1)[:, :k]
        counts[lo:hi] = is_sim[nearest].sum(axis=1)
    return counts


def _doublet_scores(
    n_sim_neighbors: np.ndarray, k_adj: int, ratio: float, rate: float
) -> np.ndarray:
    """Scrublet's doublet likelihood from the simulated share of neighbours (Bayesian)."""
    q = (n_sim_neighbors + 1) / (k_adj + 2.0)
    return q * rate / ratio / (1 - rate - q * (1 - rate - rate / ratio))
