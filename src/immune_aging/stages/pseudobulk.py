"""Stage ``pseudobulk``: raw counts summed per (cell type, donor) over the kept cells.

Reads ``filtered.h5ad`` backed (only ``obs`` and ``var`` in memory) and the QC
table ``cells.parquet``, streams the kept cells' raw counts in blocks
(:func:`immune_aging.counts.kept_blocks`) and adds up their sums per (cell type,
donor), so memory stays about one block plus the result. Samples with too few
cells, then cell types with too few samples, are dropped; donor metadata (sex,
development stage, the age read from it under the censored-age rule, and the
10x pool when ``pool_key`` names a column) is carried onto every sample.
"""

from __future__ import annotations

import logging
import sys

import anndata as ad

from immune_aging import counts, io, provenance, stage
from immune_aging.analysis import age, pseudobulk
from immune_aging.errors import InputError
from immune_aging.params import PseudobulkParams, as_dict

NAME = "pseudobulk"
PATHS = {
    "filtered": "filtered.h5ad (raw counts)",
    "cells": "cells.parquet of the qc stage",
    "out": "pseudobulk h5ad to write",
    "metrics": "metrics JSON to write",
    "plots": "folder of figures to write",
}
log = logging.getLogger(__name__)


def body(args, params: PseudobulkParams) -> None:
    """Sum counts per sample; write the pseudobulk h5ad, metrics and figures."""
    backed = io.read_h5ad(args.filtered, backed=True)
    try:
        age_column = "age" if "age" in backed.obs.columns else "development_stage"
        stage.require(backed, args.filtered, obs=pseudobulk.CELL_COLUMNS, var=["feature_name"])
        stage.require(backed, args.filtered, obs=[age_column], hint=" (or a numeric 'age')")
        stage.require(backed, args.filtered, notna=["donor_id", "cell_type"])
        keep = counts.read_keep(args.cells, backed.obs_names, args.filtered)
        ages = [c for c in ("development_stage", "age") if c in backed.obs.columns]
        pool = [params.pool_key] if params.pool_key in backed.obs.columns else []
        obs = backed.obs[[*pseudobulk.CELL_COLUMNS, *ages, *pool]].copy()
        var = backed.var[["feature_name"]].copy()
    finally:
        backed.file.close()
    if not keep.any():
        raise InputError(f"{args.cells}: no cell has keep == True")
    donors = age.donor_table(
        obs[keep], age_80_and_over=params.age_80_and_over, source=str(args.filtered)
    )
    donors = pseudobulk.censor_rule(donors, params.censored_age)
    pools, n_split = pseudobulk.donor_pools(obs[keep], params.pool_key)
    if pools is not None:
        donors["pool"] = pools.reindex(donors.index).to_numpy()
    parts = [
        pseudobulk.sum_counts(ad.AnnData(X=b.counts, obs=obs.iloc[b.rows], var=var))
        for b in counts.kept_blocks(args.filtered, "X", keep)
    ]
    pb, report = pseudobulk.make_pseudobulk(
        parts,
        donors,
        min_cells=params.min_cells,
        min_samples_per_cell_type=params.min_samples_per_cell_type,
    )
    if pb.n_obs == 0:
        raise InputError(
            f"{args.filtered}: no cell type has {params.min_samples_per_cell_type} samples of "
            f">= {params.min_cells} cells (pseudobulk.min_samples_per_cell_type, "
            "pseudobulk.min_cells)"
        )
    pb.uns["provenance"] = provenance.record(NAME, as_dict(params), [args.filtered, args.cells])
    with io.Outputs() as out:
        io.write_h5ad(pb, out.file(args.out))
        metrics = pseudobulk.summary(
            pb, report, donors, censored_age=params.censored_age, donors_split_pools=n_split
        )
        io.write_json(metrics, out.file(args.metrics))
        plots = out.dir(args.plots)
        report.rename_axis("cell_type").to_csv(plots / "samples_per_cell_type.csv")
        donors.to_csv(plots / "donors.csv")
        figures = pseudobulk.figures(
            report,
            donors,
            min_samples_per_cell_type=params.min_samples_per_cell_type,
            age_80_and_over=params.age_80_and_over,
        )
        io.save_figures(figures, plots)
    log.info("%d samples x %d genes written to %s", pb.n_obs, pb.n_vars, args.out)


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
