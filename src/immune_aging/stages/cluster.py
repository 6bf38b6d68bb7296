"""Stage ``cluster``: Leiden clusters of the neighbour graph, compared with the cell types.

Reads ``embedding.h5ad`` (graph and UMAP of the ``dimred`` stage), runs Leiden
(igraph flavour) and writes one row per cell (``cell_id, leiden, cell_type``),
the agreement metrics (ARI, NMI, purity) and the cluster x cell-type table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from immune_aging import io, stage
from immune_aging.analysis import cluster, dimred
from immune_aging.errors import InputError

STAGE = "cluster"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the stage's paths to its parser."""
    p.add_argument("--input", type=Path, required=True, help="embedding.h5ad of the dimred stage")
    p.add_argument("--out", type=Path, required=True, help="clusters parquet to write")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--plots", type=Path, required=True, help="folder of figures to write")


def validate(adata: Any, path: Path) -> None:
    """Check that ``embedding.h5ad`` holds the graph, UMAP and cell types.

    Raises
    ------
    InputError
        Naming the first missing element.
    """
    if "cell_type" not in adata.obs.columns:
        raise InputError(f"{path}: obs column 'cell_type' missing")
    for key in ("connectivities", "distances"):
        if key not in adata.obsp:
            raise InputError(f"{path}: obsp {key!r} missing (expected the dimred stage's graph)")
    if "neighbors" not in adata.uns:
        raise InputError(f"{path}: uns 'neighbors' missing (expected the dimred stage's graph)")
    if "X_umap" not in adata.obsm:
        raise InputError(f"{path}: obsm 'X_umap' missing")


def body(args: argparse.Namespace, params: Any) -> None:
    """Cluster the graph; write the clusters, agreement metrics and figures."""
    adata = io.read_h5ad(args.input)
    validate(adata, args.input)
    labels = cluster.leiden(
        adata,
        resolution=params.resolution,
        n_iterations=params.n_iterations,
        seed=params.seed,
    )
    cell_types = adata.obs["cell_type"]
    table = cluster.contingency(labels, cell_types)
    metrics = cluster.agreement(labels, cell_types)
    log.info(
        "%d clusters; ARI %.3f, NMI %.3f, purity %.3f against cell_type",
        metrics["n_clusters"],
        metrics["ari"],
        metrics["nmi"],
        metrics["purity"],
    )
    clusters = pd.DataFrame(
        {
            "cell_id": adata.obs_names.astype(str).to_numpy(),
            "leiden": labels.array,
            "cell_type": pd.Categorical(cell_types.astype(str)),
        }
    )
    fig_umap = dimred.plot_embedding(
        adata.obsm["X_umap"],
        labels.to_numpy(),
        title=f"UMAP by Leiden cluster (resolution {params.resolution:g})",
        legend="on data",
        seed=params.seed,
    )
    fig_table = cluster.plot_contingency(
        table, title=f"Leiden clusters vs cell types (ARI {metrics['ari']:.2f})"
    )

    with io.Outputs() as out:
        io.write_parquet(clusters, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        plots = out.dir(args.plots)
        table.to_csv(plots / "contingency.csv")
        io.save_figure(fig_umap, plots / "umap_leiden.png")
        io.save_figure(fig_table, plots / "contingency.png")
    log.info(
        "%d cells in %d clusters written to %s", len(clusters), metrics["n_clusters"], args.out
    )


main = stage.main_for(STAGE, "Cluster the kNN graph with Leiden.", add_arguments, body)

if __name__ == "__main__":
    sys.exit(main())
