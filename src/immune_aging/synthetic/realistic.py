"""The ``realistic`` preset: OneK1K-like effect sizes and nuisance structure.

The default preset is a smoke test: every planted gene changes by 0.2-0.4 log2
per decade, the same in every aged cell type, and nothing else varies with age.
This preset is meant as evidence about power and calibration instead:

- **Age effects** per (cell type, gene), heavy-tailed: ``|log2 fold change per
  decade|`` is log-normal with median :data:`EFFECT_MEDIAN` (about 90 % of them
  under 0.1, about 1 % over 0.2, capped at :data:`EFFECT_CAP`). An age gene is
  shared by the aged cell types (each with its own multiplier, and absent from
  some), specific to one aged type, or specific to a type without a broad age
  program. One cell type (:data:`NULL_TYPES`) has no age effect at all.
- **Gene programs**: donor-level factors shared by gene modules, so that the
  genes of a module co-vary across donors; some programs drift with age
  (:data:`AGE_PROGRAM_SHARE`), the rest are pure nuisance.
- **Pools**: donors nested in 10x pools of :data:`DONORS_PER_POOL` with a batch
  effect per (pool, gene) on log expression and a pool-level library factor.
- **Donor noise** per (donor, cell type, gene) as in the default preset, plus a
  part shared by all cell types of a donor.
- **Composition** changes with age (:data:`COMPOSITION_TREND`): the naive CD4 T
  share falls; NK shares rise. Donors vary more around the mean composition.
- **Doublets** at ``data.synthetic.doublet_rate`` (1-3 % is realistic after
  genetic demultiplexing); partners are drawn from the donor's composition, so a
  share of them (~15-20 %) is homotypic.
- **Intermediate states** between naive and central memory CD4 T cells
  (:data:`BLENDS`), annotated as the nearer type.
- **Markers** have a background 10x higher than in the default preset.
- **Gene sets** mix planted and unplanted genes; decoys are random sets of
  expressed genes (overlapping planted genes at their background rate) and the
  gene programs without age effect.

Sources of the numbers
----------------------
- Share of genes with an age effect: :data:`AGE_GENE_SHARE` = 12.5 %, as Peters
  et al. 2015 (Nat Commun 6:8570) called 1,497 of 11,908 genes (12.6 %)
  age-associated in whole blood. That it took 14,983 people says the effects are
  small; the effect-size distribution itself is an assumption matching that
  (bulk well under 0.1 log2 per decade, a few genes up to ~0.3), not a fit.
- Pools of about 14 donors: OneK1K (Yazar et al. 2022, Science 376:eabf3041)
  multiplexed its 981 donors about 14 per 10x pool. Pool effect sizes are assumed.
- Naive T cells thin out with age (Yazar et al. 2022 and flow-cytometry studies);
  the magnitudes of :data:`COMPOSITION_TREND` are assumed.
- Ages: OneK1K spans 19-97 years and is older-skewed; :func:`sample_ages` draws a
  mixture (a quarter uniform 19-50, the rest normal around 68) so that about 10 %
  are 80 or older and get the censored label ``80 year-old and over stage``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from immune_aging.synthetic.catalogue import (
    BIO_NOISE,
    MEDIAN_LIBRARY,
    CellType,
)
from immune_aging.synthetic.cohort import cell_plan, donor_table
from immune_aging.synthetic.expression import gene_table, profiles

#: Share of expressed generic genes with an age effect in at least one cell type.
AGE_GENE_SHARE = 0.125
#: Median |log2 fold change per decade| of an age effect, and its log-normal spread.
EFFECT_MEDIAN = 0.035
EFFECT_SDLOG = 0.8
#: Largest |log2 fold change per decade| of an individual effect.
EFFECT_CAP = 0.3
#: How an age gene spreads over cell types: shared by the aged types, specific to
#: one aged type, or specific to one type without a broad age program.
PATTERN_SHARES = {"shared": 0.5, "specific": 0.35, "other": 0.15}
#: A shared effect is absent from each aged type with this probability...
SHARED_ABSENT = 0.25
#: ...and otherwise scaled per type by a log-normal factor of this spread.
SHARED_SDLOG = 0.35
#: A gene gets an effect in a type only where it is expressed at this mean (UMIs per cell).
MIN_EXPRESSED = 0.02
#: Cell types (keys) with a broad age program (shared effects): the default preset's
#: aged types plus the naive CD4 T cells that also thin out with age.
AGED_TYPES = ("cm_cd4", "naive_cd4", "cd8", "naive_b", "cd14_mono", "memory_b")
#: Cell types without any age effect (the specificity control).
NULL_TYPES = ("nk",)
#: Change of log share per decade of age, by cell-type key (others: 0).
COMPOSITION_TREND = {"naive_cd4": -0.25, "nk": 0.08, "cd56dim_nk": 0.08, "cm_cd4": 0.04}
#: Dirichlet concentration of the donor composition (default preset: 300).
COMPOSITION_CONCENTRATION = 60.0
#: Donors per 10x pool.
DONORS_PER_POOL = 14
#: Median SD over pools of a gene's pool effect (natural log), and its spread over genes.
POOL_EFFECT_SD = 0.1
#: SD of the pool-level library factor (natural log).
POOL_LIBRARY_SD = 0.15
#: Median SD of the donor noise shared by a donor's cell types (natural log).
SHARED_NOISE = 0.15
#: Gene programs: one per this many generic genes (at least 4, at most 24), of 15-40
#: genes, loading ~0.3 (natural log per SD of the program's donor factor).
GENES_PER_PROGRAM = 100
PROGRAM_LOADING = 0.3
#: Share of programs whose donor factor drifts with age, and the drift (SD per decade).
AGE_PROGRAM_SHARE = 0.25
AGE_PROGRAM_DRIFT = (0.05, 0.12)
#: Intermediate states: (label, other, weight on the label) by cell-type key.
BLENDS = (
    ("cm_cd4", "naive_cd4", 0.6),
    ("cm_cd4", "naive_cd4", 0.75),
    ("naive_cd4", "cm_cd4", 0.6),
    ("naive_cd4", "cm_cd4", 0.75),
)
#: Share of the cells of a blended type that are intermediate.
BLEND_RATE = 0.15
#: Background share of a marker gene in the types that do not express it (default 2e-6).
MARKER_BACKGROUND = 2e-5
#: Planted gene sets: planted genes per set, and their share of the set.
SET_PLANTED = (8, 16)
SET_PLANTED_SHARE = (0.4, 0.6)
#: A planted set counts as planted in a cell type where its genes' mean effect has the
#: set's sign and at least this size (log2 per decade).
SET_MIN_MEAN_EFFECT = 0.01
#: Random decoy sets, and their size range (log-uniform).
N_RANDOM_DECOYS = 8
DECOY_SIZE = (15, 150)


def sample_ages(rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` integer ages (years): a quarter uniform 19-50, the rest N(68, 11), 19-97.

    Parameters
    ----------
    rng
        The design's random stream.
    n
        Number of donors.

    Returns
    -------
    numpy.ndarray
        Ages as floats.
    """
    young = rng.random(n) < 0.25
    age = np.where(young, rng.uniform(19, 51, n), rng.normal(68.0, 11.0, n))
    return np.clip(np.floor(age), 19, 97)


