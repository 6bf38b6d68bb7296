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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from immune_aging.errors import InputError
from immune_aging.selection import COLUMN, ROW, SELECTION_UNS

log = logging.getLogger(__name__)

DONOR_KEY = "donor_id"
CELL_TYPE_KEY = "cell_type"
#: obs columns carried into ``selection.h5ad``; the optional ones only when present
#: (the stage passes ``filter.keep_obs`` instead).
OBS_COLUMNS = ("donor_id", "cell_type", "development_stage", "sex")
OPTIONAL_OBS_COLUMNS = ("pool",)


@dataclass(frozen=True)
class CellSelection:
    """Outcome of the donor and cell-type rules (see the module docstring).

    Attributes
    ----------
    keep
        Boolean mask over the input cells: True for cells that pass every rule.
    cutoff
        The ``cutoff_percentile`` percentile of cells per donor (cells, unrounded).
    min_cells_per_donor
        ``floor(cutoff)``: donors with fewer cells are dropped by rule 1.
    cells_per_donor
        Cells per donor in the input, sorted by donor.
    donors_removed_cutoff
        Donors dropped by rule 1.
    cell_types_kept, cell_types_removed
        Cell types kept and dropped by rule 2.
    donors_removed_cell_types
        Donors dropped by rule 3.
    cells_removed
        Cells dropped by each rule: ``donor_cutoff`` (rule 1), ``cell_type_prevalence``
        (rule 2, including cells without a cell type) and ``donor_completeness``
        (rule 3).
    """

    keep: np.ndarray
    cutoff: float
    min_cells_per_donor: int
    cells_per_donor: pd.Series
    donors_removed_cutoff: list[str]
    cell_types_kept: list[str]
    cell_types_removed: list[str]
    donors_removed_cell_types: list[str]
    cells_removed: dict[str, int]


def _labels(obs: pd.DataFrame, key: str) -> pd.Series:
    return obs[key].astype("object").where(obs[key].notna(), None)


def cells_per_group(obs: pd.DataFrame, *, keys: Sequence[str]) -> pd.DataFrame | pd.Series:
    """Count cells per donor, or per (donor, cell type).

    Parameters
    ----------
    obs
        Cell annotations.
    keys
        One column name (cells per value) or two (a table: first key as rows,
        second as columns, zeros for absent combinations). Cells with a missing
        label are not counted.

    Returns
    -------
    pandas.Series or pandas.DataFrame
        Counts, labels as strings, sorted.
    """
    keys = list(keys)
    frame = pd.DataFrame({k: _labels(obs, k) for k in keys}).dropna()
    if len(keys) == 1:
        counts = frame.groupby(keys[0]).size()
        counts.index = counts.index.astype(str)
        return counts.sort_index().rename("n_cells")
    table = frame.groupby(keys).size().unstack(fill_value=0)
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    return table.sort_index().sort_index(axis=1)


