"""The simulation design: everything decided before counts are drawn."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from immune_aging.synthetic.catalogue import BIO_NOISE, CELL_TYPES, CellType
from immune_aging.synthetic.cohort import cell_plan, donor_table
from immune_aging.synthetic.expression import gene_table, plant_effects, profiles

log = logging.getLogger(__name__)

#: The simulation presets (``data.synthetic.preset``).
PRESETS = ("default", "realistic")


@dataclass
class Design:
    """Everything decided before counts are drawn: genes, donors, cells, truth.

    Built by :func:`design_simulation`; read by :func:`simulate_donor`,
    :func:`simulate`, :func:`write_h5ad_incremental`, :func:`truth` and
    :func:`gene_set_library`.

    Attributes
    ----------
    seed
        Random seed.
    cell_types
        The simulated :class:`CellType` entries.
    var
        Gene table: index Ensembl-style IDs, column ``feature_name``.
    category
        Gene category per gene (``mt``, ``ribo``, ``hb``, ``receptor``, ``sex``,
        ``marker``, ``housekeeping``, ``generic``).
    profile
        Expected share of the library per (cell type, gene); rows sum to 1.
    theta
        Negative-binomial inverse dispersion per gene.
    sigma
        Donor-level biological noise per gene (natural-log scale).
    beta
        Planted log2 fold change per decade per (cell type, gene).
    donors
        Donor table: ``donor_id, age, sex, development_stage, pool, n_cells,
        library_factor``.
    obs
        Cell table in the CELLxGENE schema (index: cell barcodes).
    cell_donor
        Donor index per cell.
    cell_state
        0 normal, 1 dying, 2 RBC-contaminated, 3 doublet.
    cell_extra
        Target MT share (dying) or hemoglobin share (RBC) per cell; 0 otherwise.
    comp_cell, comp_type, comp_library
        One entry per simulated cell body: the droplet it lands in (a doublet
        has two), its cell-type index and its library size.
    gene_sets
        Planted sets: name -> ``{"direction", "cell_types", "genes"}`` (symbols).
    decoy_sets
        Sets without effect: name -> symbols.
    preset
        ``default`` or ``realistic`` (:mod:`immune_aging.synthetic.realistic`); the
        attributes below are set by the realistic preset only.
    age_effect_scale
        Factor applied to every planted age effect on expression (0: the null twin).
    shared_sigma
        Donor-level noise shared by all cell types of a donor, per gene (natural log).
    pool_effect
        Batch effect per (pool, gene) on log expression; pools in sorted order.
    program_loading, program_active
        Gene programs: loading of each gene on each program's donor-level factor
        (programs x genes, natural log per SD), and the cell types where a program
        acts (cell types x programs).
    blends
        Intermediate states: ``(label type, other type, weight on the label type)``;
        cell-body type ``len(cell_types) + i`` is blend ``i``.
    composition_trend
        Change of each cell type's log share per decade of age.
    null_types
        Cell types without any age effect.
    decoy_kinds
        Kind of each decoy set (``random``: drawn from expressed genes, overlapping
        planted ones at their background rate; ``program``: a gene program without
        age effect, whose genes co-vary; ``unplanted``: a planted set of a null twin).
    """

    seed: int
    cell_types: tuple[CellType, ...]
    var: pd.DataFrame
    category: np.ndarray
    profile: np.ndarray
    theta: np.ndarray
    sigma: np.ndarray
    beta: np.ndarray
    donors: pd.DataFrame
    obs: pd.DataFrame
    cell_donor: np.ndarray
    cell_state: np.ndarray
    cell_extra: np.ndarray
    comp_cell: np.ndarray
    comp_type: np.ndarray
    comp_library: np.ndarray
    gene_sets: dict[str, dict[str, Any]]
    decoy_sets: dict[str, list[str]]
    preset: str = "default"
    age_effect_scale: float = 1.0
    shared_sigma: np.ndarray | None = None
    pool_effect: np.ndarray | None = None
    program_loading: np.ndarray | None = None
    program_active: np.ndarray | None = None
    blends: tuple[tuple[int, int, float], ...] = ()
    composition_trend: np.ndarray | None = None
    null_types: tuple[int, ...] = ()
    decoy_kinds: dict[str, str] | None = None

    @property
    def n_cells(self) -> int:
        """Number of droplets (rows of ``X``)."""
        return len(self.obs)

    @property
    def n_genes(self) -> int:
        """Number of genes (columns of ``X``)."""
        return len(self.var)

    def donor_rows(self, donor: int) -> tuple[int, int]:
        """Return the ``[start, stop)`` rows of one donor's cells (they are contiguous)."""
        start = int(self.donors["first_row"].iloc[donor])
        return start, start + int(self.donors["n_cells"].iloc[donor])


