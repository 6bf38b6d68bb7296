"""The ground truth of a design (``truth.json``) and its gene-set library (GMT)."""

from __future__ import annotations

from typing import Any

import numpy as np

from immune_aging.synthetic.design import Design


def truth(design: Design) -> dict[str, Any]:
    """Return the ground truth in the ``truth.json`` schema of docs/pipeline.md.

    Parameters
    ----------
    design
        The simulation design.

    Returns
    -------
    dict
        ``seed, n_cells, n_donors, donors, cell_types, aged_cell_types,
        age_genes, log2fc_per_decade, gene_sets, decoy_sets, doublets,
        dying_cells, rbc_contaminated``; for the realistic preset and for null
        twins (``age_effect_scale`` 0) also ``preset, age_effect_scale,
        log2fc_per_decade_by_cell_type, null_cell_types, composition_trend,
        decoy_kinds, pools``, and ``aged_cell_types`` lists the types with any
        effect.
    """
    ids = design.var.index.to_numpy()
    labels = [ct.label for ct in design.cell_types]
    extended = design.preset != "default" or design.age_effect_scale != 1.0
    has_effect = np.any(design.beta != 0, axis=1)
    if extended:  # aged: any effect at all
        flags = [bool(x) for x in has_effect]
    else:
        flags = [ct.aged for ct in design.cell_types]
    aged = [ct.label for ct, flag in zip(design.cell_types, flags, strict=True) if flag]
    age_genes = {}
    for t, ct in enumerate(design.cell_types):
        if flags[t]:
            age_genes[ct.label] = {
                "up": [str(g) for g in ids[design.beta[t] > 0]],
                "down": [str(g) for g in ids[design.beta[t] < 0]],
            }
    planted = np.flatnonzero(np.abs(design.beta).max(axis=0) > 0)
    effect = {}
    for g in planted:
        column = design.beta[:, g]
        effect[str(ids[g])] = round(float(column[np.flatnonzero(column)[0]]), 6)
    cells = design.obs.index.to_numpy()
    donors = {
        str(r.donor_id): {
            "age": float(r.age),
            "sex": str(r.sex),
            "development_stage": str(r.development_stage),
        }
        for r in design.donors.itertuples(index=False)
    }
    out = {
        "seed": design.seed,
        "n_cells": design.n_cells,
        "n_donors": len(design.donors),
        "donors": donors,
        "cell_types": labels,
        "aged_cell_types": aged,
        "age_genes": age_genes,
        "log2fc_per_decade": effect,
        "gene_sets": {k: dict(v) for k, v in design.gene_sets.items()},
        "decoy_sets": list(design.decoy_sets),
        "doublets": [str(c) for c in cells[design.cell_state == 3]],
        "dying_cells": [str(c) for c in cells[design.cell_state == 1]],
        "rbc_contaminated": [str(c) for c in cells[design.cell_state == 2]],
    }
    if extended:
        out |= _extended_truth(design, labels, has_effect)
    return out


def _extended_truth(design: Design, labels: list[str], has_effect: np.ndarray) -> dict[str, Any]:
    """Truth keys of the realistic preset and of null twins.

    ``log2fc_per_decade_by_cell_type`` holds every effect (``log2fc_per_decade``
    keeps one per gene, the first cell type's); ``null_cell_types`` the types
    without any effect; the donors gain their pool.
    """
    ids = design.var.index.to_numpy()
    by_type = {}
    for t, label in enumerate(labels):
        nz = np.flatnonzero(design.beta[t])
        by_type[label] = {str(ids[g]): round(float(design.beta[t, g]), 6) for g in nz}
    trend = design.composition_trend
    pools = dict(zip(design.donors["donor_id"], design.donors["pool"], strict=True))
    return {
        "preset": design.preset,
        "age_effect_scale": design.age_effect_scale,
        "log2fc_per_decade_by_cell_type": by_type,
        "null_cell_types": [label for label, e in zip(labels, has_effect, strict=True) if not e],
        "composition_trend": {
            label: (0.0 if trend is None else round(float(trend[t]), 6))
            for t, label in enumerate(labels)
        },
        "decoy_kinds": dict(design.decoy_kinds or dict.fromkeys(design.decoy_sets, "random")),
        "pools": {str(d): str(p) for d, p in pools.items()},
    }


def gene_set_library(design: Design) -> dict[str, list[str]]:
    """Return the GMT library: planted sets then decoys, as gene symbols.

    Parameters
    ----------
    design
        The simulation design.

    Returns
    -------
    dict
        Set name to symbols.
    """
    sets = {name: list(s["genes"]) for name, s in design.gene_sets.items()}
    sets.update({name: list(genes) for name, genes in design.decoy_sets.items()})
    return sets
