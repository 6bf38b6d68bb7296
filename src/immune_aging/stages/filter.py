"""Stage ``filter``: drop rare donors and cell types; write which cells and genes remain.

Reads the input backed (only ``obs`` and ``var`` in memory,
:func:`immune_aging.annotations.read_annotations`), applies the rules of
:mod:`immune_aging.analysis.filtering` to the annotations, then streams the kept
cells' raw counts once (:func:`immune_aging.counts.expressed_genes`) to find the
genes with any count. Writes the selection, not a copy of the counts:
``selection.h5ad`` holds the kept cells (obs, with each cell's row in the input)
and genes (var, with each gene's column), and later stages read the input's
counts through it (:func:`immune_aging.selection.read_selection`). Memory is the
annotations plus one block of counts.
"""

from __future__ import annotations

import logging
import sys

from immune_aging import annotations, counts, io, provenance, stage
from immune_aging.analysis import filtering
from immune_aging.params import FilterParams, as_dict

NAME = "filter"
PATHS = {
    "input": "input h5ad (CELLxGENE schema)",
    "out": "selection h5ad to write (kept cells and genes, no counts)",
    "metrics": "metrics JSON to write",
    "plots": "folder of figures to write",
}
log = logging.getLogger(__name__)


def body(args, params: FilterParams) -> None:
    """Filter donors, cell types and genes; write the selection."""
    obs, var, location = annotations.read_annotations(args.input)
    selection = filtering.select_cells(
        obs,
        cutoff_percentile=params.cutoff_percentile,
        min_cells_per_celltype=params.min_cells_per_celltype,
        percent_donors=params.percent_donors,
        prevalence=params.prevalence,
    )
    ages_removed, warnings = filtering.rule_ages(
        obs, selection, min_cells_per_celltype=params.min_cells_per_celltype
    )
    genes = counts.expressed_genes(args.input, location, selection.keep)
    kept = filtering.assemble_selection(
        obs,
        var,
        keep=selection.keep,
        genes=genes,
        location=location,
        extra_obs=params.keep_obs,
    )
    kept.uns["provenance"] = provenance.record(NAME, as_dict(params), [args.input])
    metrics = filtering.summary(
        selection,
        obs=obs,
        n_genes_in=len(var),
        kept=kept,
        ages_removed=ages_removed,
        warnings=warnings,
    )
    table = filtering.donor_table(selection, kept)
    figure = filtering.plot_cells_per_donor(table, cutoff=selection.cutoff)
    with io.Outputs() as out:
        io.write_h5ad(kept, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        plots = out.dir(args.plots)
        table.to_csv(plots / "cells_per_donor.csv", index=False)
        io.save_figure(figure, plots / "cells_per_donor.png")
    log.info("%d cells x %d genes selected, written to %s", kept.n_obs, kept.n_vars, args.out)


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
