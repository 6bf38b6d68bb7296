"""Stage ``preprocess``: HVGs, normalisation and PCA of the cells kept by QC.

Reads only the counts of the cells QC kept (streamed with
:func:`immune_aging.stages.filter.read_counts`) and writes ``pca.h5ad`` without an
``X`` matrix: the embedding, the gene table and the loadings only (later stages
read counts from ``filtered.h5ad``). The method is described in
:mod:`immune_aging.analysis.preprocess`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from immune_aging import io, stage
from immune_aging.analysis import preprocess
from immune_aging.errors import InputError
from immune_aging.params import as_dict
from immune_aging.stages.filter import read_counts

STAGE = "preprocess"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the stage's paths to its parser."""
    p.add_argument("--input", type=Path, required=True, help="filtered h5ad (raw counts)")
    p.add_argument("--cells", type=Path, required=True, help="QC cell table (parquet)")
    p.add_argument("--out", type=Path, required=True, help="PCA h5ad to write")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--plots", type=Path, required=True, help="folder of figures to write")


def read_keep(path: Path, obs_names: pd.Index, counts_path: Path) -> np.ndarray:
    """Return the QC ``keep`` flag of each cell of ``obs_names``.

    Parameters
    ----------
    path
        The QC cell table (parquet, index ``cell_id``, boolean ``keep``).
    obs_names
        Cells of the count matrix, in order.
    counts_path
        The count matrix file (for messages).

    Returns
    -------
    numpy.ndarray
        Boolean mask aligned with ``obs_names``.

    Raises
    ------
    InputError
        If the table is unreadable, lacks ``keep``, or its cells differ.
    """
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        table = pd.read_parquet(path, columns=["keep"])
    except Exception as exc:  # pyarrow raises several types
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "keep" in message:
            raise InputError(f"{path}: column 'keep' missing") from None
        raise InputError(f"{path}: not a readable parquet file ({message})") from None
    if table.index.name != "cell_id":
        raise InputError(f"{path}: index 'cell_id' missing")
    if table["keep"].dtype != bool:
        raise InputError(f"{path}: column 'keep' must be boolean, got {table['keep'].dtype}")
    if len(table) != len(obs_names) or not table.index.isin(obs_names).all():
        raise InputError(
            f"{path}: cell_id does not match the cells of {counts_path} "
            f"({len(table)} rows for {len(obs_names)} cells)"
        )
    return table["keep"].reindex(obs_names).to_numpy(dtype=bool)


def body(args: argparse.Namespace, params: Any) -> None:
    """Select HVGs, normalise, run PCA; write the embedding without X."""
    import matplotlib

    matplotlib.use("Agg")
    backed = io.read_h5ad(args.input, backed=True)
    try:
        keep = read_keep(args.cells, backed.obs_names, args.input)
        obs = backed.obs.loc[keep].copy()
        var = backed.var.copy()
    finally:
        backed.file.close()
    # stream the kept cells' counts only (filtered.h5ad holds checked raw counts in X)
    counts, _ = read_counts(args.input, "X", keep, drop_empty_genes=False)
    adata = ad.AnnData(X=counts, obs=obs, var=var)
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
    result.uns["provenance"] = io.provenance(STAGE, as_dict(params), [args.input, args.cells])
    variance = preprocess.variance_table(result)
    pca_fig = preprocess.plot_pca(result, seed=params.seed)
    elbow_fig = preprocess.plot_elbow(variance)
    log.info(
        "%d HVGs, %d blocked, %d used; PC1 explains %.1f %%",
        info["hvg_found"],
        info["hvg_blocked"],
        info["hvg_used"],
        100 * info["variance_ratio_pc1"],
    )
    with io.Outputs() as out:
        io.write_h5ad(result, out.file(args.out))
        io.write_json(info, out.file(args.metrics))
        plots = out.dir(args.plots)
        variance.to_csv(plots / "pca_variance_ratio.csv", index=False)
        io.save_figure(pca_fig, plots / "pca.png")
        io.save_figure(elbow_fig, plots / "pca_variance_ratio.png")


main = stage.main_for(STAGE, "Highly variable genes, normalisation and PCA.", add_arguments, body)

if __name__ == "__main__":
    sys.exit(main())
