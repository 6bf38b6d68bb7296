"""The summary figure: the top age genes' log2 fold change per decade across cell types.

Drawn by the report from the DE table: for each cell type the genes with the
smallest adjusted p-value rising and falling with age, as one heatmap of cell
types by genes, the genes ordered by hierarchical clustering of their profiles.
The same table always gives the same PNG bytes (fixed order, no metadata).
"""

from __future__ import annotations

import io as _bytes_io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from immune_aging.report.collect import Figure, png_size

#: figure name, used in its ``alt`` text
NAME = "age_genes_heatmap.png"


@dataclass(frozen=True)
class Selection:
    """Genes chosen for the heatmap and whether they were chosen as significant."""

    gene_ids: list[str]
    #: True when every gene is significant (padj < alpha) in at least one cell type;
    #: False when no gene is (or no cut-off was recorded) and the top genes by padj
    #: are shown instead
    significant: bool


def select_genes(
    de: pd.DataFrame,
    *,
    alpha: float | None,
    per_direction: int,
    max_genes: int,
) -> Selection:
    """Choose the top age genes of every cell type.

    Per cell type and direction (sign of ``log2FoldChange``), the ``per_direction``
    genes with the smallest ``padj`` (then ``pvalue``, then ID) among the significant
    ones (``padj < alpha``). When no gene of any cell type is significant, the same
    choice is made among all tested genes. The union is cut to the ``max_genes``
    with the smallest ``padj`` in any cell type.

    Parameters
    ----------
    de
        DE results: ``cell_type``, ``gene_id``, ``log2FoldChange``, ``pvalue``, ``padj``.
    alpha
        Significance cut on ``padj``; ``None`` when the run recorded none.
    per_direction
        Genes per cell type and direction.
    max_genes
        Most genes shown.

    Returns
    -------
    Selection
        Gene IDs sorted by ID (the clustering orders them later).
    """
    tested = de[de["padj"].notna() & (de["log2FoldChange"].fillna(0.0) != 0.0)]
    significant = tested[tested["padj"] < alpha] if alpha is not None else tested.iloc[:0]
    pool, is_significant = (significant, True) if len(significant) else (tested, False)
    pool = pool.assign(
        _up=pool["log2FoldChange"] > 0,
        _id=pool["gene_id"].astype(str),
        _type=pool["cell_type"].astype(str),
    ).sort_values(["_type", "_up", "padj", "pvalue", "_id"], kind="mergesort")
    top = pool.groupby(["_type", "_up"], sort=True).head(per_direction)
    best = top.groupby("_id")["padj"].min().sort_index(kind="mergesort")
    best = best.sort_values(kind="mergesort").head(max_genes)
    return Selection(sorted(best.index), is_significant)


def effect_matrix(
    de: pd.DataFrame, effect: pd.Series, gene_ids: Sequence[str], cell_types: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tabulate an effect and significance for genes (rows) by cell types (columns).

    Parameters
    ----------
    de
        DE results (``cell_type``, ``gene_id``, ``padj``).
    effect
        The value drawn, aligned with ``de`` (log2 fold change per decade).
    gene_ids, cell_types
        Rows and columns, in this order.

    Returns
    -------
    tuple of pandas.DataFrame
        ``(values, padj)``: NaN where a gene was not tested in a cell type.
    """
    table = pd.DataFrame(
        {
            "gene_id": de["gene_id"].astype(str).to_numpy(),
            "cell_type": de["cell_type"].astype(str).to_numpy(),
            "value": effect.to_numpy(dtype=float),
            "padj": de["padj"].to_numpy(dtype=float),
        }
    )
    table = table[table["gene_id"].isin(set(gene_ids))]
    table = table.drop_duplicates(["gene_id", "cell_type"])
    values = table.pivot(index="gene_id", columns="cell_type", values="value")
    padj = table.pivot(index="gene_id", columns="cell_type", values="padj")
    shape = {"index": list(gene_ids), "columns": list(cell_types)}
    return values.reindex(**shape), padj.reindex(**shape)


def cluster_order(values: pd.DataFrame) -> list[int]:
    """Order rows by average-linkage clustering of their profiles (Euclidean).

    Untested entries count as no change (0). The leaf order is optimal (adjacent
    leaves most similar), which fixes it for the same input.

    Parameters
    ----------
    values
        Rows to order.

    Returns
    -------
    list of int
        Row positions in display order.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage

    n = len(values)
    if n < 3:
        return list(range(n))
    data = np.nan_to_num(values.to_numpy(dtype=float), nan=0.0)
    tree = linkage(data, method="average", metric="euclidean", optimal_ordering=True)
    return [int(i) for i in leaves_list(tree)]


def _plain(label: object) -> str:
    """Return a label matplotlib shows as written (a ``$`` would start math text)."""
    return str(label).replace("$", r"\$")


def heatmap_figure(
    values: pd.DataFrame,
    significant: pd.DataFrame,
    labels: Sequence[str],
    *,
    unit: str,
) -> Figure:
    """Draw the heatmap of cell types (rows) by genes (columns) as PNG bytes.

    Parameters
    ----------
    values
        Genes by cell types, in display order; NaN where not tested (grey).
    significant
        Same shape, True where the gene is significant in the cell type (dot).
    labels
        Gene symbols of the rows of ``values``.
    unit
        What the colour shows (colour-bar label).

    Returns
    -------
    Figure
        PNG bytes and pixel size; red rises with age, blue falls, the colour
        scale symmetric around 0.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = values.to_numpy(dtype=float).T  # cell types x genes
    n_types, n_genes = data.shape
    finite = np.abs(data[np.isfinite(data)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.85")
    fig, ax = plt.subplots(figsize=(2.0 + 0.22 * max(n_genes, 6), 0.9 + 0.25 * n_types))
    image = ax.imshow(
        np.ma.masked_invalid(data),
        cmap=cmap,
        vmin=-limit,
        vmax=limit,
        aspect="auto",
        interpolation="nearest",
    )
    rows, cols = np.nonzero(significant.to_numpy(dtype=bool).T)
    ax.scatter(cols, rows, s=6, c="black", linewidths=0)
    ax.set_xticks(range(n_genes), [_plain(x) for x in labels], rotation=90, fontsize=7)
    ax.set_yticks(range(n_types), [_plain(c) for c in values.columns], fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01)
    bar.set_label(unit, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    buffer = _bytes_io.BytesIO()
    # as immune_aging.io.save_figure: no volatile metadata, so the bytes are stable
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    png = buffer.getvalue()
    width, height = png_size(png, NAME)
    return Figure("report", NAME, png, width, height)
