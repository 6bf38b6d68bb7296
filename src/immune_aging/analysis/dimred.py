"""Donor integration (Harmony), the neighbour graph and the UMAP embedding.

Harmony is called through :func:`harmonypy.run_harmony` directly (not scanpy's
wrapper, which broke when harmonypy 2 changed the orientation of its result) and
the corrected matrix is checked to be cells x components before use.

The neighbour graph and the UMAP layout are built by
:mod:`immune_aging.analysis.neighbors`.
"""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from immune_aging.analysis.neighbors import neighbors_umap
from immune_aging.errors import InputError

log = logging.getLogger(__name__)

#: Harmony's default convergence threshold on the relative change of its objective.
HARMONY_EPSILON = 1e-2
#: ``obs`` columns read and kept.
OBS_COLUMNS = ("donor_id", "cell_type")
#: Cells subsampled to measure donor mixing (exact kNN on this many cells).
MIXING_CELLS = 10_000


def check_pca(pca: np.ndarray, *, n_pcs: int, n_neighbors: int) -> None:
    """Check that a PCA embedding can feed the graph the parameters ask for.

    Parameters
    ----------
    pca
        ``obsm['X_pca']``.
    n_pcs, n_neighbors
        See ``params.yaml: dimred``.

    Raises
    ------
    InputError
        For a wrong shape, too few components or cells, or non-finite values.
    """
    if pca.ndim != 2:
        raise InputError("obsm 'X_pca' must be a cells x components matrix")
    if pca.shape[1] < n_pcs:
        raise InputError(
            f"obsm 'X_pca' has {pca.shape[1]} components; dimred.n_pcs asks for {n_pcs}"
        )
    if not np.isfinite(pca).all():
        raise InputError("obsm 'X_pca' holds NaN or infinite values")
    if pca.shape[0] <= n_neighbors:
        raise InputError(f"{pca.shape[0]} cells; dimred.n_neighbors = {n_neighbors} needs more")


def integrate_and_embed(
    adata: ad.AnnData,
    *,
    harmony_max_iter: int,
    n_neighbors: int,
    n_pcs: int,
    exact_knn_max_cells: int,
    umap_min_dist: float,
    seed: int,
    umap_max_cells: int = 0,
    n_threads: int = 1,
) -> tuple[ad.AnnData, dict[str, Any]]:
    """Harmony by donor, the kNN graph and UMAP on the corrected PCA; donor mixing.

    Parameters
    ----------
    adata
        Cells with ``obsm['X_pca']`` and ``obs`` :data:`OBS_COLUMNS`. Not modified.
    harmony_max_iter, n_neighbors, n_pcs, exact_knn_max_cells, umap_min_dist, seed
        See ``params.yaml: dimred``.
    umap_max_cells
        See ``params.yaml: dimred`` (0: every cell).
    n_threads
        Threads Harmony may use.

    Returns
    -------
    tuple
        The embedding AnnData of :func:`embedding_anndata` (with ``uns['harmony']``)
        and the stage's metrics.
    """
    corrected, harmony = harmony_integrate(
        adata, key="donor_id", max_iter=harmony_max_iter, seed=seed, n_threads=n_threads
    )
    work = ad.AnnData(obs=adata.obs[list(OBS_COLUMNS)].copy())
    work.obsm["X_pca_harmony"] = corrected
    work = neighbors_umap(
        work,
        use_rep="X_pca_harmony",
        n_neighbors=n_neighbors,
        n_pcs=n_pcs,
        min_dist=umap_min_dist,
        seed=seed,
        exact_max_cells=exact_knn_max_cells,
        umap_max_cells=umap_max_cells,
    )
    pca = np.asarray(adata.obsm["X_pca"])
    mixing = donor_mixing(
        {"pca": pca[:, :n_pcs], "harmony": corrected[:, :n_pcs]},
        adata.obs["donor_id"].astype(str).to_numpy(),
        n_neighbors=n_neighbors,
        max_cells=MIXING_CELLS,
        seed=seed,
    )
    emb = embedding_anndata(work, obs_columns=OBS_COLUMNS)
    emb.uns["harmony"] = {k: v for k, v in harmony.items() if k != "objective"}
    emb.uns["harmony"]["objective"] = np.asarray(harmony["objective"], dtype=np.float64)
    metrics = {
        "cells": int(emb.n_obs),
        "donors": int(emb.obs["donor_id"].nunique()),
        "n_pcs_available": int(pca.shape[1]),
        "n_pcs": int(n_pcs),
        "n_neighbors": int(n_neighbors),
        "knn": str(work.uns["neighbors"]["params"]["knn"]),
        "umap_cells": int(work.uns["umap"]["cells"]),
        "harmony_iterations": int(harmony["iterations"]),
        "harmony_converged": bool(harmony["converged"]),
        "harmony_max_iter": int(harmony_max_iter),
        "donor_mixing_pca": mixing["pca"],
        "donor_mixing_harmony": mixing["harmony"],
        "donor_mixing_expected": mixing["expected"],
        "donor_mixing_cells": int(mixing["cells"]),
    }
    log.info(
        "share of neighbours from other donors: %.3f before Harmony, %.3f after (random: %.3f)",
        mixing["pca"],
        mixing["harmony"],
        mixing["expected"],
    )
    return emb, metrics


