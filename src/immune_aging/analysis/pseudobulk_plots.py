"""Figures of the pseudobulk stage: samples per cell type and donor ages."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def figures(
    report: pd.DataFrame,
    donors: pd.DataFrame,
    *,
    min_samples_per_cell_type: int,
    age_80_and_over: float,
) -> dict[str, Any]:
    """Draw the stage's figures.

    Parameters
    ----------
    report
        Per cell type report of :func:`filter_samples`.
    donors
        Donor table of :func:`immune_aging.analysis.age.donor_table`.
    min_samples_per_cell_type, age_80_and_over
        See ``params.yaml: pseudobulk``.

    Returns
    -------
    dict
        PNG file name to figure.
    """
    return {
        "samples_per_cell_type.png": plot_samples(
            report, min_samples_per_cell_type=min_samples_per_cell_type
        ),
        "donor_ages.png": plot_ages(donors, age_80_and_over=age_80_and_over),
    }


def plot_samples(report: pd.DataFrame, *, min_samples_per_cell_type: int) -> Any:
    """Horizontal bar chart of samples per cell type, dropped cell types greyed.

    Parameters
    ----------
    report
        Per cell type report of :func:`filter_samples`.
    min_samples_per_cell_type
        Threshold drawn as a dashed line.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (not saved).
    """
    from matplotlib.figure import Figure

    with_cells = report["samples_total"] - report["samples_few_cells"]
    fig = Figure(figsize=(8, 1.2 + 0.35 * max(len(report), 1)))
    ax = fig.subplots()
    y = np.arange(len(report))
    colours = np.where(report["kept"], "tab:blue", "lightgrey")
    ax.barh(y, with_cells, color=colours, label="samples with enough cells")
    ax.barh(
        y,
        report["samples_few_cells"],
        left=with_cells,
        color="none",
        edgecolor="grey",
        hatch="//",
        label="samples with too few cells",
    )
    ax.axvline(min_samples_per_cell_type, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(y)
    ax.set_yticklabels(list(report.index), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("pseudobulk samples (donors); dashed: min_samples_per_cell_type")
    ax.set_title("Samples per cell type (grey: cell type dropped)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_ages(donors: pd.DataFrame, *, age_80_and_over: float) -> Any:
    """Histogram of donor ages, with the censored and unknown donors counted.

    Parameters
    ----------
    donors
        Donor table of :func:`immune_aging.analysis.age.donor_table`.
    age_80_and_over
        The age given to ``80 year-old and over`` donors (marked on the plot).

    Returns
    -------
    matplotlib.figure.Figure
        The figure (not saved).
    """
    from matplotlib.figure import Figure

    ages = donors["age"].to_numpy(dtype=np.float64)
    censored_mask = (donors["age_form"] == "and_over").to_numpy()
    known = ages[np.isfinite(ages)]
    exact = ages[np.isfinite(ages) & ~censored_mask]
    censored = ages[np.isfinite(ages) & censored_mask]
    dropped = int((np.isnan(ages) & censored_mask).sum())
    unknown = int(np.isnan(ages).sum()) - dropped
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if known.size:
        low = np.floor(known.min() / 5) * 5
        high = np.ceil((known.max() + 1e-9) / 5) * 5
        bins = np.arange(low, max(high, low + 5) + 5, 5)
        ax.hist(
            [exact, censored],
            bins=bins,
            stacked=True,
            color=["tab:blue", "tab:orange"],
            edgecolor="white",
            label=["exact age", f"censored ('80 year-old and over' = {age_80_and_over:g})"],
        )
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_xlabel("age (years)")
    ax.set_ylabel("donors")
    dropped_text = f", {dropped} censored left without an age" if dropped else ""
    ax.set_title(
        f"Donor ages: {known.size} donors with an age ({censored.size} censored), "
        f"{unknown} unknown{dropped_text}"
    )
    fig.tight_layout()
    return fig
