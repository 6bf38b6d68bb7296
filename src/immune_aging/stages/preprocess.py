"""Stage ``preprocess``: HVGs, normalisation and PCA of the cells kept by QC.

Reads from the input file only the counts of the cells QC kept, of the genes the
``filter`` stage selected (:func:`immune_aging.counts.read_selection`), and writes
``pca.h5ad`` without an ``X`` matrix: the embedding, the gene table and the
loadings only (later stages read counts through the selection). The method is
described in :mod:`immune_aging.analysis.preprocess`.
"""

from __future__ import annotations

import logging
import sys

import anndata as ad
import numpy as np

from immune_aging import counts, io, provenance, stage
from immune_aging.analysis import preprocess
from immune_aging.params import PreprocessParams, as_dict

NAME = "preprocess"
PATHS = {
    "selection": "selection h5ad of the filter stage",
    "raw": "input h5ad holding the raw counts",
    "cells": "QC cell table (parquet)",
    "out": "PCA h5ad to write",
    "metrics": "metrics JSON to write",
    "plots": "folder of figures to write",
}
log = logging.getLogger(__name__)


def body(args, params: PreprocessParams) -> None:
    """Select HVGs, normalise, run PCA; write the embedding without X."""
    chosen = counts.read_selection(args.selection, args.raw)
    keep = counts.read_keep(args.cells, chosen.obs_names, args.selection)
    adata = ad.AnnData(X=chosen.read(keep), obs=chosen.obs.loc[keep].copy(), var=chosen.var)
    log.info("%d of %d cells kept by QC", adata.n_obs, len(keep))
    result, info = preprocess.preprocess(
        adata,
        keep=np.ones(adata.n_obs, dtype=bool),
        target_sum=params.target_sum,
        n_top_genes=params.n_top_genes,
        hvg_span=params.hvg_span,
        blocklist_regex=params.blocklist_regex,
        n_comps=params.n_comps,
        seed=params.seed,
    )
    result.uns["provenance"] = provenance.record(
        NAME, as_dict(params), [args.selection, args.raw, args.cells]
    )
    variance = preprocess.variance_table(result)
    figures = {
        "pca.png": preprocess.plot_pca(result, seed=params.seed),
        "pca_variance_ratio.png": preprocess.plot_elbow(variance),
    }
    with io.Outputs() as out:
        io.write_h5ad(result, out.file(args.out))
        io.write_json(info, out.file(args.metrics))
        plots = out.dir(args.plots)
        variance.to_csv(plots / "pca_variance_ratio.csv", index=False)
        io.save_figures(figures, plots)
    log.info(
        "%d HVGs, %d blocked, %d used; PC1 explains %.1f %%",
        info["hvg_found"],
        info["hvg_blocked"],
        info["hvg_used"],
        100 * info["variance_ratio_pc1"],
    )


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
