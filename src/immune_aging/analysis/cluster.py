"""Leiden clustering of the neighbour graph and its agreement with the cell-type labels."""

from __future__ import annotations

import logging
import time
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def leiden(
    adata: ad.AnnData,
    *,
    resolution: float,
    n_iterations: int,
    seed: int,
) -> pd.Series:
    """Cluster cells with Leiden (igraph flavour, undirected) on ``obsp['connectivities']``.

    Parameters
    ----------
    adata
        Cells with the graph of :func:`scanpy.pp.neighbors`. Not modified.
    resolution
        Leiden resolution; higher gives more clusters.
    n_iterations
        Leiden iterations; -1 runs until the partition no longer changes.
    seed
        Random seed.

    Returns
    -------
    pandas.Series
        Categorical cluster labels ``"0"``, ``"1"``, ... numbered by decreasing
        size, indexed by cell.
    """
    import scanpy as sc

    graph = ad.AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()))
    graph.obsp["connectivities"] = adata.obsp["connectivities"].copy()
    graph.obsp["distances"] = adata.obsp["distances"].copy()
    graph.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "distances_key": "distances",
        "params": dict(adata.uns["neighbors"].get("params", {})),
    }
    start = time.perf_counter()
    log.info("Leiden: %d cells, resolution %g ...", graph.n_obs, resolution)
    sc.tl.leiden(
        graph,
        resolution=resolution,
        n_iterations=n_iterations,
        random_state=seed,
        flavor="igraph",
        directed=False,
    )
    labels = relabel_by_size(graph.obs["leiden"])
    log.info(
        "Leiden: %d clusters at resolution %g, %.0f s",
        labels.cat.categories.size,
        resolution,
        time.perf_counter() - start,
    )
    return labels


def relabel_by_size(labels: pd.Series) -> pd.Series:
    """Renumber cluster labels ``"0"``, ``"1"``, ... by decreasing size.

    Ties are broken by the position of the cluster's first cell, so the result
    depends only on the partition.

    Parameters
    ----------
    labels
        Cluster label of each cell.

    Returns
    -------
    pandas.Series
        Categorical string labels in numeric order, same index, named ``leiden``.
    """
    values = pd.Series(labels).astype(str)
    codes, uniques = pd.factorize(values)  # codes in order of first appearance
    sizes = np.bincount(codes, minlength=len(uniques))
    order = np.lexsort((np.arange(len(uniques)), -sizes))
    new = np.empty(len(uniques), dtype=np.int64)
    new[order] = np.arange(len(uniques))
    names = [str(i) for i in range(len(uniques))]
    out = pd.Categorical.from_codes(new[codes], categories=names)
    return pd.Series(out, index=values.index, name="leiden")


def contingency(clusters: pd.Series, cell_types: pd.Series) -> pd.DataFrame:
    """Count cells per (cluster, cell type).

    Parameters
    ----------
    clusters
        Cluster of each cell.
    cell_types
        Cell type of each cell (same order).

    Returns
    -------
    pandas.DataFrame
        Rows clusters (numeric labels in numeric order), columns cell types
        (sorted), integer counts; index named ``leiden``, columns named ``cell_type``.
    """
    rows = np.asarray(clusters).astype(str)
    table = pd.crosstab(
        pd.Categorical(rows, categories=_natural_order(rows)),
        pd.Categorical(np.asarray(cell_types).astype(str)),
    )
    table.index = pd.Index([str(i) for i in table.index], name="leiden")
    table.columns = pd.Index([str(c) for c in table.columns], name="cell_type")
    return table.astype(np.int64)