def select_cells(
    obs: pd.DataFrame,
    *,
    cutoff_percentile: float,
    min_cells_per_celltype: int,
    percent_donors: float,
    prevalence: str = "cell_types",
) -> CellSelection:
    """Apply the donor and cell-type prevalence rules to cell annotations.

    Parameters
    ----------
    obs
        Cell annotations with ``donor_id`` and ``cell_type`` columns (not modified).
        Cells with a missing donor or cell type are dropped.
    cutoff_percentile
        Percentile (0-100) of cells per donor below which donors are dropped.
    min_cells_per_celltype
        Cells a donor needs of a cell type for it to count (rules 2 and 3).
    percent_donors
        Fraction (0-1] of donors that must reach ``min_cells_per_celltype`` for a
        cell type to be kept.
    prevalence
        ``cell_types``: rules 2 and 3 as above; ``samples``: neither (every cell
        type and every donor past the cut-off is kept).

    Returns
    -------
    CellSelection
        The kept-cell mask and what each rule removed.

    Raises
    ------
    InputError
        If a column is missing, or if the rules leave no cell type or no cell;
        the message names the parameters.
    """
    for key in (DONOR_KEY, CELL_TYPE_KEY):
        if key not in obs.columns:
            raise InputError(f"obs column {key!r} missing")
    per_donor = cells_per_group(obs, keys=[DONOR_KEY])
    if per_donor.empty:
        raise InputError(f"obs column {DONOR_KEY!r} holds no donor")
    cutoff = float(np.percentile(per_donor.to_numpy(), cutoff_percentile))
    min_cells_per_donor = math.floor(cutoff)
    donors_cut = per_donor.index[per_donor < min_cells_per_donor].tolist()
    donors = per_donor.index[per_donor >= min_cells_per_donor]

    raw_donor = _labels(obs, DONOR_KEY)
    donor = raw_donor.astype(str).where(raw_donor.notna(), None)
    ctype = _labels(obs, CELL_TYPE_KEY)
    in_donors = donor.isin(donors).to_numpy()
    typed = in_donors & ctype.notna().to_numpy()
    table = cells_per_group(obs.loc[typed], keys=[DONOR_KEY, CELL_TYPE_KEY])
    table = table.reindex(index=donors, fill_value=0)
    enough = table >= min_cells_per_celltype
    needed = len(donors) * percent_donors
    # a tolerance keeps e.g. 0.95 * 20 == 19 from failing on rounding
    prevalent = enough.sum(axis=0) >= needed - 1e-9
    if prevalence == "samples":
        prevalent[:] = True
        enough = enough | True
    elif prevalence != "cell_types":
        raise ValueError(f"unknown prevalence rule {prevalence!r}")
    kept_types = table.columns[prevalent].tolist()
    removed_types = table.columns[~prevalent].tolist()
    if not kept_types:
        raise InputError(
            f"filter.min_cells_per_celltype={min_cells_per_celltype} and "
            f"filter.percent_donors={percent_donors} keep no cell type: none has "
            f">= {min_cells_per_celltype} cells in >= {needed:g} of {len(donors)} donors"
        )
    complete = enough[kept_types].all(axis=1)
    donors_final = complete.index[complete]
    donors_incomplete = complete.index[~complete].tolist()
    if len(donors_final) == 0:
        raise InputError(
            f"filter.min_cells_per_celltype={min_cells_per_celltype} leaves no cell: "
            f"no donor has >= {min_cells_per_celltype} cells of every kept cell type "
            f"({len(kept_types)} types)"
        )
    in_types = in_donors & ctype.isin(kept_types).to_numpy()
    keep = in_types & donor.isin(donors_final).to_numpy()
    cells_removed = {
        "missing_donor": int(raw_donor.isna().sum()),
        "donor_cutoff": int(raw_donor.notna().sum() - in_donors.sum()),
        "cell_type_prevalence": int(in_donors.sum() - in_types.sum()),
        "donor_completeness": int(in_types.sum() - keep.sum()),
    }
    log.info(
        "cut-off %.1f cells per donor (percentile %g) drops %d donors; %d of %d cell "
        "types kept; %d donors lack a kept type; %d of %d cells kept",
        cutoff,
        cutoff_percentile,
        len(donors_cut),
        len(kept_types),
        table.shape[1],
        len(donors_incomplete),
        int(keep.sum()),
        len(keep),
    )
    return CellSelection(
        keep=keep,
        cutoff=cutoff,
        min_cells_per_donor=min_cells_per_donor,
        cells_per_donor=per_donor,
        donors_removed_cutoff=donors_cut,
        cell_types_kept=kept_types,
        cell_types_removed=removed_types,
        donors_removed_cell_types=donors_incomplete,
        cells_removed=cells_removed,
    )


#: Rules 2 and 3 warn when the ages they removed differ from the rest at this
#: two-sided Mann-Whitney p-value (both groups with at least 3 donors of known age).
AGE_WARNING_P = 0.01


def donor_ages(obs: pd.DataFrame) -> pd.Series | None:
    """Return each donor's age in years (censored ages at their bound), or None.

    Parameters
    ----------
    obs
        Cell annotations with ``donor_id`` and ``development_stage``.

    Returns
    -------
    pandas.Series or None
        Age per donor id (NaN when unknown); ``None`` when there is no
        ``development_stage`` column or a label cannot be read (the pseudobulk
        stage reports those).
    """
    from immune_aging.analysis.age import CENSOR_BOUND, parse_stages

    if "development_stage" not in obs.columns:
        return None
    first = pd.DataFrame(
        {
            "donor_id": _labels(obs, DONOR_KEY),
            "stage": obs["development_stage"].astype(object).to_numpy(),
        }
    ).dropna(subset=["donor_id"])
    first = first.drop_duplicates("donor_id")
    try:
        parsed = parse_stages(first["stage"], age_80_and_over=CENSOR_BOUND)
    except InputError:
        return None
    ages = pd.Series(parsed["age"].to_numpy(dtype=float), index=first["donor_id"].astype(str))
    return ages.sort_index()


def _compare(removed: pd.Series, rest: pd.Series) -> dict[str, Any]:
    """Mean ages of two groups of donors and a two-sided Mann-Whitney p-value."""
    from scipy.stats import mannwhitneyu

    a = removed.dropna().to_numpy(dtype=float)
    b = rest.dropna().to_numpy(dtype=float)
    p = None
    if len(a) >= 3 and len(b) >= 3 and np.ptp(np.concatenate([a, b])) > 0:
        p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return {
        "donors": len(removed),
        "mean_age": round(float(a.mean()), 2) if len(a) else None,
        "mean_age_rest": round(float(b.mean()), 2) if len(b) else None,
        "p_value": p,
    }


