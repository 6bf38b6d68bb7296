"""Stage ``gsea``: preranked gene-set enrichment of the age effects, per cell type."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from immune_aging import io, stage
from immune_aging.analysis import gsea
from immune_aging.errors import InputError
from immune_aging.threads import n_threads

NAME = "gsea"
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
    """Rank genes by the Wald statistic and run prerank per cell type."""
    if params.min_size > params.max_size:
        raise InputError(
            f"params: gsea.min_size ({params.min_size}) is larger than gsea.max_size"
            f" ({params.max_size})"
        )
    de_results = io.read_parquet(args.de, ("cell_type", "gene", "stat"))
    sets = io.read_gmt(args.genesets)
    results, summary = gsea.gsea(
        de_results,
        sets,
        min_size=params.min_size,
        max_size=params.max_size,
        permutations=params.permutations,
        seed=params.seed,
        fdr=params.fdr,
        threads=n_threads(),
    )
    metrics = {
        "fdr": params.fdr,
        "cell_types": summary,
        "n_sets_in_library": len(sets),
        "n_up": sum(v["n_up"] for v in summary.values()),
        "n_down": sum(v["n_down"] for v in summary.values()),
    }
    with io.Outputs() as out:
        io.write_parquet(results, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        plots = out.dir(args.plots)
        fig = gsea.dot_figure(results, fdr=params.fdr, top=TOP_TERMS)
        io.save_figure(fig, plots / "gsea_dotplot.png")


main = stage.main_for(NAME, __doc__.splitlines()[0], add_arguments, body)

if __name__ == "__main__":
    sys.exit(main())
