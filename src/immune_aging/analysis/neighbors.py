"""The neighbour graph and the UMAP embedding of the dimred stage.

The neighbour graph, which clustering reads, always holds every cell: exact up to
``exact_knn_max_cells`` cells, else approximate (pynndescent with UMAP's settings,
on one numba thread, because its result depends on the thread count).

UMAP is only drawn, never analysed, and its single-threaded layout is the slowest
step at OneK1K's size, so above ``umap_max_cells`` cells it is laid out on a seeded
uniform random sample of that many cells (:func:`umap_rows`; every cell type and
donor keeps its share in expectation), from the sample's own neighbour graph. The
other cells get no coordinates: their ``obsm['X_umap']`` rows are NaN and the
figures draw the laid-out cells only (titles say how many). The graph is the same
either way (:func:`prune_weak_edges`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: scanpy.pp.neighbors without a transformer uses exact neighbours below this many cells.
SCANPY_EXACT_BELOW = 8192


def neighbors_umap(
    adata: ad.AnnData,
    *,
    use_rep: str,
    n_neighbors: int,
    n_pcs: int,
    min_dist: float,
    seed: int,
    exact_max_cells: int = 0,
    umap_max_cells: int = 0,
) -> ad.AnnData:
    """Build the kNN graph on an embedding and lay the cells out with UMAP.

    Parameters
    ----------
    adata
        Cells with ``obsm[use_rep]``. Not modified.
    use_rep
        Embedding in ``obsm`` to build the graph on.
    n_neighbors
        Neighbours per cell.
    n_pcs
        Leading components of ``use_rep`` used.
    min_dist
        UMAP ``min_dist``.
    seed
        Random seed of the neighbour search and of UMAP.
    exact_max_cells
        Up to this many cells the neighbours are exact (brute force, scikit-learn);
        above, approximate (pynndescent, scanpy's default for large data).
    umap_max_cells
        Above this many cells UMAP is laid out on the :func:`umap_rows` sample
        only, from the sample's own graph (0: always every cell).

    Returns
    -------
    anndata.AnnData
        A copy with ``obsp['distances']``, ``obsp['connectivities']``,
        ``uns['neighbors']`` (its ``params['knn']`` is ``"exact"`` or
        ``"approximate"``), ``obsm['X_umap']`` (NaN for cells not laid out) and
        ``uns['umap']`` (with ``cells``, the number laid out).
    """
    import scanpy as sc

    out = adata.copy()
    start = time.perf_counter()
    log.info("neighbour graph: %d cells, %d neighbours ...", out.n_obs, n_neighbors)
    neighbor_graph(out, use_rep, n_neighbors, n_pcs, seed, exact_max_cells)
    log.info("neighbour graph: done, %.0f s", time.perf_counter() - start)
    rows = umap_rows(out.n_obs, umap_max_cells, seed)
    start = time.perf_counter()
    log.info("UMAP: laying out %d cells ...", len(rows))
    if len(rows) == out.n_obs:
        sc.tl.umap(out, min_dist=min_dist, random_state=seed)
        out.obsm["X_umap"] = np.asarray(out.obsm["X_umap"], dtype=np.float32)
    else:
        sub = ad.AnnData(obs=pd.DataFrame(index=out.obs_names[rows]))
        sub.obsm[use_rep] = np.asarray(out.obsm[use_rep])[rows]
        neighbor_graph(sub, use_rep, n_neighbors, n_pcs, seed, exact_max_cells)
        sc.tl.umap(sub, min_dist=min_dist, random_state=seed)
        coords = np.full((out.n_obs, 2), np.nan, dtype=np.float32)
        coords[rows] = sub.obsm["X_umap"]
        out.obsm["X_umap"] = coords
        out.uns["umap"] = dict(sub.uns["umap"])
        prune_weak_edges(out.obsp["connectivities"])
        log.info("UMAP laid out on %d of %d cells (dimred.umap_max_cells)", len(rows), out.n_obs)
    log.info("UMAP: done, %.0f s", time.perf_counter() - start)
    out.uns["umap"]["cells"] = len(rows)
    return out


def prune_weak_edges(connectivities: Any) -> None:
    """Zero, in place, the edges that UMAP's layout of the whole graph would zero.

    :func:`scanpy.tl.umap` hands the stored graph to UMAP, which sets every weight
    below ``max / n_epochs`` to 0 in place (``n_epochs`` 500 up to 10,000 cells,
    else 200), so the graph clustering reads has always been the pruned one. When
    UMAP is laid out on a sample the same rule is applied here, so that the graph
    does not depend on ``umap_max_cells``.

    Parameters
    ----------
    connectivities
        ``obsp['connectivities']`` (a SciPy sparse matrix with a ``data`` array).
    """
    n_epochs = 500 if connectivities.shape[0] <= 10_000 else 200
    data = connectivities.data
    if data.size:
        data[data < data.max() / float(n_epochs)] = 0.0


def neighbor_graph(
    adata: ad.AnnData, use_rep: str, n_neighbors: int, n_pcs: int, seed: int, exact_max: int
) -> None:
    """Add the kNN graph of ``obsm[use_rep]`` in place, exact or approximate.

    Parameters
    ----------
    adata
        Cells with ``obsm[use_rep]``; gets ``obsp`` ``distances`` and
        ``connectivities`` and ``uns['neighbors']`` (``params['knn']`` is
        ``"exact"`` or ``"approximate"``).
    use_rep, n_neighbors, n_pcs, seed
        See :func:`neighbors_umap`.
    exact_max
        Up to this many cells the neighbours are exact (scikit-learn, brute force);
        above, pynndescent with UMAP's settings on one thread (scanpy's default;
        its result would change with the thread count).
    """
    import scanpy as sc

    exact = adata.n_obs <= exact_max
    sc.pp.neighbors(
        adata,
        n_neighbors=n_neighbors,
        n_pcs=n_pcs,
        use_rep=use_rep,
        random_state=seed,
        transformer="sklearn" if exact else None,
    )
    # scanpy's own default is exact too below SCANPY_EXACT_BELOW cells
    approximate = not exact and adata.n_obs >= SCANPY_EXACT_BELOW
    adata.uns["neighbors"]["params"]["knn"] = "approximate" if approximate else "exact"


def umap_rows(n_cells: int, max_cells: int, seed: int) -> np.ndarray:
    """Return the cells UMAP lays out: all, or a seeded uniform sample of ``max_cells``.

    A uniform sample keeps every cell type's and donor's share of the cells in
    expectation (a stratum of share ``p`` gets ``p * max_cells`` cells, give or take
    ``sqrt(p * max_cells)``), so the picture's densities mean what they would on all
    cells.

    Parameters
    ----------
    n_cells
        Number of cells.
    max_cells
        Cells laid out at most (0: all).
    seed
        Seed of the sample.

    Returns
    -------
    numpy.ndarray
        Sorted row positions.
    """
    if max_cells <= 0 or n_cells <= max_cells:
        return np.arange(n_cells)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_cells, size=max_cells, replace=False))