def design_simulation(
    *,
    seed: int,
    n_donors: int,
    n_cell_types: int,
    cells_per_donor: int,
    n_genes: int,
    doublet_rate: float,
    dying_rate: float,
    rbc_rate: float,
    preset: str = "default",
    age_effect_scale: float = 1.0,
) -> Design:
    """Decide genes, donors, cells and planted effects of a simulation.

    Parameters
    ----------
    seed
        Random seed; the same arguments give the same design.
    n_donors
        Number of donors (at least 2).
    n_cell_types
        Number of cell types, 1 to 12, taken from :data:`CELL_TYPES` in order.
    cells_per_donor
        Mean droplets per donor.
    n_genes
        Number of genes (at least 500).
    doublet_rate
        Fraction of droplets that are doublets.
    dying_rate
        Fraction of singlets that are dying cells.
    rbc_rate
        Fraction of singlets contaminated with red-blood-cell RNA.
    preset
        ``default`` (a smoke test: large effects, the same in every aged cell type)
        or ``realistic`` (:mod:`immune_aging.synthetic.realistic`).
    age_effect_scale
        Factor applied to every planted age effect on expression; 0 gives the
        null twin of a design, whose planted gene sets become decoys (the
        realistic preset's composition still changes with age).

    Returns
    -------
    Design
        The plan; counts are drawn by :func:`simulate_donor`.
    """
    if not 1 <= n_cell_types <= len(CELL_TYPES):
        raise ValueError(f"n_cell_types must be 1..{len(CELL_TYPES)}, got {n_cell_types}")
    if n_donors < 2 or n_genes < 500 or cells_per_donor < 1:
        raise ValueError("need n_donors >= 2, n_genes >= 500 and cells_per_donor >= 1")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if not age_effect_scale >= 0:
        raise ValueError(f"age_effect_scale must be >= 0, got {age_effect_scale}")
    rng = np.random.default_rng([seed, 1])
    types = CELL_TYPES[:n_cell_types]
    rates = {"doublet_rate": doublet_rate, "dying_rate": dying_rate, "rbc_rate": rbc_rate}
    if preset == "realistic":
        from immune_aging.synthetic.realistic import realistic_design

        fields = realistic_design(
            types,
            rng,
            n_donors=n_donors,
            cells_per_donor=cells_per_donor,
            n_genes=n_genes,
            age_effect_scale=age_effect_scale,
            **rates,
        )
    else:
        var, category = gene_table(n_genes, rng)
        profile, theta = profiles(var, category, types, rng)
        sigma = np.clip(BIO_NOISE * np.exp(rng.normal(0.0, 0.35, n_genes)), 0.08, 0.8)
        gene_sets, decoy_sets, beta = plant_effects(var, category, profile, types, rng)
        donors = donor_table(n_donors, cells_per_donor, rng)
        cells = cell_plan(donors, types, rng, **rates)
        fields = dict(
            var=var,
            category=category,
            profile=profile,
            theta=theta,
            sigma=sigma,
            beta=beta * age_effect_scale,
            donors=donors,
            gene_sets=gene_sets,
            decoy_sets=decoy_sets,
            **cells,
        )
    if age_effect_scale == 0:  # the null twin: nothing is planted
        unplanted = {name: list(info["genes"]) for name, info in fields["gene_sets"].items()}
        kinds = fields.get("decoy_kinds") or dict.fromkeys(fields["decoy_sets"], "random")
        fields["decoy_kinds"] = {**dict.fromkeys(unplanted, "unplanted"), **kinds}
        fields["decoy_sets"] = {**unplanted, **fields["decoy_sets"]}
        fields["gene_sets"] = {}
    design = Design(
        seed=seed,
        cell_types=types,
        preset=preset,
        age_effect_scale=float(age_effect_scale),
        **fields,
    )
    log.info(
        "simulation design: %d donors, %d cells, %d genes, %d cell types",
        n_donors,
        design.n_cells,
        n_genes,
        n_cell_types,
    )
    return design
