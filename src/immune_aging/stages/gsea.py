"""Stage ``gsea``: preranked gene-set enrichment of the age effects, per cell type.

The method is described in :mod:`immune_aging.analysis.gsea`.
"""

from __future__ import annotations

import sys

from immune_aging import io, stage
from immune_aging.analysis import gsea, plots
from immune_aging.params import GseaParams
from immune_aging.threads import n_threads

NAME = "gsea"
PATHS = {
    "de": "DE results parquet",
    "genesets": "GMT gene-set library",
    "out": "results parquet",
    "metrics": "metrics JSON",
    "plots": "plots folder",
}
#: Sets per cell type and direction shown in the dot plot.
TOP_TERMS = 5


def body(args, params: GseaParams) -> None:
    """Rank genes by the Wald statistic and run prerank per cell type."""
    de_results = io.read_parquet(args.de, ("cell_type", "gene", "stat"))
    sets = io.read_gmt(args.genesets)
    results, per_cell_type = gsea.gsea(
        de_results,
        sets,
        min_size=params.min_size,
        max_size=params.max_size,
        permutations=params.permutations,
        seed=params.seed,
        fdr=params.fdr,
        threads=n_threads(),
    )
    metrics = gsea.summary(results, per_cell_type, fdr=params.fdr, n_sets=len(sets))
    figure = plots.plot_dots(results, fdr=params.fdr, top=TOP_TERMS)
    with io.Outputs() as out:
        io.write_parquet(results, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        io.save_figures({"gsea_dotplot.png": figure}, out.dir(args.plots))


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