def agreement(clusters: pd.Series, cell_types: pd.Series) -> dict[str, Any]:
    """Score how well clusters reproduce the cell-type labels.

    Parameters
    ----------
    clusters
        Cluster of each cell.
    cell_types
        Cell type of each cell (same order).

    Returns
    -------
    dict
        ``n_cells``, ``n_clusters``, ``ari`` (adjusted Rand index), ``nmi``
        (normalised mutual information), ``purity`` (share of cells whose
        cluster's most common cell type is their own), the three rounded to six
        decimals, and ``cluster_sizes`` (label to cell count, in label order).
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a = np.asarray(clusters).astype(str)
    b = np.asarray(cell_types).astype(str)
    if a.shape != b.shape:
        raise ValueError(f"clusters ({a.shape[0]}) and cell_types ({b.shape[0]}) differ in length")
    table = contingency(pd.Series(clusters), pd.Series(cell_types))
    sizes = table.sum(axis=1)
    return {
        "n_cells": int(a.shape[0]),
        "n_clusters": int(table.shape[0]),
        "ari": round(float(adjusted_rand_score(b, a)), 6),
        "nmi": round(min(float(normalized_mutual_info_score(b, a)), 1.0), 6),
        "purity": round(float(table.max(axis=1).sum() / max(a.shape[0], 1)), 6),
        "cluster_sizes": {str(k): int(v) for k, v in sizes.items()},
    }


def cluster_table(labels: pd.Series, cell_ids: pd.Index, cell_types: pd.Series) -> pd.DataFrame:
    """Return one row per cell: ``cell_id``, ``leiden`` and ``cell_type``.

    Parameters
    ----------
    labels
        Cluster of each cell (:func:`leiden`).
    cell_ids
        The cells' names.
    cell_types
        The annotated cell type of each cell.

    Returns
    -------
    pandas.DataFrame
        The table written to ``clusters.parquet``.
    """
    return pd.DataFrame(
        {
            "cell_id": cell_ids.astype(str).to_numpy(),
            "leiden": labels.array,
            "cell_type": pd.Categorical(cell_types.astype(str)),
        }
    )


def figures(
    coords: np.ndarray,
    labels: pd.Series,
    table: pd.DataFrame,
    metrics: dict,
    *,
    resolution: float,
    seed: int,
) -> dict[str, Any]:
    """Draw the UMAP coloured by cluster and the cluster x cell-type heatmap.

    Parameters
    ----------
    coords
        The UMAP coordinates.
    labels
        Cluster of each cell.
    table
        Output of :func:`contingency`.
    metrics
        Output of :func:`agreement`.
    resolution
        The Leiden resolution (in the title).
    seed
        Seed of the drawing order.

    Returns
    -------
    dict
        PNG file name to figure.
    """
    from immune_aging.analysis.plots import plot_embedding

    return {
        "umap_leiden.png": plot_embedding(
            coords,
            labels.to_numpy(),
            title=f"UMAP by Leiden cluster (resolution {resolution:g})",
            legend="on data",
            seed=seed,
        ),
        "contingency.png": plot_contingency(
            table, title=f"Leiden clusters vs cell types (ARI {metrics['ari']:.2f})"
        ),
    }


def plot_contingency(table: pd.DataFrame, *, title: str) -> Any:
    """Heatmap of a cluster x cell-type table, coloured by each cluster's shares.

    Parameters
    ----------
    table
        Output of :func:`contingency`.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (not saved); cells are annotated with counts when the table
        is small enough to read.
    """
    from matplotlib.figure import Figure

    # cell types ordered by the cluster holding most of them: a diagonal when they agree
    order = np.argsort(np.argmax(table.to_numpy(), axis=0), kind="stable")
    table = table.iloc[:, order]
    counts = table.to_numpy()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n_rows, n_cols = counts.shape
    fig = Figure(figsize=(3.5 + 0.8 * n_cols, 3.0 + 0.4 * n_rows))
    ax = fig.subplots()
    image = ax.imshow(shares, aspect="auto", cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(np.arange(n_cols))
    ax.set_xticklabels(list(table.columns), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(n_rows))
    ax.set_yticklabels(list(table.index), fontsize=8)
    ax.set_xlabel("cell type")
    ax.set_ylabel("Leiden cluster")
    ax.set_title(title)
    if n_rows * n_cols <= 900:
        for i in range(n_rows):
            for j in range(n_cols):
                if counts[i, j]:
                    colour = "white" if shares[i, j] > 0.6 else "black"
                    ax.text(
                        j, i, str(counts[i, j]), ha="center", va="center", fontsize=6, color=colour
                    )
    fig.colorbar(image, ax=ax, label="share of the cluster's cells", shrink=0.8)
    fig.tight_layout()
    return fig


def _natural_order(labels: np.ndarray) -> list[str]:
    """Distinct labels, numbers first in numeric order, then the rest sorted."""
    unique = pd.unique(labels)
    return sorted(unique, key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))
