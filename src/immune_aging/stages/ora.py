"""Stage ``ora``: over-representation of genes up and down with age, per cell type."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from immune_aging import io, stage
from immune_aging.analysis import ora
from immune_aging.errors import InputError

NAME = "ora"
#: Sets per cell type and direction shown in the dot plot.
TOP_TERMS = 5


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the stage's paths."""
    p.add_argument("--de", type=Path, required=True, help="DE results parquet")
    p.add_argument("--genesets", type=Path, required=True, help="GMT gene-set library")
    p.add_argument("--out", type=Path, required=True, help="results parquet")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    p.add_argument("--plots", type=Path, required=True, help="plots folder")


def body(args: argparse.Namespace, params: Any) -> None:
    """Test the up and down gene lists of every cell type against the gene sets."""
    if params.min_size > params.max_size:
        raise InputError(
            f"params: ora.min_size ({params.min_size}) is larger than ora.max_size"
            f" ({params.max_size})"
        )
    if params.backend == "enrichr":
        if not params.enrichr_libraries:
            raise InputError("params: ora.enrichr_libraries: expected at least one library name")
        ora.check_enrichr_reachable()
    de_results = io.read_parquet(args.de, ("cell_type", "gene", "log2FoldChange", "padj"))
    if params.backend == "local":
        sets = io.read_gmt(args.genesets)
        results, summary = ora.ora(
            de_results,
            sets,
            padj=params.padj,
            min_size=params.min_size,
            max_size=params.max_size,
        )
    else:
        results, summary = ora.ora_enrichr(de_results, params.enrichr_libraries, padj=params.padj)
    metrics = {
        "padj": params.padj,
        "backend": params.backend,
        "cell_types": summary,
        "n_up_sets": sum(v["n_up_sets"] for v in summary.values()),
        "n_down_sets": sum(v["n_down_sets"] for v in summary.values()),
    }
    with io.Outputs() as out:
        io.write_parquet(results, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        plots = out.dir(args.plots)
        fig = ora.dot_figure(results, padj=params.padj, top=TOP_TERMS)
        io.save_figure(fig, plots / "ora_dotplot.png")


main = stage.main_for(NAME, __doc__.splitlines()[0], add_arguments, body)

if __name__ == "__main__":
    sys.exit(main())
