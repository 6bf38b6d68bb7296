"""Stage ``cluster``: Leiden clusters of the neighbour graph, compared with the cell types.

Reads ``embedding.h5ad`` (graph and UMAP of the ``dimred`` stage), runs Leiden
(igraph flavour) and writes one row per cell (``cell_id, leiden, cell_type``),
the agreement metrics (ARI, NMI, purity) and the cluster x cell-type table.
"""

from __future__ import annotations

import logging
import sys

from immune_aging import io, stage
from immune_aging.analysis import cluster
from immune_aging.params import ClusterParams

NAME = "cluster"
PATHS = {
    "input": "embedding.h5ad of the dimred stage",
    "out": "clusters parquet to write",
    "metrics": "metrics JSON to write",
    "plots": "folder of figures to write",
}
log = logging.getLogger(__name__)


def body(args, params: ClusterParams) -> None:
    """Cluster the graph; write the clusters, agreement metrics and figures."""
    adata = io.read_h5ad(args.input)
    stage.require(adata, args.input, obs=["cell_type"])
    hint = " (expected the dimred stage's graph)"
    stage.require(
        adata, args.input, obsp=["connectivities", "distances"], uns=["neighbors"], hint=hint
    )
    stage.require(adata, args.input, obsm=["X_umap"])
    labels = cluster.leiden(
        adata, resolution=params.resolution, n_iterations=params.n_iterations, seed=params.seed
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
    clusters = cluster.cluster_table(labels, adata.obs_names, cell_types)
    figures = cluster.figures(
        adata.obsm["X_umap"],
        labels,
        table,
        metrics,
        resolution=params.resolution,
        seed=params.seed,
    )
    with io.Outputs() as out:
        io.write_parquet(clusters, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        plots = out.dir(args.plots)
        table.to_csv(plots / "contingency.csv")
        io.save_figures(figures, plots)


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
