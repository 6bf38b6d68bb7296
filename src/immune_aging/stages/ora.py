"""Stage ``ora``: over-representation of genes up and down with age, per cell type.

The method is described in :mod:`immune_aging.analysis.ora`.
"""

from __future__ import annotations

import sys

from immune_aging import io, stage
from immune_aging.analysis import ora
from immune_aging.params import OraParams

NAME = "ora"
PATHS = {
    "de": "DE results parquet",
    "genesets": "GMT gene-set library",
    "out": "results parquet",
    "metrics": "metrics JSON",
    "plots": "plots folder",
}
#: Sets per cell type and direction shown in the dot plot.
TOP_TERMS = 5


def body(args, params: OraParams) -> None:
    """Test the up and down gene lists of every cell type against the gene sets."""
    if params.backend == "enrichr":
        ora.check_enrichr_reachable()
    de_results = io.read_parquet(args.de, ("cell_type", "gene", "log2FoldChange", "padj"))
    if params.backend == "local":
        results, per_cell_type = ora.ora(
            de_results,
            io.read_gmt(args.genesets),
            padj=params.padj,
            min_size=params.min_size,
            max_size=params.max_size,
        )
    else:
        results, per_cell_type = ora.ora_enrichr(
            de_results, params.enrichr_libraries, padj=params.padj
        )
    metrics = ora.summary(per_cell_type, padj=params.padj, backend=params.backend)
    figure = ora.plot_dots(results, padj=params.padj, top=TOP_TERMS)
    with io.Outputs() as out:
        io.write_parquet(results, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        io.save_figures({"ora_dotplot.png": figure}, out.dir(args.plots))


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
