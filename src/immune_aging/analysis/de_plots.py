"""Figures of the de stage: a volcano plot per cell type and the genes up and down."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: Genes labelled by symbol on each volcano plot (the smallest adjusted p-values).
VOLCANO_LABELS = 10


def plot_volcano(
    results: pd.DataFrame, *, cell_type: str, alpha: float, label_top: int = VOLCANO_LABELS
) -> Any:
    """Draw a volcano plot of one cell type's age effects, the top genes labelled.

    Parameters
    ----------
    results
        Rows of one cell type from :func:`differential_expression`.
    cell_type
        Its label (title).
    alpha
        Adjusted p-value cut that colours significant genes.
    label_top
        The genes with the smallest adjusted p-values (then p-values) labelled by
        symbol (gene ID when the symbol is empty).

    Returns
    -------
    matplotlib.figure.Figure
        log2 fold change per SD of age against -log10 p-value.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    lfc = results["log2FoldChange"].to_numpy()
    p = results["pvalue"].to_numpy()
    y = -np.log10(np.clip(np.nan_to_num(p, nan=1.0), 1e-300, 1.0))
    sig = (results["padj"] < alpha).to_numpy()
    colour = np.where(sig & (lfc > 0), "tab:red", np.where(sig & (lfc < 0), "tab:blue", "0.7"))
    ax.scatter(lfc, y, c=colour, s=6, linewidths=0, rasterized=False)
    _label_genes(ax, results.assign(neglog10p=y), label_top)
    ax.axvline(0, color="0.5", lw=0.5)
    ax.set_xlabel("log2 fold change per SD of age")
    ax.set_ylabel("-log10 p-value")
    ax.set_title(
        f"{cell_type}\n{int((sig & (lfc > 0)).sum())} up, {int((sig & (lfc < 0)).sum())} down"
        f" (padj < {alpha:g})",
        fontsize=9,
    )
    return fig


def _label_genes(ax: Any, rows: pd.DataFrame, n: int) -> None:
    """Label the ``n`` most significant genes, texts stacked apart on each side of zero."""
    top = (
        rows.loc[rows["padj"].notna()]
        .sort_values(["padj", "pvalue", "gene_id"], kind="mergesort")
        .head(n)
    )
    if top.empty:
        return
    y_span = max(float(rows["neglog10p"].max()), 1.0)
    x_span = max(float(rows["log2FoldChange"].abs().max()), 1e-6)
    gap = 0.045 * y_span  # the height of one label, in data units
    for side, part in top.groupby(top["log2FoldChange"] >= 0, sort=True):
        placed: list[float] = []
        for row in part.sort_values(
            ["neglog10p", "gene_id"], ascending=[False, True]
        ).itertuples():
            y_text = (
                float(row.neglog10p) if not placed else min(float(row.neglog10p), placed[-1] - gap)
            )
            placed.append(y_text)
            symbol = row.gene if isinstance(row.gene, str) and row.gene else str(row.gene_id)
            ax.annotate(
                symbol.replace("$", r"\$"),  # "$" would start matplotlib's mathtext
                (row.log2FoldChange, row.neglog10p),
                xytext=(row.log2FoldChange + (0.08 if side else -0.08) * x_span, y_text),
                textcoords="data",
                ha="left" if side else "right",
                va="center",
                fontsize=6,
                arrowprops={"arrowstyle": "-", "color": "0.4", "lw": 0.4},
            )


def plot_de_counts(counts: pd.DataFrame) -> Any:
    """Draw horizontal bars of genes up and down with age per cell type.

    Parameters
    ----------
    counts
        Columns ``cell_type, n_up, n_down``.

    Returns
    -------
    matplotlib.figure.Figure
        The bar chart.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 0.4 * max(len(counts), 1) + 1.2))
    ax = fig.subplots()
    pos = np.arange(len(counts))
    ax.barh(pos, counts["n_up"], color="tab:red", label="up with age")
    ax.barh(pos, -counts["n_down"], color="tab:blue", label="down with age")
    ax.set_yticks(pos, counts["cell_type"], fontsize=8)
    ax.axvline(0, color="0.3", lw=0.5)
    ax.set_xlabel("significant genes (down < 0 < up)")
    ax.legend(fontsize=8, loc="lower right")
    return fig