def rule_ages(
    obs: pd.DataFrame, selection: CellSelection, *, min_cells_per_celltype: int
) -> tuple[dict[str, Any], list[str]]:
    """Report the ages of what each rule removed, and warn when they differ from the rest.

    Rule 1: donors below the cut-off against those above. Rule 2: for each cell
    type removed, the donors lacking ``min_cells_per_celltype`` of its cells
    against the others (and the Spearman correlation of its share of a donor's
    cells with age). Rule 3: donors removed against donors kept. Censored ages
    count at their bound (80 for ``80 year-old and over``).

    Parameters
    ----------
    obs
        Cell annotations of the input (``donor_id``, ``cell_type``,
        ``development_stage``).
    selection
        Result of :func:`select_cells`.
    min_cells_per_celltype
        The minimum rule 2 applied.

    Returns
    -------
    report : dict
        ``donor_cutoff``, ``cell_type_prevalence`` (per removed type) and
        ``donor_completeness``: ``donors`` (removed), ``mean_age``,
        ``mean_age_rest`` and ``p_value``; empty when ages cannot be read.
    warnings : list of str
        One line per rule (and cell type) whose removed donors' ages differ at
        :data:`AGE_WARNING_P`.
    """
    ages = donor_ages(obs)
    if ages is None:
        return {}, []
    warnings = []
    cutoff = set(selection.donors_removed_cutoff)
    passed = [d for d in selection.cells_per_donor.index if d not in cutoff]
    report: dict[str, Any] = {
        "donor_cutoff": _compare(ages.reindex(sorted(cutoff)), ages.reindex(passed))
    }
    table = cells_per_group(obs, keys=[DONOR_KEY, CELL_TYPE_KEY]).reindex(
        index=passed, fill_value=0
    )
    per_type: dict[str, Any] = {}
    for ct in selection.cell_types_removed:
        counts = table[ct] if ct in table.columns else pd.Series(0, index=table.index)
        below = counts.index[counts < min_cells_per_celltype]
        rest = counts.index[counts >= min_cells_per_celltype]
        entry = _compare(ages.reindex(below), ages.reindex(rest))
        share = counts / table.sum(axis=1).clip(lower=1)
        known = ages.reindex(share.index).notna().to_numpy()
        rho = None
        if known.sum() >= 3 and share[known].nunique() > 1:
            from scipy.stats import spearmanr

            rho = round(float(spearmanr(share[known], ages.reindex(share.index)[known])[0]), 4)
        entry["share_age_spearman"] = rho
        per_type[ct] = entry
        if entry["p_value"] is not None and entry["p_value"] < AGE_WARNING_P:
            warnings.append(
                f"rule 2 removed cell type {ct!r}: the {entry['donors']} donors with fewer "
                f"than {min_cells_per_celltype} of its cells are aged {entry['mean_age']:.1f} "
                f"on average against {entry['mean_age_rest']:.1f} (Mann-Whitney p = "
                f"{entry['p_value']:.2g}; share-age Spearman {rho}): the rule removed it by "
                "age; filter.prevalence: samples keeps it"
            )
    report["cell_type_prevalence"] = per_type
    removed = set(selection.donors_removed_cell_types)
    kept = [d for d in passed if d not in removed]
    entry = _compare(ages.reindex(sorted(removed)), ages.reindex(kept))
    report["donor_completeness"] = entry
    if entry["p_value"] is not None and entry["p_value"] < AGE_WARNING_P:
        warnings.append(
            f"rule 3 removed {entry['donors']} donors lacking a kept cell type, aged "
            f"{entry['mean_age']:.1f} on average against {entry['mean_age_rest']:.1f} for "
            f"the donors kept (Mann-Whitney p = {entry['p_value']:.2g}): it removed donors "
            "by age; filter.prevalence: samples keeps them"
        )
    if report["donor_cutoff"]["p_value"] is not None and (
        report["donor_cutoff"]["p_value"] < AGE_WARNING_P
    ):
        d = report["donor_cutoff"]
        warnings.append(
            f"rule 1 removed {d['donors']} donors below the cut-off, aged {d['mean_age']:.1f} "
            f"on average against {d['mean_age_rest']:.1f} (Mann-Whitney p = "
            f"{d['p_value']:.2g})"
        )
    for line in warnings:
        log.warning("%s", line)
    return report, warnings


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
