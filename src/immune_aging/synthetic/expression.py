"""The gene side of a design: gene table, cell-type profiles and planted age effects."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from immune_aging.synthetic.catalogue import (
    CELL_TYPES,
    EFFECT_RANGE,
    GENERIC,
    HB_GENES,
    HB_LOOKALIKES,
    HOUSEKEEPING,
    IG_CONSTANT,
    IG_V,
    MARKERS,
    MEDIAN_LIBRARY,
    MIN_PLANTED_MEAN,
    MT_GENES,
    MT_SHARE,
    RIBO_GENES,
    RIBO_SHARE,
    SEX_GENES,
    TR_CONSTANT,
    TR_V,
    CellType,
)

#: Background share of a marker gene in cell types that do not express it.
_BACKGROUND = 2e-6


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def gene_table(n_genes: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Choose the genes: symbols, categories and unique Ensembl-style IDs.

    Parameters
    ----------
    n_genes
        Number of genes; named genes of the catalogue first, then generic ones.
    rng
        The design's random stream.

    Returns
    -------
    var : pandas.DataFrame
        Index Ensembl-style IDs (increasing), column ``feature_name`` (symbols in
        random order).
    category : numpy.ndarray
        Category per gene (``mt``, ``ribo``, ``hb``, ``hb_lookalike``, ``sex``,
        ``receptor``, ``housekeeping``, ``marker``, ``generic``).
    """
    n_ribo = min(len(RIBO_GENES), max(20, n_genes // 60))
    n_receptor = min(len(IG_V) + len(TR_V), max(10, n_genes // 50))
    receptors = IG_CONSTANT[:3] + TR_CONSTANT[:4]
    v_genes = [g for pair in zip(IG_V, TR_V, strict=False) for g in pair]
    v_genes += IG_V[len(TR_V) :] + TR_V[len(IG_V) :]
    receptors += IG_CONSTANT[3:] + TR_CONSTANT[4:]
    receptors = _dedupe(receptors + v_genes)[: max(n_receptor, 7)]
    named = [
        ("mt", list(MT_GENES)),
        ("ribo", RIBO_GENES[:n_ribo]),
        ("hb", list(HB_GENES)),
        ("hb_lookalike", list(HB_LOOKALIKES)),
        ("sex", list(SEX_GENES)),
        ("receptor", receptors),
        ("housekeeping", list(HOUSEKEEPING)),
        ("marker", list(MARKERS)),
    ]
    symbols: list[str] = []
    cats: list[str] = []
    for cat, genes in named:
        symbols += genes
        cats += [cat] * len(genes)
    taken = set(symbols)
    n_generic = n_genes - len(symbols)
    if n_generic < 300:
        raise ValueError(f"n_genes={n_genes} leaves {n_generic} generic genes; need >= 300")
    generic = [g for g in _dedupe(GENERIC) if g not in taken][:n_generic]
    generic += [f"GENE{i:05d}" for i in range(1, n_generic - len(generic) + 1)]
    symbols += generic
    cats += ["generic"] * len(generic)
    # genes appear in random order; IDs increase along the file like a sorted annotation
    order = rng.permutation(n_genes)
    ids = np.sort(rng.choice(np.arange(100_000, 300_000), size=n_genes, replace=False))
    var = pd.DataFrame(
        {"feature_name": pd.Categorical(np.asarray(symbols, dtype=object)[order])},
        index=pd.Index([f"ENSG{i:011d}" for i in ids], name=None),
    )
    return var, np.asarray(cats, dtype=object)[order]


def profiles(
    var: pd.DataFrame,
    category: np.ndarray,
    types: tuple[CellType, ...],
    rng: np.random.Generator,
    *,
    background: float = _BACKGROUND,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the cell-type expression profiles and the genes' inverse dispersions.

    Parameters
    ----------
    var, category
        The genes, from :func:`gene_table`.
    types
        The simulated cell types.
    rng
        The design's random stream.
    background
        Share of the library of a marker gene in the cell types that do not express it.

    Returns
    -------
    profile : numpy.ndarray
        Share of the library per (cell type, gene); rows sum to 1.
    theta : numpy.ndarray
        Negative-binomial inverse dispersion per gene.
    """
    symbols = var["feature_name"].astype(str).to_numpy()
    pos = {s: i for i, s in enumerate(symbols)}
    n_types, n_genes = len(types), len(symbols)
    prof = np.zeros((n_types, n_genes))
    theta = np.clip(np.exp(rng.normal(np.log(3.0), 0.6, n_genes)), 0.5, 50.0)

    def idx(cat: str) -> np.ndarray:
        return np.flatnonzero(category == cat)

    # mitochondrial and ribosomal blocks
    mt = idx("mt")
    mt_w = np.array([MT_GENES[s] for s in symbols[mt]])
    ribo = idx("ribo")
    ribo_w = np.exp(rng.normal(0.0, 0.5, len(ribo)))
    theta[ribo] = 20.0
    theta[mt] = 10.0
    for t, ct in enumerate(types):
        prof[t, mt] = MT_SHARE[ct.lineage] * mt_w / mt_w.sum()
        prof[t, ribo] = RIBO_SHARE[ct.lineage] * ribo_w / ribo_w.sum()
    # hemoglobin: ambient traces only (RBC contamination is added per cell)
    hb = idx("hb")
    prof[:, hb] = 2e-6 * np.array([HB_GENES[s] for s in symbols[hb]])
    myeloid = np.array([ct.lineage == "myeloid" for ct in types])
    for s, share in HB_LOOKALIKES.items():
        prof[:, pos[s]] = share * np.where(myeloid & (s == "HBEGF"), 5.0, 1.0)
    for s, (_, share) in SEX_GENES.items():
        prof[:, pos[s]] = share
    for s, share in HOUSEKEEPING.items():
        prof[:, pos[s]] = share * np.exp(rng.normal(0.0, 0.2, n_types))
        theta[pos[s]] = 15.0
    # immune receptors: constants at steady levels, V/J segments bursty (clonal usage)
    for s in symbols[idx("receptor")]:
        i = pos[s]
        is_ig = s.startswith("IG")
        constant = s in IG_CONSTANT or s in TR_CONSTANT
        for t, ct in enumerate(types):
            share = 1e-6
            if is_ig and ct.lineage == "B":
                share = {"IGKC": 6e-3, "IGLC2": 3e-3, "IGHD": 2e-3}.get(
                    s, 8e-4 if constant else 3e-4
                )
                if ct.key == "plasmablast":
                    share *= 15.0
                elif s == "IGHD" and ct.key != "naive_b":
                    share = 2e-4
            elif not is_ig and ct.lineage == "T":
                share = {"TRAC": 2e-3, "TRBC2": 3e-3, "TRBC1": 1.5e-3}.get(
                    s, 3e-4 if constant else 2e-4
                )
            elif s == "TRDC" and ct.lineage == "NK":
                share = 3e-4
            prof[t, i] = share
        theta[i] = 8.0 if constant else 0.05
    # markers
    for s, where in MARKERS.items():
        i = pos[s]
        for t, ct in enumerate(types):
            prof[t, i] = where.get(ct.key, where.get(ct.lineage, background))
        theta[i] = max(theta[i], 2.0)
    # generic genes: log-normal abundance with lineage and cell-type programs
    gen = idx("generic")
    base = rng.normal(0.0, 1.6, len(gen))
    lineages = sorted({ct.lineage for ct in CELL_TYPES})
    lineage_dev = {
        lin: rng.normal(0.0, 1.0, len(gen)) * (rng.random(len(gen)) < 0.2) for lin in lineages
    }
    type_dev = {
        ct.key: rng.normal(0.0, 0.6, len(gen)) * (rng.random(len(gen)) < 0.1) for ct in CELL_TYPES
    }
    for t, ct in enumerate(types):
        w = np.exp(base + lineage_dev[ct.lineage] + type_dev[ct.key])
        rest = 1.0 - prof[t].sum()
        prof[t, gen] = rest * w / w.sum()
    prof /= prof.sum(axis=1, keepdims=True)
    return prof, theta


def plant_effects(
    var: pd.DataFrame,
    category: np.ndarray,
    profile: np.ndarray,
    types: tuple[CellType, ...],
    rng: np.random.Generator,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]], np.ndarray]:
    """Choose planted age gene sets, decoy sets and the log2 fold changes per decade.

    Four planted sets (two up, two down; the second pair in half of the aged
    cell types each) of expressed generic genes, and eight decoy sets of other
    generic genes.

    Parameters
    ----------
    var, category
        The genes, from :func:`gene_table`.
    profile
        Cell-type profiles, from :func:`profiles`.
    types
        The simulated cell types.
    rng
        The design's random stream.

    Returns
    -------
    gene_sets : dict
        Planted sets: name -> ``{"direction", "cell_types", "genes"}`` (symbols).
    decoy_sets : dict
        Sets without effect: name -> symbols.
    beta : numpy.ndarray
        Planted log2 fold change per decade per (cell type, gene).
    """
    symbols = var["feature_name"].astype(str).to_numpy()
    aged = [t for t, ct in enumerate(types) if ct.aged]
    generic = np.flatnonzero(category == "generic")
    # expressed genes only: at least 0.1 expected UMIs per cell in every aged type
    mean_counts = (
        profile[np.ix_(aged, generic)]
        * MEDIAN_LIBRARY
        * np.array([[types[t].library] for t in aged])
    )
    candidates = generic[mean_counts.min(axis=0) >= MIN_PLANTED_MEAN]
    hi = min(40, max(15, len(generic) // 20))
    lo = min(25, hi)
    sizes = rng.integers(lo, hi + 1, size=4)
    if len(candidates) < sizes.sum():
        order = np.argsort(-mean_counts.min(axis=0), kind="stable")
        candidates = generic[order[: sizes.sum()]]
    chosen = rng.choice(candidates, size=sizes.sum(), replace=False)
    half = max(1, math.ceil(len(aged) / 2))
    plan = [
        ("SIM_AGE_UP_1", "up", aged),
        ("SIM_AGE_DOWN_1", "down", aged),
        ("SIM_AGE_UP_2", "up", aged[:half]),
        ("SIM_AGE_DOWN_2", "down", aged[len(aged) // 2 :] or aged),
    ]
    beta = np.zeros(profile.shape)
    gene_sets: dict[str, dict[str, Any]] = {}
    start = 0
    for (name, direction, where), size in zip(plan, sizes, strict=True):
        genes = np.sort(chosen[start : start + size])
        start += size
        sign = 1.0 if direction == "up" else -1.0
        effect = sign * rng.uniform(*EFFECT_RANGE, size=len(genes))
        for t in where:
            beta[t, genes] = effect
        gene_sets[name] = {
            "direction": direction,
            "cell_types": [types[t].label for t in where],
            "genes": [str(s) for s in symbols[genes]],
        }
    # decoys: random generic genes, never planted, sizes log-uniform in 15..200
    free = np.setdiff1d(generic, chosen)
    decoys: dict[str, list[str]] = {}
    for k in range(8):
        size = round(float(np.exp(rng.uniform(np.log(15), np.log(200)))))
        size = min(size, len(free) // 2)
        genes = np.sort(rng.choice(free, size=size, replace=False))
        decoys[f"SIM_DECOY_{k + 1:02d}"] = [str(s) for s in symbols[genes]]
    return gene_sets, decoys, beta
