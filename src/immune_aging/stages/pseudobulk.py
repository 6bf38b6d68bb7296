"""Stage ``pseudobulk``: raw counts summed per (cell type, donor) over the kept cells.

Sums the kept cells' raw counts (the ``filter`` stage's selection, ``keep`` of the ``qc``
stage's ``cells.parquet``) per (cell type, donor), a batch of whole donors at a time, here or
as Dask jobs (:func:`immune_aging.batches.map_batches`): memory is one batch plus the result.
Samples with too few cells, then cell types with too few samples, are dropped; donor metadata
(sex, development stage, age under the censored-age rule, 10x pool) goes onto every sample.
"""

from __future__ import annotations

import logging
import sys

from immune_aging import batches, cell_tables, io, provenance, selection, stage
from immune_aging.analysis import pseudobulk, pseudobulk_samples
from immune_aging.params import PseudobulkParams, as_dict

NAME = "pseudobulk"
PATHS = {
    "selection": "selection h5ad of the filter stage",
    "raw": "input h5ad holding the raw counts",
    "cells": "cells.parquet of the qc stage",
    "out": "pseudobulk h5ad to write",
    "metrics": "metrics JSON to write",
    "plots": "folder of figures to write",
}
log = logging.getLogger(__name__)


def body(args, params: PseudobulkParams) -> None:
    """Sum counts per sample; write the pseudobulk h5ad, metrics and figures."""
    chosen = selection.read_selection(args.selection, args.raw)
    source = str(args.selection)
    obs = pseudobulk_samples.cells(chosen.obs, params.pool_key, source=source)
    keep = cell_tables.read_keep(args.cells, chosen.obs_names, args.selection)
    kept = obs[keep]
    donors, n_split = pseudobulk_samples.donor_metadata(
        kept,
        age_80_and_over=params.age_80_and_over,
        censored_age=params.censored_age,
        pool_key=params.pool_key,
        source=source,
    )
    sums, labels, rows = pseudobulk_samples.batch_work(kept, chosen.var)
    parts = batches.map_batches(chosen, sums, labels, keep=keep, extra=rows, label="donor batch")
    pb, report = pseudobulk_samples.build(
        parts,
        donors,
        min_cells=params.min_cells,
        min_samples_per_cell_type=params.min_samples_per_cell_type,
        source=source,
    )
    pb.uns["provenance"] = provenance.record(
        NAME, as_dict(params), [args.selection, args.raw, args.cells]
    )
    metrics = pseudobulk.summary(
        pb, report, donors, censored_age=params.censored_age, donors_split_pools=n_split
    )
    figures = pseudobulk.figures(
        report,
        donors,
        min_samples_per_cell_type=params.min_samples_per_cell_type,
        age_80_and_over=params.age_80_and_over,
    )
    with io.Outputs() as out:
        io.write_h5ad(pb, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        plots = out.dir(args.plots)
        report.rename_axis("cell_type").to_csv(plots / "samples_per_cell_type.csv")
        donors.to_csv(plots / "donors.csv")
        io.save_figures(figures, plots)
    log.info("%d samples x %d genes written to %s", pb.n_obs, pb.n_vars, args.out)


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
