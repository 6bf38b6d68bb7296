"""The ``filter`` stage's selection of cells and genes, and reading counts through it.

- :func:`read_selection` reads the selection (the kept cells' rows and genes'
  columns in the input), checks it against the input, and returns a
  :class:`Selection` that reads the input's counts through it: all at once
  (:meth:`Selection.read`) or a batch of whole groups of cells at a time
  (:meth:`Selection.read_batches`; :mod:`immune_aging.batches` sends the batches to
  a cluster's workers);
- :func:`group_batches` splits cells into batches of whole groups (donors,
  pools) of at most :func:`batch_cells` cells.

Every fault raises :class:`~immune_aging.errors.InputError` with one line naming
the file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from scipy import sparse

from immune_aging.counts import matrix_shape, node_key, read_counts
from immune_aging.errors import InputError
from immune_aging.guard import reading
from immune_aging.threads import positive_from_env

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- batches

#: Cells per batch at most when the ``qc`` and ``preprocess`` stages read whole
#: groups (donors, pools) of cells at a time (:func:`batch_cells`).
BATCH_CELLS = 200_000
#: Environment variable overriding :data:`BATCH_CELLS` (outputs do not depend on it).
BATCH_CELLS_ENV = "IMMUNE_AGING_BATCH_CELLS"


def batch_cells() -> int:
    """Return the cells per batch: ``$IMMUNE_AGING_BATCH_CELLS`` or :data:`BATCH_CELLS`.

    Returns
    -------
    int
        A positive number of cells.

    Raises
    ------
    InputError
        If the variable is set to anything but a positive integer.
    """
    try:
        n = positive_from_env(BATCH_CELLS_ENV, "number of cells")
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return BATCH_CELLS if n is None else n


def group_batches(labels: np.ndarray, max_cells: int) -> list[np.ndarray]:
    """Split cells into batches of whole groups, of at most ``max_cells`` cells.

    Groups are taken in the order of their first cell; a batch holds consecutive
    groups in that order while they fit (a group larger than ``max_cells`` is a
    batch of its own). When groups are contiguous in the file, so is each batch.

    Parameters
    ----------
    labels
        Group of each cell (compared as strings).
    max_cells
        Cells per batch at most, unless one group has more.

    Returns
    -------
    list of numpy.ndarray
        Positions of each batch's cells, ascending; every cell in exactly one.
    """
    labels = pd.Series(np.asarray(labels)).astype(str).to_numpy()
    if len(labels) == 0:
        return []
    codes, uniques = pd.factorize(labels)  # codes in order of first appearance
    sizes = np.bincount(codes, minlength=len(uniques))
    batch_of_group = np.zeros(len(uniques), dtype=np.int64)
    batch, filled = 0, 0
    for g, size in enumerate(sizes):
        if filled and filled + size > max_cells:
            batch, filled = batch + 1, 0
        batch_of_group[g] = batch
        filled += int(size)
    of_cell = batch_of_group[codes]
    return [np.flatnonzero(of_cell == b) for b in range(batch + 1)]


#: obs column of the selection: each kept cell's row in the input file.
ROW = "row"
#: var column of the selection: each kept gene's column in the input file's counts.
COLUMN = "column"
#: uns key of the selection: where the counts are and the input's shape.
SELECTION_UNS = "selection"


@dataclass(frozen=True)
class Selection:
    """The cells and genes the ``filter`` stage kept, matched with the input file.

    Made by :func:`read_selection`; the counts stay in the input file and are read
    through :meth:`read` and :meth:`read_batches`.

    Attributes
    ----------
    path
        The selection file (``selection.h5ad``).
    source
        The input h5ad holding the raw counts.
    location
        ``"X"`` or ``"raw.X"``: where in ``source`` the raw counts are.
    obs
        Annotations of the kept cells (index: cell IDs), in file order.
    var
        The kept genes (index: gene IDs; ``feature_name``), in file order.
    rows
        Row of each kept cell in ``source`` (ascending).
    columns
        Column of each kept gene in ``source``'s counts (ascending).
    shape
        ``(cells, genes)`` of ``source``'s counts.
    """

    path: Path
    source: Path
    location: str
    obs: pd.DataFrame
    var: pd.DataFrame
    rows: np.ndarray
    columns: np.ndarray
    shape: tuple[int, int]

    @property
    def obs_names(self) -> pd.Index:
        """The kept cells' IDs, in order."""
        return self.obs.index

    def row_mask(self, keep: np.ndarray | None = None) -> np.ndarray:
        """Return the mask over ``source``'s rows of the kept cells (or of a subset).

        Parameters
        ----------
        keep
            Boolean mask over the selection's cells (None: all of them).

        Returns
        -------
        numpy.ndarray
            Boolean mask over the rows of ``source``.
        """
        mask = np.zeros(self.shape[0], dtype=bool)
        mask[self.rows if keep is None else self.rows[np.asarray(keep, dtype=bool)]] = True
        return mask

    def gene_mask(self) -> np.ndarray:
        """Return the mask over ``source``'s genes of the kept genes.

        Returns
        -------
        numpy.ndarray
            Boolean mask over the columns of ``source``'s counts.
        """
        mask = np.zeros(self.shape[1], dtype=bool)
        mask[self.columns] = True
        return mask

    def read(
        self, keep: np.ndarray | None = None, genes: np.ndarray | None = None
    ) -> sparse.csr_matrix:
        """Read the raw counts of the kept cells (or a subset) and genes (or a subset).

        Only the file's blocks from the first to the last cell asked for are read:
        a subset of cells contiguous in the file costs its own rows.

        Parameters
        ----------
        keep
            Boolean mask over the selection's cells (None: all of them).
        genes
            Boolean mask over the selection's genes (None: all of them).

        Returns
        -------
        scipy.sparse.csr_matrix
            float32 counts, cells x genes, in the selection's order.
        """
        columns = self.gene_mask()
        if genes is not None:
            genes = np.asarray(genes, dtype=bool)
            if len(genes) != len(self.columns):
                raise ValueError(
                    f"genes has {len(genes)} entries, the selection {len(self.columns)}"
                )
            columns[self.columns[~genes]] = False
        matrix, _ = read_counts(
            self.source,
            self.location,
            self.row_mask(keep),
            genes=columns,
            drop_empty_genes=False,
        )
        return matrix

    def read_batches(
        self,
        labels: np.ndarray,
        *,
        keep: np.ndarray | None = None,
        max_cells: int | None = None,
        label: str = "batch",
    ) -> Iterator[tuple[np.ndarray, sparse.csr_matrix]]:
        """Read the counts of whole groups of cells, a batch of groups at a time.

        The batches are those of :func:`group_batches`; each is read with
        :meth:`read` (the blocks of the file spanning its cells), and a line is
        logged after each: groups and cells done, elapsed seconds.

        Parameters
        ----------
        labels
            Group of each selected cell (all of them, or those of ``keep``).
        keep
            Boolean mask over the selection's cells (None: all of them).
        max_cells
            Cells per batch at most, unless one group has more (None:
            :func:`batch_cells`).
        label
            Names the batches in the progress lines.

        Yields
        ------
        tuple
            ``(positions, counts)``: ascending positions of the batch's cells among
            the cells read (those of ``keep``), and their float32 CSR counts over
            the selection's genes.
        """
        chosen = np.arange(len(self.rows)) if keep is None else np.flatnonzero(keep)
        labels = np.asarray(labels)
        if len(labels) != len(chosen):
            raise ValueError(f"labels has {len(labels)} entries for {len(chosen)} cells")
        batches = group_batches(labels, batch_cells() if max_cells is None else max_cells)
        n_groups = len(pd.unique(labels))
        start = time.perf_counter()
        groups_done = cells_done = 0
        for i, positions in enumerate(batches, start=1):
            mask = np.zeros(len(self.rows), dtype=bool)
            mask[chosen[positions]] = True
            counts = self.read(mask)
            groups_done += len(pd.unique(labels[positions]))
            cells_done += len(positions)
            log.info(
                "%s %d of %d: %d of %d groups, %d of %d cells read, %.0f s",
                label,
                i,
                len(batches),
                groups_done,
                n_groups,
                cells_done,
                len(labels),
                time.perf_counter() - start,
            )
            yield positions, counts


