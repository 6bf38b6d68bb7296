"""The figures of the ``qc`` stage and the tables behind them.

Violins of the QC metrics for all and for kept cells, counts against genes
coloured by mitochondrial share, and histograms of the hemoglobin share and of
the Scrublet doublet scores (:mod:`immune_aging.analysis.qc`,
:mod:`immune_aging.analysis.doublets`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from immune_aging.analysis import plots


def _violin_stats(values: np.ndarray, bins: int = 200) -> dict[str, Any]:
    """Violin outline from a smoothed histogram (fast on a million cells)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1e-9
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    density = ndimage.gaussian_filter1d(counts.astype(np.float64), 2.0)
    return {
        "coords": (edges[:-1] + edges[1:]) / 2,
        "vals": density / max(density.max(), 1e-12),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "min": lo,
        "max": hi,
    }


def figures_and_tables(
    table: pd.DataFrame,
    groups: pd.DataFrame,
    limits: pd.DataFrame,
    *,
    max_pct_hb: float,
    seed: int,
) -> plots.FiguresAndTables:
    """Draw the QC figures and the tables behind them.

    Parameters
    ----------
    table
        Output of :func:`immune_aging.analysis.qc.qc_table`.
    groups
        Per-group output of :func:`immune_aging.analysis.doublets.detect_doublets`.
    limits
        Limits table of :func:`immune_aging.analysis.qc_rules.threshold_rules`.
    max_pct_hb
        The hemoglobin limit (drawn on its histogram).
    seed
        Seed of the cell subsample drawn (at most :data:`plots.MAX_CELLS` cells).

    Returns
    -------
    tuple of dict
        PNG file name to figure, and CSV file name to table.
    """
    hb_hist = plots.histogram_table(table["pct_counts_hb"], bins=50)
    score_hist = plots.histogram_table(table["doublet_score"].dropna(), bins=50)
    has_threshold = groups["threshold"].notna().any()
    drawn = table.iloc[plots.sample_rows(len(table), plots.MAX_CELLS, seed)]
    figures = {
        "qc_violins.png": plot_violins(drawn, limits=limits),
        "counts_vs_genes.png": plot_counts_vs_genes(drawn),
        "hemoglobin_hist.png": plots.plot_histogram(
            hb_hist, xlabel="% hemoglobin counts", cutoff=max_pct_hb
        ),
        "doublet_scores.png": plots.plot_histogram(
            score_hist,
            xlabel="Scrublet doublet score (scored cells)",
            cutoff_label="median group threshold",
            cutoff=float(np.nanmedian(groups["threshold"])) if has_threshold else None,
        ),
    }
    tables = {
        "hemoglobin_hist.csv": hb_hist,
        "doublet_score_hist.csv": score_hist,
        "scrublet_groups.csv": groups,
    }
    return figures, tables


def plot_violins(data: pd.DataFrame, *, limits: pd.DataFrame) -> Any:
    """Violins of genes, counts, mitochondrial and hemoglobin share: all vs kept cells.

    Parameters
    ----------
    data
        The cells drawn: rows of :func:`immune_aging.analysis.qc.qc_table`.
    limits
        Limits table of :func:`immune_aging.analysis.qc_rules.threshold_rules` (lines when fixed).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    from matplotlib.figure import Figure

    panels = [
        ("n_genes_by_counts", "genes detected", ("min_genes", "max_genes")),
        ("total_counts", "total counts", ("min_counts", "max_counts")),
        ("pct_counts_mt", "% mitochondrial", ("max_pct_mt",)),
        ("pct_counts_hb", "% hemoglobin", ("max_pct_hb",)),
    ]
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, len(panels))
    fixed = list(limits.index) == ["all"]
    for ax, (col, label, keys) in zip(axes, panels, strict=True):
        series = [data[col].to_numpy(float), data.loc[data["keep"], col].to_numpy(float)]
        stats = [_violin_stats(v) for v in series if v.size]
        if stats:
            ax.violin(stats, positions=[1, 2][: len(stats)], showmedians=True)
        ax.set_xticks([1, 2], ["all", "kept"])
        ax.set_title(label)
        if fixed:
            for key in keys:
                ax.axhline(float(limits.loc["all", key]), color="red", linestyle="--", lw=1)
    fig.suptitle("QC metrics per cell" + ("" if fixed else " (MAD limits differ per group)"))
    return fig


def plot_counts_vs_genes(data: pd.DataFrame) -> Any:
    """Scatter of total counts against genes detected, coloured by % mitochondrial.

    Parameters
    ----------
    data
        The cells drawn: rows of :func:`immune_aging.analysis.qc.qc_table`.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    fig, ax = plots.figure_axes((6, 5))
    points = ax.scatter(
        data["total_counts"],
        data["n_genes_by_counts"],
        c=data["pct_counts_mt"],
        s=3,
        cmap="viridis",
        rasterized=True,
    )
    fig.colorbar(points, ax=ax, label="% mitochondrial")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("total counts")
    ax.set_ylabel("genes detected")
    return fig
