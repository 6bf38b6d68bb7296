"""Stage ``de``: genes changing with donor age, per cell type (PyDESeq2 Wald test).

The method is described in :mod:`immune_aging.analysis.de`.
"""

from __future__ import annotations

import sys

from immune_aging import count_checks, io, stage
from immune_aging.analysis import de
from immune_aging.errors import InputError
from immune_aging.params import DeParams
from immune_aging.threads import n_threads

NAME = "de"
PATHS = {
    "input": "pseudobulk h5ad",
    "out": "results parquet",
    "metrics": "metrics JSON",
    "plots": "plots folder",
}


def body(args, params: DeParams) -> None:
    """Read pseudobulk counts, test the cell types, write results, metrics and plots."""
    adata = io.read_h5ad(args.input)
    count_checks.validate_pseudobulk(adata, args.input)
    for name in params.covariates:
        if name not in adata.obs.columns:
            hint = " (set pseudobulk.pool_key to the pool column)" if name == "pool" else ""
            raise InputError(
                f"{args.input}: obs column {name!r} missing: de.covariates needs it{hint}"
            )
    present = set(adata.obs["cell_type"].astype(str))
    for name in params.cell_types:
        if name not in present:
            raise InputError(
                f"{args.input}: de.cell_types: cell type {name!r} not in the data "
                f"({len(present)} cell types, e.g. {sorted(present)[0]!r})"
            )
    results, summaries = de.differential_expression(
        adata, n_jobs=n_threads(), **de.options(params)
    )
    if all(s.skipped for s in summaries):
        example = (
            f" (e.g. {summaries[0].cell_type!r}: {summaries[0].skipped})" if summaries else ""
        )
        raise InputError(
            f"{args.input}: no cell type can be tested for age effects: all {len(summaries)} "
            f"skipped{example}"
        )
    figures = de.figures(results, summaries, alpha=params.alpha)
    with io.Outputs() as out:
        io.write_parquet(results, out.file(args.out))
        io.write_json(de.summary(results, summaries, alpha=params.alpha), out.file(args.metrics))
        plots = out.dir(args.plots)
        de.counts_table(summaries).to_csv(plots / "de_counts.csv", index=False)
        io.save_figures(figures, plots)


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
