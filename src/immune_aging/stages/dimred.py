"""Stage ``dimred``: Harmony on the PCA by donor, the kNN graph and UMAP.

Reads ``pca.h5ad`` (cells, no genes' values), corrects ``obsm['X_pca']`` for the
donor with Harmony, builds the neighbour graph on the leading ``n_pcs`` corrected
components and lays it out with UMAP (:mod:`immune_aging.analysis.dimred`). Writes
``embedding.h5ad`` holding only what this stage adds (no ``X``, no genes), the
metrics (Harmony's iterations and how well donors mix before and after) and UMAP
figures. Above ``umap_max_cells`` cells UMAP is laid out on a sample and the other
cells' coordinates are NaN.
"""

from __future__ import annotations

import logging
import sys

import numpy as np

from immune_aging import io, provenance, stage, threads
from immune_aging.analysis import dimred
from immune_aging.params import DimredParams, as_dict

NAME = "dimred"
PATHS = {
    "input": "pca.h5ad of the preprocess stage",
    "out": "embedding h5ad to write",
    "metrics": "metrics JSON to write",
    "plots": "folder of figures to write",
}
log = logging.getLogger(__name__)


def body(args, params: DimredParams) -> None:
    """Integrate donors, build the graph and UMAP; write embedding, metrics, figures."""
    adata = io.read_h5ad(args.input)
    stage.require(adata, args.input, obs=dimred.OBS_COLUMNS, notna=dimred.OBS_COLUMNS)
    hint = " (expected the PCA of the preprocess stage)"
    stage.require(adata, args.input, obsm=["X_pca"], hint=hint)
    with stage.about(args.input):
        dimred.check_pca(
            np.asarray(adata.obsm["X_pca"]), n_pcs=params.n_pcs, n_neighbors=params.n_neighbors
        )
    log.info("%s: %d cells, %d PCs", args.input, adata.n_obs, adata.obsm["X_pca"].shape[1])
    emb, metrics = dimred.integrate_and_embed(
        adata,
        harmony_max_iter=params.harmony_max_iter,
        n_neighbors=params.n_neighbors,
        n_pcs=params.n_pcs,
        exact_knn_max_cells=params.exact_knn_max_cells,
        umap_min_dist=params.umap_min_dist,
        umap_max_cells=params.umap_max_cells,
        seed=params.seed,
        n_threads=threads.n_threads(),
    )
    emb.uns["provenance"] = provenance.record(NAME, as_dict(params), [args.input])
    figures = dimred.figures(emb, seed=params.seed)
    with io.Outputs() as out:
        io.write_h5ad(emb, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        io.save_figures(figures, out.dir(args.plots))
    log.info("%d cells embedded, written to %s", emb.n_obs, args.out)


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
