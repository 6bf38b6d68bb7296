"""The cell side of a design: donors, their cells and the CELLxGENE obs table."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from immune_aging.synthetic.catalogue import (
    LIBRARY_SDLOG,
    MEDIAN_LIBRARY,
    REFERENCE_AGE,
    CellType,
)

#: Cells per donor vary log-normally with this spread (natural log).
_DONOR_SIZE_SDLOG = 0.3
#: Concentration of the per-donor Dirichlet cell-type composition.
_COMPOSITION_CONCENTRATION = 300.0


def donor_table(
    n_donors: int,
    cells_per_donor: int,
    rng: np.random.Generator,
    *,
    donors_per_pool: int = 8,
    age_sampler: Callable[[np.random.Generator, int], np.ndarray] | None = None,
) -> pd.DataFrame:
    """Draw the donors: ages, sexes, stage strings, pools and sizes.

    Parameters
    ----------
    n_donors
        Number of donors.
    cells_per_donor
        Mean droplets per donor.
    rng
        The design's random stream.
    donors_per_pool
        Donors multiplexed per 10x pool (pools hold this many, give or take one).
    age_sampler
        Draws ``n`` integer ages (years, as floats) from ``rng``; ``None``: uniform
        20-90 years.

    Returns
    -------
    pandas.DataFrame
        ``donor_id, age, sex, development_stage, pool, n_cells, library_factor,
        first_row``, ordered by pool then donor; ``first_row`` is the donor's
        first row in ``obs`` (each donor's cells are contiguous).
    """
    width = max(3, len(str(n_donors)))
    ids = [f"D{i + 1:0{width}d}" for i in range(n_donors)]
    if age_sampler is None:
        age = rng.integers(20, 91, size=n_donors).astype(float)
    else:
        age = np.asarray(age_sampler(rng, n_donors), dtype=float)
    sex = np.where(rng.random(n_donors) < 0.5, "female", "male").astype(object)
    if len(set(sex)) == 1:
        sex[-1] = "male" if sex[0] == "female" else "female"
    n_unknown = max(1, round(0.04 * n_donors)) if n_donors >= 6 else 0
    unknown = np.zeros(n_donors, dtype=bool)
    unknown[rng.choice(n_donors, size=n_unknown, replace=False)] = True
    known = np.flatnonzero(~unknown)
    if n_donors >= 10 and not (age[known] >= 80).any():
        age[known[np.argmax(age[known])]] = float(rng.integers(80, 91))
    form = rng.integers(0, 2, size=n_donors)
    young = [i for i in known if age[i] < 80]
    if len(young) >= 2:  # both spellings always occur
        form[young[0]], form[young[1]] = 0, 1
    stage = []
    for i in range(n_donors):
        if unknown[i]:
            stage.append("unknown")
        elif age[i] >= 80:
            stage.append("80 year-old and over stage")
        elif form[i] == 0:
            stage.append(f"{int(age[i])}-year-old stage")
        else:
            stage.append(f"{int(age[i])}-year-old human stage")
    n_pools = max(1, math.ceil(n_donors / donors_per_pool))
    pool_of = np.empty(n_donors, dtype=int)
    for p, members in enumerate(np.array_split(rng.permutation(n_donors), n_pools)):
        pool_of[members] = p
    pwidth = max(2, len(str(n_pools)))
    size = cells_per_donor * np.exp(
        rng.normal(-(_DONOR_SIZE_SDLOG**2) / 2, _DONOR_SIZE_SDLOG, n_donors)
    )
    donors = pd.DataFrame(
        {
            "donor_id": ids,
            "age": age,
            "sex": sex,
            "development_stage": stage,
            "pool": [f"pool_{p + 1:0{pwidth}d}" for p in pool_of],
            "n_cells": np.maximum(np.round(size).astype(int), 10),
            "library_factor": np.exp(rng.normal(0.0, 0.15, n_donors)),
        }
    )
    # rows are ordered by pool, then donor: each donor's cells are contiguous
    donors = donors.iloc[np.lexsort((np.arange(n_donors), pool_of))].reset_index(drop=True)
    donors["first_row"] = np.concatenate([[0], np.cumsum(donors["n_cells"].to_numpy())[:-1]])
    return donors


def _blend_bodies(
    label: np.ndarray,
    blends: Sequence[tuple[int, int, float]],
    rate: float,
    n_types: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Turn a share ``rate`` of the cells of blended types into intermediate bodies."""
    body = label.copy()
    for t in sorted({b[0] for b in blends}):
        options = [n_types + i for i, b in enumerate(blends) if b[0] == t]
        cells = np.flatnonzero(label == t)
        chosen = cells[rng.random(len(cells)) < rate]
        body[chosen] = rng.choice(options, size=len(chosen))
    return body


def _barcodes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` unique 16-nt 10x-style barcodes."""
    draws = rng.integers(0, 4**16, size=n + n // 100 + 16, dtype=np.int64)
    _, first = np.unique(draws, return_index=True)
    draws = draws[np.sort(first)][:n]
    digits = (draws[:, None] >> (2 * np.arange(15, -1, -1, dtype=np.int64))) & 3
    letters = np.array(list("ACGT"))[digits]
    return letters.view("<U16").ravel()


def cell_plan(
    donors: pd.DataFrame,
    types: tuple[CellType, ...],
    rng: np.random.Generator,
    *,
    doublet_rate: float,
    dying_rate: float,
    rbc_rate: float,
    concentration: float = _COMPOSITION_CONCENTRATION,
    composition_trend: np.ndarray | None = None,
    homotypic_doublets: bool = False,
    blends: Sequence[tuple[int, int, float]] = (),
    blend_rate: float = 0.0,
) -> dict[str, Any]:
    """Plan the cells: types, library sizes, doublets, dying and RBC cells, obs.

    Parameters
    ----------
    donors
        The donors, from :func:`donor_table`.
    types
        The simulated cell types.
    rng
        The design's random stream.
    doublet_rate, dying_rate, rbc_rate
        See :func:`~immune_aging.synthetic.design_simulation`.
    concentration
        Of the per-donor Dirichlet composition around the mean shares (higher:
        less variation between donors).
    composition_trend
        Change of each type's log share per decade of age, from the reference age
        (:data:`~immune_aging.synthetic.catalogue.REFERENCE_AGE`); ``None``: none.
    homotypic_doublets
        Whether a doublet's partner may be of its own type (drawn from the donor's
        composition); ``False`` redraws such partners (heterotypic doublets only).
    blends
        Intermediate states: ``(label type, other type, weight on the label type)``.
        Cell body ``len(types) + i`` has the mixed profile of blend ``i`` and is
        annotated as its label type.
    blend_rate
        Share of the cells of a type named in ``blends`` that are intermediate.

    Returns
    -------
    dict
        The cell fields of :class:`~immune_aging.synthetic.Design`: ``obs,
        cell_donor, cell_state, cell_extra, comp_cell, comp_type, comp_library``.
    """
    freq = np.array([ct.frequency for ct in types])
    freq /= freq.sum()
    lib_type = np.array([ct.library for ct in types])
    n_types = len(types)
    comp_cell, comp_type, comp_lib = [], [], []
    cell_donor, cell_state, cell_extra, cell_type = [], [], [], []
    for d, row in enumerate(donors.itertuples(index=False)):
        n = int(row.n_cells)
        first = int(row.first_row)
        mean_share = freq
        if composition_trend is not None:
            mean_share = freq * np.exp(composition_trend * (row.age - REFERENCE_AGE) / 10.0)
            mean_share = mean_share / mean_share.sum()
        share = rng.dirichlet(concentration * mean_share)
        n_dbl = int(rng.binomial(n, doublet_rate)) if n_types > 1 else 0
        t1 = rng.choice(n_types, size=n, p=share)
        t2 = np.full(n, -1)
        doublet = np.zeros(n, dtype=bool)
        doublet[rng.choice(n, size=n_dbl, replace=False)] = True
        partner = rng.choice(n_types, size=n_dbl, p=share)
        for _ in range(0 if homotypic_doublets else 100):  # heterotypic: redraw partners
            same = partner == t1[doublet]
            if not same.any():
                break
            partner[same] = rng.choice(n_types, size=int(same.sum()), p=share)
        t2[doublet] = partner
        lib1 = MEDIAN_LIBRARY * row.library_factor * lib_type[t1]
        lib1 = lib1 * np.exp(rng.normal(0.0, LIBRARY_SDLOG, n))
        lib2 = MEDIAN_LIBRARY * row.library_factor * lib_type[np.maximum(t2, 0)]
        lib2 = lib2 * np.exp(rng.normal(0.0, LIBRARY_SDLOG, n))
        state = np.where(doublet, 3, 0)
        extra = np.zeros(n)
        singles = rng.permutation(np.flatnonzero(~doublet))
        n_dying = int(rng.binomial(len(singles), dying_rate))
        n_rbc = int(rng.binomial(len(singles) - n_dying, rbc_rate))
        dying = singles[:n_dying]
        rbc = singles[n_dying : n_dying + n_rbc]
        state[dying] = 1
        extra[dying] = rng.uniform(0.3, 0.6, n_dying)
        lib1[dying] *= rng.uniform(0.25, 0.6, n_dying)
        state[rbc] = 2
        extra[rbc] = rng.uniform(0.08, 0.35, n_rbc)
        rows = first + np.arange(n)
        body1 = _blend_bodies(t1, blends, blend_rate, n_types, rng) if blends else t1
        comp_cell += [rows, rows[doublet]]
        comp_type += [body1, t2[doublet]]
        comp_lib += [lib1, lib2[doublet]]
        cell_donor.append(np.full(n, d))
        cell_state.append(state)
        cell_extra.append(extra)
        cell_type.append(t1)
    comp_cell_a = np.concatenate(comp_cell)
    by_cell = np.argsort(comp_cell_a, kind="stable")  # a donor's bodies are contiguous
    cell_donor_a = np.concatenate(cell_donor)
    n_cells = len(cell_donor_a)
    pool_codes = pd.Categorical(donors["pool"]).codes[cell_donor_a] + 1
    index = pd.Index(
        np.char.add(np.char.add(_barcodes(n_cells, rng), "-"), pool_codes.astype(str)).astype(
            object
        )
    )
    obs = _obs(donors, types, cell_donor_a, np.concatenate(cell_type), index)
    return {
        "obs": obs,
        "cell_donor": cell_donor_a,
        "cell_state": np.concatenate(cell_state).astype(np.int8),
        "cell_extra": np.concatenate(cell_extra),
        "comp_cell": comp_cell_a[by_cell],
        "comp_type": np.concatenate(comp_type)[by_cell],
        "comp_library": np.concatenate(comp_lib)[by_cell],
    }


def _obs(
    donors: pd.DataFrame,
    types: tuple[CellType, ...],
    cell_donor: np.ndarray,
    cell_type: np.ndarray,
    index: pd.Index,
) -> pd.DataFrame:
    """Build the CELLxGENE-style obs table."""

    def cat(codes: np.ndarray, categories: list[str]) -> pd.Categorical:
        return pd.Categorical.from_codes(codes, categories=categories)

    def donor_cat(column: str) -> pd.Categorical:
        values = donors[column].astype(str)
        cats = sorted(set(values))
        codes = pd.Categorical(values, categories=cats).codes
        return cat(codes[cell_donor], cats)

    def constant(value: str) -> pd.Categorical:
        return cat(np.zeros(len(cell_donor), dtype=np.int8), [value])

    sex = donor_cat("sex")
    sex_term = {"female": "PATO:0000383", "male": "PATO:0000384", "unknown": "unknown"}
    obs = pd.DataFrame(
        {
            "donor_id": donor_cat("donor_id"),
            "pool": donor_cat("pool"),
            "cell_type": cat(cell_type, [ct.label for ct in types]),
            "cell_type_ontology_term_id": cat(cell_type, [ct.ontology_id for ct in types]),
            "development_stage": donor_cat("development_stage"),
            "sex": sex,
            "sex_ontology_term_id": sex.rename_categories([sex_term[s] for s in sex.categories]),
            "assay": constant("10x 3' v2"),
            "assay_ontology_term_id": constant("EFO:0009899"),
            "tissue": constant("blood"),
            "tissue_ontology_term_id": constant("UBERON:0000178"),
            "disease": constant("normal"),
            "disease_ontology_term_id": constant("PATO:0000461"),
            "is_primary_data": np.ones(len(cell_donor), dtype=bool),
        },
        index=index,
    )
    return obs