def figures(emb: ad.AnnData, *, seed: int) -> dict[str, Any]:
    """Draw the UMAP coloured by cell type and by donor.

    Parameters
    ----------
    emb
        Output of :func:`integrate_and_embed`.
    seed
        Seed of the drawing order.

    Returns
    -------
    dict
        PNG file name to figure.
    """
    from immune_aging.analysis.plots import plot_embedding

    n_donors = int(emb.obs["donor_id"].nunique())
    umap = np.asarray(emb.obsm["X_umap"])
    laid_out = np.isfinite(umap).all(axis=1)
    sample = "" if laid_out.all() else f", {laid_out.sum():,} of {len(umap):,} cells"
    umap = umap[laid_out]
    obs = emb.obs.loc[laid_out]
    return {
        "umap_cell_type.png": plot_embedding(
            umap, obs["cell_type"], title=f"UMAP by cell type{sample}", seed=seed
        ),
        "umap_donor.png": plot_embedding(
            umap,
            obs["donor_id"],
            title=f"UMAP by donor ({n_donors} donors, after Harmony{sample})",
            legend="right" if n_donors <= 20 else "none",
            seed=seed,
        ),
    }


def harmony_integrate(
    adata: ad.AnnData,
    *,
    key: str = "donor_id",
    basis: str = "X_pca",
    max_iter: int,
    seed: int,
    n_threads: int = 1,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Correct a PCA embedding for a batch variable with Harmony.

    Parameters
    ----------
    adata
        Cells with ``obsm[basis]`` (cells x components) and ``obs[key]``. Not modified.
    key
        Batch column of ``obs`` (one batch per donor by default).
    basis
        The embedding in ``obsm`` to correct.
    max_iter
        Harmony iterations at most.
    seed
        Random seed of Harmony's k-means initialisation.
    n_threads
        Threads Harmony may use (its result does not depend on it).

    Returns
    -------
    corrected : numpy.ndarray
        Float32 array, cells x components, in the order of ``adata``.
    info : dict
        ``iterations`` run, ``converged`` (relative change of the objective below
        Harmony's threshold), ``max_iter`` and the ``objective`` per iteration.

    Raises
    ------
    RuntimeError
        If Harmony's result is neither cells x components nor its transpose.
    """
    import harmonypy

    data = np.asarray(adata.obsm[basis], dtype=np.float64)
    meta = pd.DataFrame({key: adata.obs[key].to_numpy()}, index=np.arange(adata.n_obs))
    result = harmonypy.run_harmony(
        data,
        meta,
        key,
        max_iter_harmony=max_iter,
        random_state=seed,
        verbose=False,
        ncores=n_threads,
    )
    corrected = check_orientation(
        np.asarray(result.Z_corr), n_cells=data.shape[0], n_comps=data.shape[1]
    )
    objective = [float(v) for v in result.objective_harmony]
    iterations = len(result.kmeans_rounds)
    converged = False
    if len(objective) >= 2:
        old, new = objective[-2], objective[-1]
        converged = bool(old != 0 and (old - new) / abs(old) < HARMONY_EPSILON)
    info = {
        "iterations": iterations,
        "converged": converged,
        "max_iter": max_iter,
        "objective": objective,
    }
    log.info("Harmony: %d iteration(s), converged: %s", iterations, converged)
    return corrected.astype(np.float32), info


def check_orientation(z: np.ndarray, *, n_cells: int, n_comps: int) -> np.ndarray:
    """Return Harmony's corrected matrix as cells x components.

    harmonypy 1.x returned components x cells, 2.x returns cells x components;
    either is accepted (the former transposed), anything else is an error. When
    the matrix is square the orientation cannot be told and 2.x's is assumed.

    Parameters
    ----------
    z
        Harmony's ``Z_corr``.
    n_cells
        Number of cells given to Harmony.
    n_comps
        Number of components given to Harmony.

    Returns
    -------
    numpy.ndarray
        ``z`` or its transpose, shape ``(n_cells, n_comps)``.

    Raises
    ------
    RuntimeError
        If the shape is neither ``(n_cells, n_comps)`` nor ``(n_comps, n_cells)``.
    """
    if z.shape == (n_cells, n_comps):
        return z
    if z.shape == (n_comps, n_cells):
        log.info("Harmony returned components x cells; transposing")
        return np.ascontiguousarray(z.T)
    raise RuntimeError(
        f"Harmony returned a matrix of shape {z.shape}; expected {n_cells} cells x "
        f"{n_comps} components (or its transpose)"
    )


def donor_mixing(
    embeddings: dict[str, np.ndarray],
    donors: pd.Series | np.ndarray,
    *,
    n_neighbors: int,
    max_cells: int,
    seed: int,
) -> dict[str, Any]:
    """Measure how well donors mix: the share of a cell's neighbours from other donors.

    The exact ``n_neighbors`` nearest neighbours are found among the same random
    subsample of at most ``max_cells`` cells in each embedding, so the embeddings
    are compared on equal terms. If donors were mixed at random the share would be
    ``expected`` (one minus the chance that another subsampled cell comes from the
    same donor); donor-specific structure pushes it below.

    Parameters
    ----------
    embeddings
        Name to cells x components array (same cells, same order), e.g.
        ``{"pca": ..., "harmony": ...}``.
    donors
        Donor of each cell.
    n_neighbors
        Neighbours per cell.
    max_cells
        Largest subsample of cells used.
    seed
        Random seed of the subsample.

    Returns
    -------
    dict
        ``cells`` (subsample size), ``n_neighbors``, ``expected`` and, per
        embedding name, the mean other-donor share.
    """
    from sklearn.neighbors import NearestNeighbors

    donors = np.asarray(donors)
    n = donors.shape[0]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=max_cells, replace=False)) if n > max_cells else np.arange(n)
    sub = donors[idx]
    k = int(min(n_neighbors, len(idx) - 1))
    _, codes = np.unique(sub, return_inverse=True)
    sizes = np.bincount(codes)
    expected = float(np.mean(1.0 - (sizes[codes] - 1) / max(len(idx) - 1, 1)))
    out: dict[str, Any] = {"cells": len(idx), "n_neighbors": k, "expected": expected}
    for name, emb in embeddings.items():
        x = np.asarray(emb, dtype=np.float64)[idx]
        nn = NearestNeighbors(n_neighbors=k + 1).fit(x)
        _, ind = nn.kneighbors(x)
        neigh = ind[:, 1:]
        out[name] = float(np.mean(codes[neigh] != codes[:, None]))
    return out


def embedding_anndata(
    adata: ad.AnnData,
    *,
    obs_columns: tuple[str, ...] = ("donor_id", "cell_type"),
) -> ad.AnnData:
    """Return the cells of ``adata`` without genes: the named obs columns and embeddings.

    Parameters
    ----------
    adata
        Cells with ``obsm``, ``obsp`` and ``uns['neighbors']``. Not modified.
    obs_columns
        Columns of ``obs`` kept.

    Returns
    -------
    anndata.AnnData
        ``n_vars == 0``, no ``X``; ``obsm`` ``X_pca_harmony`` and ``X_umap``,
        ``obsp`` ``distances`` and ``connectivities``, ``uns['neighbors']`` and
        ``uns['umap']``.
    """
    out = ad.AnnData(
        obs=adata.obs[list(obs_columns)].copy(),
        var=pd.DataFrame(index=pd.Index([], dtype=object)),
    )
    for key in ("X_pca_harmony", "X_umap"):
        out.obsm[key] = np.asarray(adata.obsm[key]).copy()
    for key in ("distances", "connectivities"):
        out.obsp[key] = adata.obsp[key].copy()
    out.uns["neighbors"] = {k: v for k, v in adata.uns["neighbors"].items()}
    if "umap" in adata.uns:
        out.uns["umap"] = dict(adata.uns["umap"])
    return out
