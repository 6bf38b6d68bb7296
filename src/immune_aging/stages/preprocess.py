"""Stage ``preprocess``: HVGs, normalisation and PCA of the cells kept by QC.

Reads from the input file only the counts of the cells QC kept, of the genes the
``filter`` stage selected (:func:`immune_aging.selection.read_selection`), and writes
``pca.h5ad`` without an ``X`` matrix: the embedding, the gene table and the
loadings only (later stages read counts through the selection). The counts are
read twice, never all at once: a batch of whole donors at a time
(:func:`immune_aging.batches.map_batches`; here, or by a Dask cluster's workers
under ``IMMUNE_AGING_SCHEDULER``) for the HVG fits and the cells' totals, then
only the PCA genes' columns of every cell: here in one read, on a cluster
normalised batch by batch by the workers. PCA runs here. The method is described
in :mod:`immune_aging.analysis.preprocess`.
"""

from __future__ import annotations

import logging
import sys

from immune_aging import batches, cell_tables, executor, io, provenance, selection, stage
from immune_aging.analysis import preprocess, preprocess_plots
from immune_aging.params import PreprocessParams, as_dict

NAME = "preprocess"
BATCHES = "batch of whole donors (donor_id)"
PATHS = {
    "selection": "selection h5ad of the filter stage",
    "raw": "input h5ad holding the raw counts",
    "cells": "QC cell table (parquet)",
    "out": "PCA h5ad to write",
    "metrics": "metrics JSON to write",
    "plots": "folder of figures to write",
}
log = logging.getLogger(__name__)


def body(args, params: PreprocessParams) -> None:
    """Select HVGs, normalise, run PCA; write the embedding without X."""
    chosen = selection.read_selection(args.selection, args.raw)
    keep = cell_tables.read_keep(args.cells, chosen.obs_names, args.selection)
    obs = chosen.obs.loc[keep].copy()
    log.info("%d of %d cells kept by QC", len(obs), len(keep))

    def each_batch(fn, extra):  # lazy: preprocess checks the obs columns first
        labels = obs["donor_id"].astype(str).to_numpy()
        return batches.map_batches(chosen, fn, labels, keep=keep, extra=extra, label=BATCHES)

    on_cluster = executor.scheduler() is not None  # else one read of the PCA genes
    result, info = preprocess.preprocess(
        each_batch,
        None if on_cluster else (lambda genes: chosen.read(keep, genes=genes)),
        obs=obs,
        var=chosen.var,
        target_sum=params.target_sum,
        n_top_genes=params.n_top_genes,
        hvg_span=params.hvg_span,
        blocklist_regex=params.blocklist_regex,
        n_comps=params.n_comps,
        seed=params.seed,
        pca_solver=params.pca_solver,
    )
    result.uns["provenance"] = provenance.record(
        NAME, as_dict(params), [args.selection, args.raw, args.cells]
    )
    figures, tables = preprocess_plots.figures_and_tables(result, seed=params.seed)
    with io.Outputs() as out:
        io.write_h5ad(result, out.file(args.out))
        io.write_json(info, out.file(args.metrics))
        plots = out.dir(args.plots)
        for name, frame in tables.items():
            frame.to_csv(plots / name, index=False)
        io.save_figures(figures, plots)


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
