"""The figures of the ``preprocess`` stage and the table behind them.

PC1 against PC2 coloured by cell type and by total counts, and the elbow plot of
the variance ratio per component (:mod:`immune_aging.analysis.preprocess`).
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from immune_aging.analysis import plots


def figures_and_tables(result: ad.AnnData, *, seed: int) -> plots.FiguresAndTables:
    """Draw the PCA figures; return them with the variance table they show.

    Parameters
    ----------
    result
        Output of :func:`immune_aging.analysis.preprocess.preprocess`.
    seed
        Seed of the cells drawn in the PC1-PC2 scatter (at most
        :data:`immune_aging.analysis.plots.MAX_CELLS`).

    Returns
    -------
    figures : dict
        PNG file name to figure.
    tables : dict
        CSV file name (``pca_variance_ratio.csv``) to :func:`variance_table`.
    """
    variance = variance_table(result)
    figures = {
        "pca.png": plot_pca(result, plots.sample_rows(result.n_obs, plots.MAX_CELLS, seed)),
        "pca_variance_ratio.png": plot_elbow(variance),
    }
    return figures, {"pca_variance_ratio.csv": variance}


def plot_pca(result: ad.AnnData, rows: np.ndarray) -> Any:
    """PC1 vs PC2 coloured by cell type, and by total counts.

    Parameters
    ----------
    result
        Output of :func:`immune_aging.analysis.preprocess.preprocess`.
    rows
        Positions of the cells drawn (:func:`immune_aging.analysis.plots.sample_rows`).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    import matplotlib
    from matplotlib import colors
    from matplotlib.figure import Figure

    xy = result.obsm["X_pca"][rows, :2]
    fig = Figure(figsize=(13, 5))
    ax1, ax2 = fig.subplots(1, 2)
    types = result.obs["cell_type"].astype(str).to_numpy()[rows]
    palette = matplotlib.colormaps["tab20"]
    for i, label in enumerate(sorted(set(types))):
        sel = types == label
        ax1.scatter(
            xy[sel, 0], xy[sel, 1], s=2, color=palette(i % 20), label=label, rasterized=True
        )
    ax1.legend(markerscale=4, fontsize=7, loc="best", frameon=False)
    ax1.set_title("cell type")
    total = result.obs["total_counts"].to_numpy()[rows]
    points = ax2.scatter(
        xy[:, 0],
        xy[:, 1],
        s=2,
        c=total,
        cmap="viridis",
        norm=colors.LogNorm(vmin=max(total.min(), 1), vmax=max(total.max(), 2)),
        rasterized=True,
    )
    fig.colorbar(points, ax=ax2, label="total counts")
    ax2.set_title("total counts")
    ratio = result.uns["pca"]["variance_ratio"]
    for ax in (ax1, ax2):
        ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f} %)")
        ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f} %)")
    return fig


def variance_table(result: ad.AnnData) -> pd.DataFrame:
    """Variance explained per principal component.

    Parameters
    ----------
    result
        Output of :func:`immune_aging.analysis.preprocess.preprocess`.

    Returns
    -------
    pandas.DataFrame
        Columns ``pc`` (1-based), ``variance``, ``variance_ratio``, ``cumulative``.
    """
    ratio = np.asarray(result.uns["pca"]["variance_ratio"], dtype=np.float64)
    return pd.DataFrame(
        {
            "pc": np.arange(1, len(ratio) + 1),
            "variance": np.asarray(result.uns["pca"]["variance"], dtype=np.float64),
            "variance_ratio": ratio,
            "cumulative": np.cumsum(ratio),
        }
    )


def plot_elbow(table: pd.DataFrame) -> Any:
    """Elbow plot of the variance ratio per component.

    Parameters
    ----------
    table
        The variance table (:func:`variance_table`): its ``variance_ratio`` per
        ``pc`` is drawn on a log scale.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    fig, ax = plots.figure_axes()
    ax.plot(table["pc"], table["variance_ratio"], marker="o", ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("principal component")
    ax.set_ylabel("variance ratio")
    return fig
