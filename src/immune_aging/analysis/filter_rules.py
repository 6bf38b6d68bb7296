"""The rules of the prevalence filter (stage ``filter``), on ``obs`` alone.

:func:`select_cells` applies rules 1-3 of :mod:`immune_aging.analysis.filtering`
(donors below the cell-count cut-off, cell types too rare among donors, donors
lacking a kept cell type) and returns the :class:`CellSelection`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from immune_aging.errors import InputError

log = logging.getLogger(__name__)

DONOR_KEY = "donor_id"
CELL_TYPE_KEY = "cell_type"


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
