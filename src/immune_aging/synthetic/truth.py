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
        dying_cells, rbc_contaminated``.
    """
    ids = design.var.index.to_numpy()
    labels = [ct.label for ct in design.cell_types]
    aged = [ct.label for ct in design.cell_types if ct.aged]
    age_genes = {}
    for t, ct in enumerate(design.cell_types):
        if ct.aged:
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
    return {
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
