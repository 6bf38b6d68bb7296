"""Stage ``qc``: per-cell QC metrics, threshold rules and Scrublet doublets.

Reads the raw counts of the cells and genes the ``filter`` stage selected from
the input file (:func:`immune_aging.counts.read_selection`), and writes a per-cell
table (``cells.parquet``), not a copy of the count matrix: later stages read the
counts through the selection and keep the cells whose ``keep`` is true. The
method is described in :mod:`immune_aging.analysis.qc` and
:mod:`immune_aging.analysis.doublets`.
"""

from __future__ import annotations

import logging
import sys

import anndata as ad

from immune_aging import counts, io, stage
from immune_aging.analysis import doublets, qc, qc_plots
from immune_aging.errors import InputError
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
    chosen = counts.read_selection(args.selection, args.raw)
    group_key = params.pool_key or "donor_id"
    hint = " (qc.pool_key)" if params.pool_key else ""
    stage.require(chosen, args.selection, hint=hint, obs=[group_key])
    adata = ad.AnnData(X=chosen.read(), obs=chosen.obs, var=chosen.var)
    groups = adata.obs[group_key]

    metrics = qc.qc_metrics(adata)
    fails, limits = qc.threshold_rules(
        metrics,
        groups=groups,
        thresholds=params.thresholds,
        min_genes=params.min_genes,
        max_genes=params.max_genes,
        min_counts=params.min_counts,
        max_counts=params.max_counts,
        max_pct_mt=params.max_pct_mt,
        max_pct_hb=params.max_pct_hb,
        n_mads=params.n_mads,
    )
    cells, scrublet_groups = doublets.detect_doublets(
        adata,
        groups=groups,
        eligible=~fails.any(axis=1).to_numpy(),
        expected_doublet_rate=params.expected_doublet_rate,
        min_cells=params.min_cells_scrublet,
        seed=params.seed,
        n_jobs=n_threads(),
    )
    table = qc.qc_table(metrics, fails, cells)
    if not table["keep"].any():
        worst = fails.sum().idxmax().removeprefix("fail_")
        raise InputError(
            f"{args.selection}: no cell passes QC (rule {worst!r} alone removes "
            f"{int(fails.sum().max())} of {len(table)}); check the qc.* limits"
        )
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
