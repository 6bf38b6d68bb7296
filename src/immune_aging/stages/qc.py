"""Stage ``qc``: per-cell QC metrics, threshold rules and Scrublet doublets.

Reads the raw counts of the cells and genes the ``filter`` stage selected from
the input file (:func:`immune_aging.selection.read_selection`) a batch of whole
groups (``qc.pool_key`` or donors; :data:`~immune_aging.selection.BATCH_CELLS` cells
at most unless one group has more) at a time, here or as Dask jobs
(:func:`immune_aging.batches.map_batches`), and writes a per-cell table, not the
counts. Method: :mod:`immune_aging.analysis.qc`, :mod:`immune_aging.analysis.doublets`.
"""

from __future__ import annotations

import functools
import logging
import sys

from immune_aging import batches, io, selection, stage
from immune_aging.analysis import qc, qc_plots, qc_rules
from immune_aging.params import QcParams
from immune_aging.threads import n_threads

NAME = "qc"
PATHS = {
    "selection": "selection h5ad of the filter stage",
    "raw": "input h5ad holding the raw counts",
    "out": "per-cell QC table (parquet)",
    "metrics": "metrics JSON to write",
    "plots": "folder of figures to write",
}
log = logging.getLogger(__name__)


def body(args, params: QcParams) -> None:
    """Compute QC metrics, apply the rules, detect doublets; write the cell table."""
    chosen = selection.read_selection(args.selection, args.raw)
    group_key = params.pool_key or "donor_id"
    hint = " (qc.pool_key)" if params.pool_key else ""
    stage.require(chosen, args.selection, hint=hint, obs=[group_key])
    labels = chosen.obs[group_key].astype(str).to_numpy()
    one_batch = functools.partial(
        qc.qc_batch,
        var=chosen.var,
        group_key=group_key,
        rules=qc_rules.Rules.of(params),
        expected_doublet_rate=params.expected_doublet_rate,
        min_cells_scrublet=params.min_cells_scrublet,
        seed=params.seed,
        n_jobs=n_threads(),
    )
    groups = chosen.obs[[group_key]]  # a batch's rows of it travel with the batch
    results = batches.map_batches(
        chosen, one_batch, labels, extra=lambda p: groups.iloc[p], label=f"QC batch ({group_key})"
    )
    table, _, limits, scrublet_groups = qc.combine_batches(results, labels=labels)
    with stage.about(args.selection):
        summary = qc.summary(
            table, scrublet_groups, limits, thresholds=params.thresholds, group_key=group_key
        )
    figures, tables = qc_plots.figures_and_tables(
        table, scrublet_groups, limits, max_pct_hb=params.max_pct_hb, seed=params.seed
    )
    with io.Outputs() as out:
        io.write_parquet(table, out.file(args.out))
        io.write_json(summary, out.file(args.metrics))
        plots = out.dir(args.plots)
        for name, frame in tables.items():
            frame.to_csv(plots / name, index=False)
        limits.to_csv(plots / "limits.csv")
        io.save_figures(figures, plots)
    log.info(
        "%(cells_kept)d of %(cells_in)d cells kept; %(doublets_found)d doublets; "
        "%(groups_not_scored)d groups not scored",
        summary,
    )


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
