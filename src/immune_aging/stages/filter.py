"""Stage ``filter``: drop rare donors and cell types; keep the raw counts of the rest.

Reads the input backed (only ``obs`` and ``var`` in memory), applies the rules of
:mod:`immune_aging.analysis.filtering` to the annotations, then streams the kept
cells' raw counts (:func:`immune_aging.counts.read_counts`) and drops genes
without any count. Peak memory is about the output matrix plus one block.
"""

from __future__ import annotations

import logging
import sys

from immune_aging import counts, io, provenance, stage
from immune_aging.analysis import filtering
from immune_aging.params import FilterParams, as_dict
from immune_aging.validate import validate_dataset

NAME = "filter"
PATHS = {
    "input": "input h5ad (CELLxGENE schema)",
    "out": "filtered h5ad to write",
    "metrics": "metrics JSON to write",
    "plots": "folder of figures to write",
}
log = logging.getLogger(__name__)


def body(args, params: FilterParams) -> None:
    """Filter donors, cell types and genes; write the filtered counts."""
    backed = io.read_h5ad(args.input, backed=True)
    try:
        location = validate_dataset(backed, args.input)
        obs = backed.obs.copy()
        var = counts.gene_table(backed, location, args.input).copy()
    finally:
        backed.file.close()
    log.info("%s: %d cells x %d genes, raw counts in %s", args.input, len(obs), len(var), location)

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
    matrix, genes = counts.read_counts(args.input, location, selection.keep)
    filtered = filtering.assemble_filtered(
        matrix, obs.loc[selection.keep], var.loc[genes], extra_obs=params.keep_obs
    )
    filtered.uns["provenance"] = provenance.record(NAME, as_dict(params), [args.input])
    metrics = filtering.summary(
        selection,
        obs=obs,
        n_genes_in=len(var),
        filtered=filtered,
        ages_removed=ages_removed,
        warnings=warnings,
    )
    table = filtering.donor_table(selection, filtered)

    with io.Outputs() as out:
        io.write_h5ad(filtered, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        plots = out.dir(args.plots)
        table.to_csv(plots / "cells_per_donor.csv", index=False)
        io.save_figure(
            filtering.plot_cells_per_donor(table, cutoff=selection.cutoff),
            plots / "cells_per_donor.png",
        )
    log.info("%d cells x %d genes written to %s", filtered.n_obs, filtered.n_vars, args.out)


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