def _positions(values: Any, n: int, what: str, path: Path) -> np.ndarray:
    """Check a column of positions (integers, ascending, below ``n``) and return it."""
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        raise InputError(f"{path}: {what} must hold integer positions, got {values.dtype}")
    values = values.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() >= n):
        raise InputError(f"{path}: {what} holds positions outside 0..{n - 1}")
    if values.size > 1 and (np.diff(values) <= 0).any():
        raise InputError(f"{path}: {what} is not strictly ascending")
    return values


def _index(fh: Any, group: str, path: Path) -> pd.Index:
    """Read the index (cell or gene IDs) of the ``obs`` or ``var`` group of an h5ad file."""
    from anndata.io import read_elem

    node = fh[group]
    name = node.attrs.get("_index", "_index")
    if name not in node:
        raise InputError(f"{path}: {group} has no index")
    return pd.Index(read_elem(node[name])).astype(str)


def read_selection(path: str | os.PathLike[str], source: str | os.PathLike[str]) -> Selection:
    """Read the ``filter`` stage's selection and check it against the input it came from.

    Parameters
    ----------
    path
        ``selection.h5ad``: obs the kept cells with their row in ``source`` (column
        ``row``), var the kept genes with their column (``column``) and
        ``feature_name``, ``uns['selection']`` the location of the counts and the
        input's shape.
    source
        The input h5ad (``data/raw/dataset.h5ad``).

    Returns
    -------
    Selection
        The selection, ``obs`` and ``var`` without the position columns.

    Raises
    ------
    InputError
        One line when either file is unreadable, the selection lacks a part, or it
        does not match ``source``: another shape, or other cell or gene IDs at its
        positions (it was made from another file: rerun the filter stage).
    """
    from immune_aging import guard, io

    path, source = Path(path), Path(source)
    adata = io.read_h5ad(path)
    info = adata.uns.get(SELECTION_UNS)
    if not isinstance(info, dict) or not {"location", "n_obs", "n_vars"} <= set(info):
        raise InputError(
            f"{path}: uns {SELECTION_UNS!r} (location, n_obs, n_vars) missing: not a selection "
            "of the filter stage"
        )
    location = str(info["location"])
    if location not in ("X", "raw.X"):
        raise InputError(f"{path}: uns {SELECTION_UNS!r} location {location!r} is not X or raw.X")
    shape = (int(info["n_obs"]), int(info["n_vars"]))
    for kind, frame, column in (("obs", adata.obs, ROW), ("var", adata.var, COLUMN)):
        if column not in frame.columns:
            raise InputError(f"{path}: {kind} column {column!r} missing")
    if "feature_name" not in adata.var.columns:
        raise InputError(f"{path}: var column 'feature_name' missing")
    rows = _positions(adata.obs[ROW], shape[0], f"obs column {ROW!r}", path)
    columns = _positions(adata.var[COLUMN], shape[1], f"var column {COLUMN!r}", path)

    guard.check_h5ad(source)
    with h5py.File(source, "r") as fh, reading(source, "obs and var"):
        if node_key(location) not in fh:
            raise InputError(
                f"{path}: made from the counts in {location}, but {source} has no {location}: "
                "rerun the filter stage"
            )
        found = matrix_shape(fh[node_key(location)])
        if found != shape:
            raise InputError(
                f"{path}: made from an input of {shape[0]} cells x {shape[1]} genes, but "
                f"{source} has {found[0]} x {found[1]}: rerun the filter stage"
            )
        cells = _index(fh, "obs", source)
        gene_ids = _index(fh, "var" if location == "X" else "raw/var", source)
    for what, ids, names, positions in (
        ("cell", cells, adata.obs_names, rows),
        ("gene", gene_ids, adata.var_names, columns),
    ):
        there = ids[positions]
        differ = np.flatnonzero(there != names.astype(str))
        if differ.size:
            i = int(differ[0])
            raise InputError(
                f"{path}: {what} {names[i]!r} is {there[i]!r} in {source} (position "
                f"{int(positions[i])}): made from another input, rerun the filter stage"
            )
    return Selection(
        path=path,
        source=source,
        location=location,
        obs=adata.obs.drop(columns=ROW),
        var=adata.var.drop(columns=COLUMN),
        rows=rows,
        columns=columns,
        shape=shape,
    )
