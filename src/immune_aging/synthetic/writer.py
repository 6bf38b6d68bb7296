"""Assembling the counts: in memory, or incrementally into an h5ad file and its folder.

Donors are simulated in order, up to ``threads`` at a time; since each donor has
its own random stream, the result does not depend on the thread count nor on
the chunk size.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from immune_aging.synthetic.design import Design, design_simulation
from immune_aging.synthetic.sampling import h5ad_layout, simulate_donor
from immune_aging.synthetic.truth import gene_set_library, truth

log = logging.getLogger(__name__)


def simulate(design: Design, *, uns: Mapping[str, Any] | None = None, threads: int = 1) -> Any:
    """Simulate the whole dataset in memory (small sizes: tests, notebooks).

    Parameters
    ----------
    design
        The simulation design.
    uns
        Unstructured metadata to store.
    threads
        Donors simulated in parallel; the result is the same for any value.

    Returns
    -------
    anndata.AnnData
        The CELLxGENE-style dataset, counts in ``X``.
    """
    import anndata as ad

    x = _stack(list(_donor_blocks(design, threads)))
    return ad.AnnData(X=x, obs=design.obs.copy(), var=design.var.copy(), uns=dict(uns or {}))


def write_h5ad_incremental(
    design: Design,
    path: str | os.PathLike[str],
    *,
    chunk_cells: int,
    uns: Mapping[str, Any] | None = None,
    threads: int = 1,
) -> None:
    """Simulate and write the dataset to an h5ad file chunk by chunk.

    Memory holds the counts of one chunk of about ``chunk_cells`` cells (whole
    donors) at a time; they are written donor by donor. ``X`` is CSR float32
    with zstd-compressed, resizable datasets; the file reads with
    :func:`anndata.read_h5ad`, also in backed mode.

    Parameters
    ----------
    design
        The simulation design.
    path
        Destination file.
    chunk_cells
        Cells simulated before each write.
    uns
        Unstructured metadata to store (e.g. provenance).
    threads
        Donors simulated in parallel; the file is the same for any value.
    """
    import h5py
    from anndata.io import write_elem

    from immune_aging.io import H5AD_COMPRESSION

    comp = dict(H5AD_COMPRESSION)
    n_obs, n_vars = design.n_cells, design.n_genes
    # a chunk cache of several HDF5 chunks: donor blocks end mid-chunk, and a chunk is
    # compressed once, when complete, instead of on every partial write
    with h5py.File(path, "w", rdcc_nbytes=64 << 20) as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", design.obs, dataset_kwargs=comp)
        write_elem(f, "var", design.var, dataset_kwargs=comp)
        x = f.create_group("X")
        x.attrs["encoding-type"] = "csr_matrix"
        x.attrs["encoding-version"] = "0.1.0"
        x.attrs["shape"] = np.array([n_obs, n_vars], dtype=np.int64)
        block = 1 << 18
        data = x.create_dataset(
            "data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(block,), **comp
        )
        indices = x.create_dataset(
            "indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(block,), **comp
        )
        indptr = x.create_dataset(
            "indptr",
            shape=(n_obs + 1,),
            dtype=np.int64,
            chunks=(min(block, n_obs + 1),),
            **comp,
        )
        nnz = 0
        row = 0
        indptr[0] = 0
        for blocks in _chunks(design, chunk_cells, threads):
            size = nnz + sum(b.nnz for b in blocks)
            data.resize((size,))
            indices.resize((size,))
            while blocks:  # write donor by donor, freeing each: memory holds one chunk
                b = blocks.pop(0)
                data[nnz : nnz + b.nnz] = b.data
                indices[nnz : nnz + b.nnz] = b.indices
                indptr[row + 1 : row + 1 + b.shape[0]] = b.indptr[1:] + nnz
                nnz += b.nnz
                row += b.shape[0]
            log.info("simulated %d / %d cells", row, n_obs)
        for key in ("layers", "obsm", "obsp", "varm", "varp"):
            write_elem(f, key, {})
        write_elem(f, "uns", dict(uns or {}), dataset_kwargs=comp)


def _donor_blocks(design: Design, threads: int) -> Iterator[sp.csr_matrix]:
    """Yield every donor's counts in order, simulating up to ``threads`` donors at once."""
    n = len(design.donors)
    if threads <= 1:
        for d in range(n):
            yield simulate_donor(design, d)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[Future[sp.csr_matrix]] = deque()
        todo = iter(range(n))
        for d in itertools.islice(todo, 2 * threads):
            pending.append(pool.submit(simulate_donor, design, d))
        while pending:
            block = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(simulate_donor, design, nxt))
            yield block


def _chunks(design: Design, chunk_cells: int, threads: int) -> Iterator[list[sp.csr_matrix]]:
    """Yield lists of donor blocks holding about ``chunk_cells`` cells together."""
    pending: list[sp.csr_matrix] = []
    held = 0
    for block in _donor_blocks(design, threads):
        pending.append(block)
        held += block.shape[0]
        if held >= chunk_cells:
            yield pending
            pending, held = [], 0
    if pending:
        yield pending


def _stack(blocks: list[sp.csr_matrix]) -> sp.csr_matrix:
    if len(blocks) == 1:
        return blocks[0]
    return h5ad_layout(sp.vstack(blocks, format="csr", dtype=np.float32))


def write_simulation(
    out_dir: str | os.PathLike[str],
    *,
    chunk_cells: int,
    uns: Mapping[str, Any] | None = None,
    threads: int = 1,
    **settings: Any,
) -> dict[str, Any]:
    """Simulate into a folder: ``dataset.h5ad``, ``genesets.gmt`` and ``truth.json``.

    Parameters
    ----------
    out_dir
        An existing folder (normally a temporary from :class:`immune_aging.io.Outputs`).
    chunk_cells
        Cells simulated per write, see :func:`write_h5ad_incremental`.
    uns
        Unstructured metadata for the h5ad (e.g. provenance).
    threads
        Donors simulated in parallel; the files are the same for any value.
    **settings
        The arguments of :func:`~immune_aging.synthetic.design.design_simulation`
        (``seed, n_donors, n_cell_types, cells_per_donor, n_genes, doublet_rate,
        dying_rate, rbc_rate``).

    Returns
    -------
    dict
        Summary: cells, donors, genes, planted genes, doublets, dying and RBC cells.
    """
    from immune_aging import io

    design = design_simulation(**settings)
    out = Path(out_dir)
    write_h5ad_incremental(
        design, out / "dataset.h5ad", chunk_cells=chunk_cells, uns=uns, threads=threads
    )
    sets = gene_set_library(design)
    io.write_gmt(sets, out / "genesets.gmt", descriptions=dict.fromkeys(sets, "simulated"))
    t = truth(design)
    io.write_json(t, out / "truth.json")
    return {
        "n_cells": design.n_cells,
        "n_donors": len(design.donors),
        "n_genes": design.n_genes,
        "n_cell_types": len(design.cell_types),
        "n_planted_genes": len(t["log2fc_per_decade"]),
        "n_doublets": len(t["doublets"]),
        "n_dying_cells": len(t["dying_cells"]),
        "n_rbc_contaminated": len(t["rbc_contaminated"]),
    }
