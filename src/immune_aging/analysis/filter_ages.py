"""The ages of what the prevalence filter removed (stage ``filter``).

Rules 2 and 3 of :mod:`immune_aging.analysis.filtering` can remove by age: a cell
type that thins out with age fails rule 2 in old donors first and goes whole, and
rule 3 drops the donors lacking a type, who then are mostly old. :func:`rule_ages`
reports the ages of what each rule removed against the rest, with a warning when
they differ.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from immune_aging.analysis.filter_rules import (
    CELL_TYPE_KEY,
    DONOR_KEY,
    CellSelection,
    _labels,
    cells_per_group,
)
from immune_aging.errors import InputError

log = logging.getLogger(__name__)


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
