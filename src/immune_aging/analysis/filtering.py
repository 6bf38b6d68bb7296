"""Donor and cell-type prevalence filter (stage ``filter``).

The rules, applied in order (as in the seed workflow):

1. Donors with fewer cells than the ``cutoff_percentile`` percentile of cells
   per donor are dropped. The percentile is interpolated linearly
   (``numpy.percentile``) and rounded down to whole cells, so a donor is kept
   when it has at least ``floor(percentile)`` cells.
2. Among the remaining donors, a cell type is kept when at least
   ``percent_donors`` of them have at least ``min_cells_per_celltype`` cells of it;
   cells of other types are dropped.
3. Donors lacking ``min_cells_per_celltype`` cells of any kept cell type are
   dropped, so every remaining donor contributes to every kept cell type.

Then genes with zero counts in the remaining cells are dropped.

Rules 2 and 3 can remove by age: a cell type that thins out with age fails rule 2
in old donors first and goes whole, and rule 3 drops the donors lacking a type,
who then are mostly old. :func:`rule_ages` reports the ages of what each rule
removed against the rest, with a warning when they differ. ``prevalence =
"samples"`` skips rules 2 and 3 (every cell type and donor past the cut-off is
kept): the pseudobulk stage's ``min_cells`` then drops only the (cell type,
donor) samples with too few cells.

Rules 1-3 need only ``obs``, so the stage applies them to a backed file, streams
the kept cells' counts once to find the genes with any count, and writes the
selection (:func:`assemble_selection`), not a copy of the counts.

The rules are in :mod:`immune_aging.analysis.filter_rules`, the ages of what
they removed in :mod:`immune_aging.analysis.filter_ages`; both are re-exported
here, where the selection is assembled, summarised and drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from immune_aging.analysis.filter_ages import rule_ages
from immune_aging.analysis.filter_rules import (
    CELL_TYPE_KEY,
    DONOR_KEY,
    CellSelection,
    select_cells,
)
from immune_aging.errors import InputError
from immune_aging.selection import COLUMN, ROW, SELECTION_UNS

log = logging.getLogger(__name__)

__all__ = [
    "OBS_COLUMNS",
    "OPTIONAL_OBS_COLUMNS",
    "CellSelection",
    "assemble_selection",
    "donor_table",
    "plot_cells_per_donor",
    "rule_ages",
    "select_cells",
    "summary",
]

#: obs columns carried into ``selection.h5ad``; the optional ones only when present
#: (the stage passes ``filter.keep_obs`` instead).
OBS_COLUMNS = ("donor_id", "cell_type", "development_stage", "sex")
OPTIONAL_OBS_COLUMNS = ("pool",)


def _tidy_obs(obs: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    out = obs.loc[:, list(columns)].copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.CategoricalDtype):
            out[col] = out[col].cat.remove_unused_categories()
    return out


def assemble_selection(
    obs: pd.DataFrame,
    var: pd.DataFrame,
    *,
    keep: np.ndarray,
    genes: np.ndarray,
    location: str,
    obs_columns: Sequence[str] = OBS_COLUMNS,
    extra_obs: Sequence[str] = OPTIONAL_OBS_COLUMNS,
) -> ad.AnnData:
    """Build the selection: the kept cells and genes with their positions in the input.

    The counts stay in the input file; later stages read them through the
    selection (:func:`immune_aging.selection.read_selection`).

    Parameters
    ----------
    obs
        Annotations of every input cell, in file order. The columns
        ``obs_columns`` are kept, plus those of ``extra_obs`` that are present;
        unused categories are removed.
    var
        Annotations of every gene of the input's counts, with ``feature_name``.
    keep
        Boolean mask of the kept cells over ``obs``.
    genes
        Boolean mask of the kept genes over ``var`` (those with any count in the
        kept cells).
    location
        Where the input's raw counts are (``"X"`` or ``"raw.X"``).
    obs_columns
        Required obs columns to carry.
    extra_obs
        Further obs columns carried when present (e.g. the 10x pool; absent ones are
        logged).

    Returns
    -------
    anndata.AnnData
        No ``X``; obs as above plus ``row`` (each cell's row in the input), var
        ``feature_name`` (strings) and ``column`` (each gene's column in the input's
        counts), ``uns['selection']`` the location and the input's shape.

    Raises
    ------
    InputError
        If a required column is missing, a mask has the wrong length or a carried
        column is named like a position column.
    """
    keep = np.asarray(keep, dtype=bool)
    genes = np.asarray(genes, dtype=bool)
    if len(keep) != len(obs) or len(genes) != len(var):
        raise InputError(
            f"masks of {len(keep)} cells and {len(genes)} genes do not match obs ({len(obs)}) "
            f"and var ({len(var)})"
        )
    missing = [c for c in obs_columns if c not in obs.columns]
    if missing:
        raise InputError(f"obs column {missing[0]!r} missing")
    if "feature_name" not in var.columns:
        raise InputError("var column 'feature_name' missing")
    extra = [c for c in dict.fromkeys(extra_obs) if c not in obs_columns]
    absent = [c for c in extra if c not in obs.columns]
    if absent:
        log.info("obs columns not in the input, not carried: %s", ", ".join(absent))
    columns = [*obs_columns, *(c for c in extra if c in obs.columns)]
    if ROW in columns:
        raise InputError(f"obs column {ROW!r} cannot be carried: the selection uses the name")
    new_obs = _tidy_obs(obs.loc[keep], columns)
    new_obs.index = new_obs.index.astype(str)
    new_obs[ROW] = np.flatnonzero(keep).astype(np.int64)
    new_var = pd.DataFrame(
        {
            "feature_name": var["feature_name"].astype(str).to_numpy()[genes],
            COLUMN: np.flatnonzero(genes).astype(np.int64),
        },
        index=var.index[genes].astype(str),
    )
    log.info("dropped %d genes with zero counts; %d kept", int((~genes).sum()), int(genes.sum()))
    selection = ad.AnnData(obs=new_obs, var=new_var)
    selection.uns[SELECTION_UNS] = {
        "location": str(location),
        "n_obs": len(obs),
        "n_vars": len(var),
    }
    return selection


def summary(
    selection: CellSelection,
    *,
    obs: pd.DataFrame,
    n_genes_in: int,
    kept: ad.AnnData,
    ages_removed: dict[str, Any] | None = None,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """Summarise what the filter did, for ``metrics/filter.json``.

    Parameters
    ----------
    selection
        Result of :func:`select_cells`.
    obs
        Annotations of the input cells.
    n_genes_in
        Genes in the input.
    kept
        The output of :func:`assemble_selection`.
    ages_removed, warnings
        The output of :func:`rule_ages`.

    Returns
    -------
    dict
        Counts in and out, the cut-off, what each rule removed, and the ages of
        what each rule removed with the warnings.
    """
    n_cells_in = len(obs)
    cell_types_in = int(obs[CELL_TYPE_KEY].nunique())
    per_donor = selection.cells_per_donor
    return {
        "cells_in": n_cells_in,
        "donors_in": len(per_donor),
        "genes_in": n_genes_in,
        "cell_types_in": cell_types_in,
        "cutoff_cells_per_donor": selection.cutoff,
        "min_cells_per_donor": selection.min_cells_per_donor,
        "cells_removed": dict(selection.cells_removed),
        "donor_cutoff": {
            "donors_removed": len(selection.donors_removed_cutoff),
            "donors": selection.donors_removed_cutoff,
        },
        "cell_type_prevalence": {
            "cell_types_removed": len(selection.cell_types_removed),
            "cell_types": selection.cell_types_removed,
        },
        "donor_completeness": {
            "donors_removed": len(selection.donors_removed_cell_types),
            "donors": selection.donors_removed_cell_types,
        },
        "zero_count_genes_removed": n_genes_in - kept.n_vars,
        "cells_out": kept.n_obs,
        "donors_out": int(kept.obs[DONOR_KEY].nunique()),
        "genes_out": kept.n_vars,
        "cell_types_out": int(kept.obs[CELL_TYPE_KEY].nunique()),
        "cell_types_kept": selection.cell_types_kept,
        "ages_removed": dict(ages_removed or {}),
        "warnings": list(warnings),
    }


def donor_table(selection: CellSelection, kept: ad.AnnData) -> pd.DataFrame:
    """Tabulate cells per donor before and after filtering.

    Parameters
    ----------
    selection
        Result of :func:`select_cells`.
    kept
        The output of :func:`assemble_selection`.

    Returns
    -------
    pandas.DataFrame
        Columns ``donor_id``, ``n_cells`` (input), ``passes_cutoff`` (rule 1),
        ``kept`` (after all rules) and ``n_cells_kept``; sorted by ``n_cells``.
    """
    per_donor = selection.cells_per_donor
    kept_cells = kept.obs[DONOR_KEY].astype(str).value_counts()
    table = pd.DataFrame(
        {
            "donor_id": per_donor.index.astype(str),
            "n_cells": per_donor.to_numpy(),
            "passes_cutoff": ~per_donor.index.isin(selection.donors_removed_cutoff),
            "n_cells_kept": kept_cells.reindex(per_donor.index, fill_value=0).to_numpy(),
        }
    )
    table.insert(3, "kept", table["n_cells_kept"] > 0)
    return table.sort_values(["n_cells", "donor_id"], kind="stable").reset_index(drop=True)


def plot_cells_per_donor(table: pd.DataFrame, *, cutoff: float) -> Any:
    """Bar chart of cells per donor, sorted, with the cut-off line.

    Parameters
    ----------
    table
        Output of :func:`donor_table`.
    cutoff
        The percentile cut-off (cells).

    Returns
    -------
    matplotlib.figure.Figure
        The figure (not attached to pyplot).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(max(6.0, min(16.0, 0.12 * len(table))), 4.0))
    ax = fig.add_subplot()
    colours = np.where(
        table["kept"], "tab:blue", np.where(table["passes_cutoff"], "tab:orange", "tab:red")
    )
    ax.bar(np.arange(len(table)), table["n_cells"], color=colours, width=1.0, linewidth=0)
    line = ax.axhline(cutoff, color="black", linestyle="--", linewidth=1)
    handles = [
        line,
        Patch(color="tab:blue", label="kept"),
        Patch(color="tab:orange", label="lacks a kept cell type"),
        Patch(color="tab:red", label="below the cut-off"),
    ]
    labels = [f"cut-off {cutoff:.1f} cells", "kept", "lacks a kept cell type", "below the cut-off"]
    ax.legend(handles, labels, loc="upper left", fontsize=8)
    ax.set_xlabel(f"donors, sorted by cells ({len(table)})")
    ax.set_ylabel("cells per donor")
    ax.set_xlim(-0.5, len(table) - 0.5)
    return fig