def _expressed(profile: np.ndarray, types: tuple[CellType, ...]) -> np.ndarray:
    """Return expected UMIs per cell per (cell type, gene) at the type's median library."""
    lib = np.array([[ct.library] for ct in types])
    return profile * MEDIAN_LIBRARY * lib


def plant_realistic_effects(
    category: np.ndarray,
    profile: np.ndarray,
    types: tuple[CellType, ...],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the individual age effects per (cell type, gene).

    Parameters
    ----------
    category
        Gene categories (effects go to ``generic`` genes only).
    profile
        Cell-type profiles.
    types
        The simulated cell types.
    rng
        The design's random stream.

    Returns
    -------
    beta : numpy.ndarray
        log2 fold change per decade per (cell type, gene).
    pattern : numpy.ndarray
        Per gene: ``""`` (no effect), ``shared``, ``specific`` or ``other``.
    """
    n_types, n_genes = profile.shape
    keys = [ct.key for ct in types]
    aged = [t for t, k in enumerate(keys) if k in AGED_TYPES]
    other = [t for t, k in enumerate(keys) if k not in AGED_TYPES and k not in NULL_TYPES]
    expressed = _expressed(profile, types) >= MIN_EXPRESSED
    generic = category == "generic"
    beta = np.zeros((n_types, n_genes))
    pattern = np.full(n_genes, "", dtype=object)
    if not aged:
        return beta, pattern
    candidates = np.flatnonzero(generic & expressed[aged].any(axis=0))
    n_age = round(AGE_GENE_SHARE * len(candidates))
    genes = np.sort(rng.choice(candidates, size=n_age, replace=False))
    names = list(PATTERN_SHARES)
    kinds = rng.choice(names, size=n_age, p=list(PATTERN_SHARES.values()))
    size = np.minimum(np.exp(rng.normal(math.log(EFFECT_MEDIAN), EFFECT_SDLOG, n_age)), EFFECT_CAP)
    sign = np.where(rng.random(n_age) < 0.5, 1.0, -1.0)
    for g, kind, magnitude, s in zip(genes, kinds, size, sign, strict=True):
        where = [t for t in aged if expressed[t, g]]
        if kind == "other":
            elsewhere = [t for t in other if expressed[t, g]]
            where, kind = (elsewhere, "other") if elsewhere else (where, "specific")
        if not where:
            continue
        if kind == "shared":
            present = rng.random(len(where)) >= SHARED_ABSENT
            present[rng.integers(len(where))] = True
            factor = np.exp(rng.normal(0.0, SHARED_SDLOG, len(where)))
            for t, on, f in zip(where, present, factor, strict=True):
                if on:
                    beta[t, g] = s * min(magnitude * f, EFFECT_CAP)
        else:
            beta[where[rng.integers(len(where))], g] = s * magnitude
        pattern[g] = kind
    return beta, pattern


def gene_programs(
    category: np.ndarray,
    profile: np.ndarray,
    types: tuple[CellType, ...],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the gene programs: modules of co-varying genes, some drifting with age.

    Parameters
    ----------
    category, profile, types, rng
        As in :func:`plant_realistic_effects`.

    Returns
    -------
    loading : numpy.ndarray
        Programs x genes, natural log per SD of the program's donor factor (0 for
        genes outside the module).
    active : numpy.ndarray
        Cell types x programs: where a program acts (never an age program in a
        null type).
    drift : numpy.ndarray
        Per program, its donor factor's change per decade of age (SD); 0 for most.
    """
    n_types, n_genes = profile.shape
    keys = [ct.key for ct in types]
    expressed = np.flatnonzero(
        (category == "generic") & (_expressed(profile, types) >= MIN_EXPRESSED).any(axis=0)
    )
    n_programs = int(np.clip(int((category == "generic").sum()) // GENES_PER_PROGRAM, 4, 24))
    loading = np.zeros((n_programs, n_genes))
    active = np.zeros((n_types, n_programs), dtype=bool)
    drift = np.zeros(n_programs)
    n_age = max(1, round(AGE_PROGRAM_SHARE * n_programs))
    lineages = sorted({ct.lineage for ct in types})
    null = np.array([k in NULL_TYPES for k in keys])
    for k in range(n_programs):
        size = min(int(rng.integers(15, 41)), len(expressed))
        members = rng.choice(expressed, size=size, replace=False)
        loading[k, members] = np.maximum(rng.normal(PROGRAM_LOADING, 0.08, size), 0.1)
        if rng.random() < 0.5:
            active[:, k] = True
        else:
            lineage = lineages[rng.integers(len(lineages))]
            active[:, k] = [ct.lineage == lineage for ct in types]
        if k < n_age:
            drift[k] = rng.choice([-1.0, 1.0]) * rng.uniform(*AGE_PROGRAM_DRIFT)
            active[null, k] = False
            if not active[:, k].any():
                active[~null, k] = True
    return loading, active, drift


def _set_cell_types(
    genes: np.ndarray, beta: np.ndarray, sign: float, labels: list[str]
) -> list[str]:
    mean = beta[:, genes].mean(axis=1) * sign
    return [labels[t] for t in np.flatnonzero(mean >= SET_MIN_MEAN_EFFECT)]


def realistic_gene_sets(
    symbols: np.ndarray,
    category: np.ndarray,
    profile: np.ndarray,
    types: tuple[CellType, ...],
    beta: np.ndarray,
    pattern: np.ndarray,
    loading: np.ndarray,
    drift: np.ndarray,
    rng: np.random.Generator,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]], dict[str, str]]:
    """Build the gene-set library: planted sets, age programs and decoys.

    Planted sets ``SIM_AGE_{UP,DOWN}_{1,2}`` hold shared age genes of one sign
    mixed with genes without effect; ``SIM_PROGRAM_AGE_<k>`` are the programs
    that drift with age. Decoys: ``SIM_DECOY_<k>`` random sets of expressed
    genes, and ``SIM_PROGRAM_<k>`` the programs without age drift.

    Parameters
    ----------
    symbols, category, profile, types
        Genes and profiles.
    beta
        Total age effects (individual and program).
    pattern
        From :func:`plant_realistic_effects`.
    loading, drift
        From :func:`gene_programs`.
    rng
        The design's random stream.

    Returns
    -------
    gene_sets : dict
        Planted sets: name -> ``{"direction", "cell_types", "genes"}``, kept only
        where some cell type carries the set's signal.
    decoy_sets : dict
        Name -> symbols.
    decoy_kinds : dict
        Name -> ``random`` or ``program``.
    """
    labels = [ct.label for ct in types]
    expressed = (category == "generic") & (_expressed(profile, types) >= MIN_EXPRESSED).any(axis=0)
    no_effect = np.flatnonzero(expressed & ~np.any(beta != 0, axis=0))
    gene_sets: dict[str, dict[str, Any]] = {}
    used: set[int] = set()
    for direction, sign in (("up", 1.0), ("down", -1.0)):
        shared = [
            g
            for g in np.flatnonzero(pattern == "shared")
            if np.sign(beta[:, g][beta[:, g] != 0]).mean() == sign
        ]
        for k in (1, 2):
            free = np.array([g for g in shared if g not in used], dtype=np.int64)
            n_planted = min(int(rng.integers(SET_PLANTED[0], SET_PLANTED[1] + 1)), len(free))
            if n_planted < 3:
                continue
            planted = rng.choice(free, size=n_planted, replace=False)
            used |= set(planted.tolist())
            share = rng.uniform(*SET_PLANTED_SHARE)
            n_fill = min(round(n_planted * (1 - share) / share), len(no_effect))
            filler = rng.choice(no_effect, size=n_fill, replace=False)
            genes = np.sort(np.concatenate([planted, filler]))
            where = _set_cell_types(genes, beta, sign, labels)
            if where:
                gene_sets[f"SIM_AGE_{direction.upper()}_{k}"] = {
                    "direction": direction,
                    "cell_types": where,
                    "genes": [str(s) for s in symbols[genes]],
                }
    decoys: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    for k in range(len(drift)):
        genes = np.sort(np.flatnonzero(loading[k]))
        if drift[k] != 0:
            sign = float(np.sign(drift[k]))
            where = _set_cell_types(genes, beta, sign, labels)
            if where:
                gene_sets[f"SIM_PROGRAM_AGE_{k + 1:02d}"] = {
                    "direction": "up" if sign > 0 else "down",
                    "cell_types": where,
                    "genes": [str(s) for s in symbols[genes]],
                }
                continue
        name = f"SIM_PROGRAM_{k + 1:02d}"
        decoys[name] = [str(s) for s in symbols[genes]]
        kinds[name] = "program"
    pool = np.flatnonzero(expressed)
    for k in range(N_RANDOM_DECOYS):
        size = round(float(np.exp(rng.uniform(np.log(DECOY_SIZE[0]), np.log(DECOY_SIZE[1])))))
        genes = np.sort(rng.choice(pool, size=min(size, len(pool) // 2), replace=False))
        name = f"SIM_DECOY_{k + 1:02d}"
        decoys[name] = [str(s) for s in symbols[genes]]
        kinds[name] = "random"
    return gene_sets, decoys, kinds


def realistic_design(
    types: tuple[CellType, ...],
    rng: np.random.Generator,
    *,
    n_donors: int,
    cells_per_donor: int,
    n_genes: int,
    doublet_rate: float,
    dying_rate: float,
    rbc_rate: float,
    age_effect_scale: float,
) -> dict[str, Any]:
    """Draw every field of a realistic :class:`~immune_aging.synthetic.Design`.

    Parameters
    ----------
    types
        The simulated cell types.
    rng
        The design's random stream.
    n_donors, cells_per_donor, n_genes, doublet_rate, dying_rate, rbc_rate
        See :func:`~immune_aging.synthetic.design_simulation`.
    age_effect_scale
        Factor on every age effect on expression (individual and programs). The
        composition keeps changing with age in a null twin: the null hypothesis of
        DE is that expression within a cell type does not change, whatever the
        composition does.

    Returns
    -------
    dict
        Keyword arguments of :class:`~immune_aging.synthetic.Design` except
        ``seed``, ``cell_types``, ``preset`` and ``age_effect_scale``.
    """
    keys = [ct.key for ct in types]
    var, category = gene_table(n_genes, rng)
    profile, theta = profiles(var, category, types, rng, background=MARKER_BACKGROUND)
    sigma = np.clip(BIO_NOISE * np.exp(rng.normal(0.0, 0.35, n_genes)), 0.08, 0.8)
    shared_sigma = np.clip(SHARED_NOISE * np.exp(rng.normal(0.0, 0.3, n_genes)), 0.03, 0.5)
    individual, pattern = plant_realistic_effects(category, profile, types, rng)
    loading, active, drift = gene_programs(category, profile, types, rng)
    # a program drifting by `drift` SD per decade moves its genes by loading * drift
    program_beta = (active.astype(float) * drift[None, :]) @ loading / math.log(2.0)
    beta = individual + program_beta
    symbols = var["feature_name"].astype(str).to_numpy()
    gene_sets, decoy_sets, decoy_kinds = realistic_gene_sets(
        symbols, category, profile, types, beta, pattern, loading, drift, rng
    )
    donors = donor_table(
        n_donors, cells_per_donor, rng, donors_per_pool=DONORS_PER_POOL, age_sampler=sample_ages
    )
    pools = sorted(set(donors["pool"]))
    pool_of = pd.Categorical(donors["pool"], categories=pools).codes
    pool_library = np.exp(rng.normal(0.0, POOL_LIBRARY_SD, len(pools)))
    donors["library_factor"] = donors["library_factor"] * pool_library[pool_of]
    pool_sd = np.clip(POOL_EFFECT_SD * np.exp(rng.normal(0.0, 0.5, n_genes)), 0.02, 0.4)
    pool_effect = rng.normal(0.0, 1.0, (len(pools), n_genes)) * pool_sd[None, :]
    trend = np.array([COMPOSITION_TREND.get(k, 0.0) for k in keys])  # kept by null twins
    index = {k: t for t, k in enumerate(keys)}
    blends = tuple((index[a], index[b], w) for a, b, w in BLENDS if a in index and b in index)
    cells = cell_plan(
        donors,
        types,
        rng,
        doublet_rate=doublet_rate,
        dying_rate=dying_rate,
        rbc_rate=rbc_rate,
        concentration=COMPOSITION_CONCENTRATION,
        composition_trend=trend,
        homotypic_doublets=True,
        blends=blends,
        blend_rate=BLEND_RATE,
    )
    return dict(
        var=var,
        category=category,
        profile=profile,
        theta=theta,
        sigma=sigma,
        beta=beta * age_effect_scale,
        donors=donors,
        gene_sets=gene_sets,
        decoy_sets=decoy_sets,
        decoy_kinds=decoy_kinds,
        shared_sigma=shared_sigma,
        pool_effect=pool_effect,
        program_loading=loading,
        program_active=active,
        blends=blends,
        composition_trend=trend,
        null_types=tuple(t for t, k in enumerate(keys) if k in NULL_TYPES),
        **cells,
    )
