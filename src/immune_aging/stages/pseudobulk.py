"""Stage ``pseudobulk``: raw counts summed per (cell type, donor) over the kept cells.

Reads the ``filter`` stage's selection and the QC table ``cells.parquet``,
streams the kept cells' raw counts from the input file in blocks
(:meth:`immune_aging.counts.Selection.blocks`) and adds up their sums per (cell
type, donor), so memory stays about one block plus the result. Samples with too few
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
    chosen = counts.read_selection(args.selection, args.raw)
    age_column = "age" if "age" in chosen.obs.columns else "development_stage"
    stage.require(chosen, args.selection, obs=pseudobulk.CELL_COLUMNS)
    stage.require(chosen, args.selection, obs=[age_column], hint=" (or a numeric 'age')")
    stage.require(chosen, args.selection, notna=["donor_id", "cell_type"])
    keep = counts.read_keep(args.cells, chosen.obs_names, args.selection)
    ages = [c for c in ("development_stage", "age") if c in chosen.obs.columns]
    pool = [params.pool_key] if params.pool_key in chosen.obs.columns else []
    obs = chosen.obs[[*pseudobulk.CELL_COLUMNS, *ages, *pool]].copy()
    var = chosen.var[["feature_name"]].copy()
    if not keep.any():
        raise InputError(f"{args.cells}: no cell has keep == True")
    donors = age.donor_table(
        obs[keep], age_80_and_over=params.age_80_and_over, source=str(args.selection)
    )
    donors = pseudobulk.censor_rule(donors, params.censored_age)
    pools, n_split = pseudobulk.donor_pools(obs[keep], params.pool_key)
    if pools is not None:
        donors["pool"] = pools.reindex(donors.index).to_numpy()
    parts = (  # a generator: one block and its sums in memory at a time
        pseudobulk.sum_counts(ad.AnnData(X=block, obs=obs.iloc[positions], var=var))
        for positions, block in chosen.blocks(keep)
    )
    pb, report = pseudobulk.make_pseudobulk(
        parts,
        donors,
        min_cells=params.min_cells,
        min_samples_per_cell_type=params.min_samples_per_cell_type,
    )
    if pb.n_obs == 0:
        raise InputError(
            f"{args.selection}: no cell type has {params.min_samples_per_cell_type} samples of "
            f">= {params.min_cells} cells (pseudobulk.min_samples_per_cell_type, "
            "pseudobulk.min_cells)"
        )
    pb.uns["provenance"] = provenance.record(
        NAME, as_dict(params), [args.selection, args.raw, args.cells]
    )
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
