"""Figure building blocks shared by the stages' figures.

Every figure function of the analysis modules is named ``plot_<what>`` and
returns a :class:`matplotlib.figure.Figure` that the stage saves with
:func:`immune_aging.io.save_figure`. What several of them draw lives here: the
categorical palette, a seeded subsample of cells, a 2-D embedding coloured by a
label, a dot plot of gene-set results, and histograms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Cells drawn at most in a per-cell figure (a seeded sample, :func:`sample_rows`).
MAX_CELLS = 50_000
#: A stage's figures and the tables behind them: PNG file name to figure, CSV file
#: name to table.
FiguresAndTables = tuple[dict[str, Any], dict[str, pd.DataFrame]]


def figure_axes(figsize: tuple[float, float] = (6, 4)) -> tuple[Any, Any]:
    """Return a new figure with one set of axes.

    Parameters
    ----------
    figsize
        Width and height in inches.

    Returns
    -------
    tuple
        ``(figure, axes)``: a :class:`matplotlib.figure.Figure` and its axes.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot()


def sample_rows(n: int, max_rows: int, seed: int) -> np.ndarray:
    """Return the rows to draw: all of them, or a seeded random sample, in order.

    Parameters
    ----------
    n
        Number of rows.
    max_rows
        Rows drawn at most.
    seed
        Sampling seed.

    Returns
    -------
    numpy.ndarray
        Sorted row positions.
    """
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))


