"""Stage ``qc``: per-cell QC metrics, threshold rules and Scrublet doublets.

Reads the raw counts of the cells and genes the ``filter`` stage selected from
the input file (:func:`immune_aging.selection.read_selection`), and writes a per-cell
table (``cells.parquet``), not a copy of the count matrix: later stages read the
counts through the selection and keep the cells whose ``keep`` is true. The
counts are read a batch of whole groups (``qc.pool_key`` or donors) at a time,
at most :data:`immune_aging.selection.BATCH_CELLS` cells unless one group has more
(:func:`immune_aging.analysis.qc.qc_batches`), so memory is one batch's counts
plus the per-cell table. The method is described in :mod:`immune_aging.analysis.qc` and
:mod:`immune_aging.analysis.doublets`.
"""

from __future__ import annotations

import logging
import sys

from immune_aging import io, selection, stage
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
    table, _, limits, scrublet_groups = qc.qc_batches(
        chosen.read_batches(labels, label=f"QC batch ({group_key})"),
        obs=chosen.obs,
        var=chosen.var,
        group_key=group_key,
        rules=qc_rules.Rules.of(params),
        expected_doublet_rate=params.expected_doublet_rate,
        min_cells_scrublet=params.min_cells_scrublet,
        seed=params.seed,
        n_jobs=n_threads(),
    )
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
        "%d of %d cells kept; %d doublets; %d groups not scored",
        summary["cells_kept"],
        summary["cells_in"],
        summary["doublets_found"],
        summary["groups_not_scored"],
    )


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