def plot_embedding(
    coords: np.ndarray,
    labels: pd.Series | np.ndarray,
    *,
    title: str,
    legend: str = "right",
    seed: int = 0,
) -> Any:
    """Scatter a 2-D embedding coloured by a categorical label.

    Cells are drawn in a random (seeded) order so that no group hides the others;
    cells whose coordinates are not finite (not laid out) are left out.

    Parameters
    ----------
    coords
        Cells x 2 coordinates (e.g. ``obsm['X_umap']``).
    labels
        Label of each cell.
    title
        Figure title.
    legend
        ``"right"``: a legend beside the plot; ``"on data"``: each label written at
        the median position of its cells; ``"none"``: no legend (for many labels,
        e.g. donors).
    seed
        Random seed of the drawing order.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (not saved).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    coords = np.asarray(coords)
    cat = pd.Categorical(np.asarray(labels))
    drawn = np.isfinite(coords).all(axis=1)
    if not drawn.all():  # cells without coordinates (a UMAP laid out on a sample)
        coords, cat = coords[drawn], cat[drawn]
    names = [str(c) for c in cat.categories]
    colours = category_colours(len(names))
    order = np.random.default_rng(seed).permutation(len(cat))
    size = float(np.clip(30000.0 / max(len(cat), 1), 0.3, 20.0))
    width = 10.5 if legend == "right" else 7.5
    fig = Figure(figsize=(width, 7))
    ax = fig.subplots()
    ax.scatter(
        coords[order, 0],
        coords[order, 1],
        c=colours[cat.codes[order]],
        s=size,
        linewidths=0,
        rasterized=True,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(title)
    if legend == "right":
        handles = [
            Line2D([], [], marker="o", linestyle="", color=colours[i], label=name)
            for i, name in enumerate(names)
        ]
        ax.legend(
            handles=handles,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            frameon=False,
            fontsize=8 if len(names) <= 20 else 6,
            ncols=1 if len(names) <= 25 else 2,
        )
    elif legend == "on data":
        for i, name in enumerate(names):
            sel = cat.codes == i
            if sel.any():
                x, y = np.median(coords[sel], axis=0)
                ax.text(x, y, name, fontsize=9, weight="bold", ha="center", va="center")
    fig.tight_layout()
    return fig


def category_colours(n: int) -> np.ndarray:
    """Return ``n`` distinct RGBA colours (tab10/tab20, then an even spread of hues).

    Parameters
    ----------
    n
        Number of colours.

    Returns
    -------
    numpy.ndarray
        Array of shape ``(n, 4)``.
    """
    import matplotlib
    from matplotlib.colors import to_rgba_array

    if n <= 10:
        return to_rgba_array(matplotlib.colormaps["tab10"].colors[:n]).reshape(n, 4)
    if n <= 20:
        return to_rgba_array(matplotlib.colormaps["tab20"].colors[:n]).reshape(n, 4)
    spread = matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, n))
    # interleave so that neighbouring labels get distant hues
    step = max(int(np.sqrt(n)), 1)
    order = np.concatenate([np.arange(start, n, step) for start in range(step)])
    return spread[order]


def plot_dots(
    results: pd.DataFrame,
    *,
    fdr: float,
    top: int = 5,
    colour_label: str = "NES",
    cut_label: str = "FDR",
) -> Any:
    """Draw the top up and down sets of every cell type as a dot plot.

    Parameters
    ----------
    results
        Rows from :func:`gsea` (or ORA rows with ``nes`` replaced by a signed score).
    fdr
        Significance cut; significant dots are drawn with a black edge.
    top
        Sets per cell type and direction (by FDR, then |NES|).
    colour_label
        Colour bar title.
    cut_label
        Name of the adjusted p-value in the legend.

    Returns
    -------
    matplotlib.figure.Figure
        Terms x cell types; colour NES, size -log10 FDR.
    """
    from matplotlib.figure import Figure

    picked = []
    for _, rows in results.groupby("cell_type", sort=True):
        for sign in (1, -1):
            part = rows[np.sign(rows["nes"]) == sign]
            part = part.assign(absnes=part["nes"].abs()).sort_values(
                ["fdr", "absnes", "term"], ascending=[True, False, True], kind="mergesort"
            )
            picked.extend(part["term"].head(top))
    terms = sorted(set(picked))
    cts = sorted(results["cell_type"].unique())
    fig = Figure(figsize=(1.2 + 0.5 * max(len(cts), 1), 1.5 + 0.28 * max(len(terms), 1)))
    ax = fig.subplots()
    if not terms:
        ax.text(0.5, 0.5, "no gene set tested", ha="center", va="center")
        ax.set_axis_off()
        return fig
    sub = results[results["term"].isin(terms)]
    x = sub["cell_type"].map({c: i for i, c in enumerate(cts)}).to_numpy()
    y = sub["term"].map({t: i for i, t in enumerate(terms)}).to_numpy()
    size = 20 + 40 * np.clip(-np.log10(np.clip(sub["fdr"].to_numpy(float), 1e-4, 1)), 0, 4)
    lim = max(float(np.nanmax(np.abs(sub["nes"]))), 1.0)
    sig = (sub["fdr"] < fdr).to_numpy()
    points = ax.scatter(
        x,
        y,
        s=size,
        c=sub["nes"],
        cmap="coolwarm",
        vmin=-lim,
        vmax=lim,
        edgecolors=np.where(sig, "black", "none").tolist(),
        linewidths=0.8,
    )
    ax.set_xticks(range(len(cts)), cts, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(terms)), terms, fontsize=7)
    ax.set_xlim(-0.6, len(cts) - 0.4)
    ax.set_ylim(-0.6, len(terms) - 0.4)
    fig.colorbar(points, ax=ax, label=colour_label, shrink=0.6)
    ax.set_title(f"dot size: -log10 {cut_label}; black edge: {cut_label} < {fdr:g}", fontsize=8)
    return fig


def histogram_table(values: Sequence[float] | np.ndarray, *, bins: int = 50) -> pd.DataFrame:
    """Bin values into a histogram table.

    Parameters
    ----------
    values
        Values; NaN are ignored.
    bins
        Number of equal-width bins over the finite range.

    Returns
    -------
    pandas.DataFrame
        Columns ``bin_left``, ``bin_right``, ``n_cells``.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return pd.DataFrame({"bin_left": [], "bin_right": [], "n_cells": []})
    lo, hi = float(v.min()), float(v.max())
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
    return pd.DataFrame({"bin_left": edges[:-1], "bin_right": edges[1:], "n_cells": counts})


def plot_histogram(
    hist: pd.DataFrame,
    *,
    xlabel: str,
    cutoff: float | None = None,
    cutoff_label: str = "limit",
    log_y: bool = True,
) -> Any:
    """Draw a histogram table from :func:`histogram_table`.

    Parameters
    ----------
    hist
        The binned counts.
    xlabel
        Axis label.
    cutoff
        A vertical line to draw (e.g. the hemoglobin limit), or None.
    cutoff_label
        Legend text of the line (its value is appended).
    log_y
        Logarithmic count axis (shows small contaminated populations).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    fig, ax = figure_axes()
    if len(hist):
        widths = hist["bin_right"] - hist["bin_left"]
        ax.bar(hist["bin_left"], hist["n_cells"], width=widths, align="edge", linewidth=0)
    if cutoff is not None and np.isfinite(cutoff):
        ax.axvline(cutoff, color="red", linestyle="--", lw=1, label=f"{cutoff_label} {cutoff:.3g}")
        ax.legend()
    if log_y:
        ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cells")
    return fig
