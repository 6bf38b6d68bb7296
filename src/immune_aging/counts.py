"""Raw counts and cell tables: the one reader the stages share.

- :func:`kept_blocks` streams the raw counts of the kept cells of an h5ad file
  (``X`` or ``raw.X``, CSR, CSC or dense) in blocks of rows, checking every
  stored value with :func:`check_counts`;
- :func:`read_counts` assembles them into one CSR matrix whose arrays are
  allocated at their final size from the file's ``indptr``, so peak memory is the
  result plus one block (anndata's backed subsetting needs 2-3 times the result);
  both can keep a subset of the genes;
- :func:`expressed_genes` finds the genes with any count in the kept cells;
- :func:`read_selection` reads the ``filter`` stage's selection (the kept cells'
  rows and genes' columns in the input), checks it against the input, and reads
  the input's counts through it (:class:`Selection`);
- :func:`read_keep` and :func:`read_cells` read the per-cell table of the ``qc``
  stage (``cells.parquet``) aligned with the cells of a count matrix;
- :func:`gene_table` returns the gene annotations matching the counts' columns.

Every fault raises :class:`~immune_aging.errors.InputError` with one line naming
the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from scipy import sparse

from immune_aging.errors import InputError
from immune_aging.executor import Progress
from immune_aging.guard import reading

log = logging.getLogger(__name__)

#: Stored entries (dense: values) read per block while streaming counts.
BLOCK_VALUES = 1 << 23
#: The index (or column) naming cells in ``cells.parquet``.
CELL_ID = "cell_id"


# --------------------------------------------------------------------------- values


def count_problem(values: np.ndarray) -> str | None:
    """Describe why stored matrix values are not raw counts, or return None when they are.

    Raw counts are finite, non-negative and integer-valued (any numeric dtype).

    Parameters
    ----------
    values
        The stored values (a sparse matrix's ``data``, or dense values).

    Returns
    -------
    str or None
        E.g. ``"non-integer values (e.g. 2.5)"``, ``"negative values (e.g. -1)"``,
        ``"non-finite values (e.g. nan)"`` or ``"values of type <U3"``.
    """
    values = np.asarray(values)
    if values.size == 0:
        return None
    if values.dtype.kind in "iu":
        negative = values[values < 0]
        return f"negative values (e.g. {negative[0]:g})" if negative.size else None
    if values.dtype.kind != "f":
        return f"values of type {values.dtype}"
    with np.errstate(invalid="ignore"):  # a signalling NaN (damaged file) would warn
        for what, bad in (
            ("non-finite", ~np.isfinite(values)),
            ("non-integer", values != np.floor(values)),
            ("negative", values < 0),
        ):
            if bad.any():
                return f"{what} values (e.g. {values[bad][0]:.4g})"
    return None


def check_counts(values: np.ndarray, path: str | os.PathLike[str], location: str) -> None:
    """Refuse stored matrix values that are not raw counts (see :func:`count_problem`).

    Parameters
    ----------
    values
        The stored values.
    path
        The file they came from.
    location
        Where in the file (``"X"``, ``"raw.X"``).

    Raises
    ------
    InputError
        ``<path>: <location> holds non-integer values (e.g. 2.5): raw counts are
        required`` and the like.
    """
    problem = count_problem(values)
    if problem is not None:
        raise InputError(f"{path}: {location} holds {problem}: raw counts are required")


# --------------------------------------------------------------------------- structure


def check_csr_indptr(indptr: Any, n_rows: int, nnz: int, *, where: str) -> None:
    """Check the row pointer of a CSR matrix (or the column pointer of a CSC one).

    Parameters
    ----------
    indptr
        The pointer array (1-D, integers).
    n_rows
        Rows of the matrix (columns for CSC).
    nnz
        Stored entries (the length of ``data`` and ``indices``).
    where
        Prefix of the message (file and matrix).

    Raises
    ------
    InputError
        ``<where>: corrupt sparse matrix (...)`` unless ``indptr`` has
        ``n_rows + 1`` entries, starts at 0, never decreases and ends at ``nnz``.
    """
    indptr = np.asarray(indptr)
    if indptr.ndim != 1 or indptr.dtype.kind not in "iu":
        raise InputError(f"{where}: corrupt sparse matrix (indptr is not a 1-D integer array)")
    if len(indptr) != n_rows + 1:
        raise InputError(
            f"{where}: corrupt sparse matrix (indptr has {len(indptr)} entries for "
            f"{n_rows} rows, expected {n_rows + 1})"
        )
    if int(indptr[0]) != 0:
        raise InputError(
            f"{where}: corrupt sparse matrix (indptr starts at {int(indptr[0])}, not 0)"
        )
    steps = np.diff(indptr.astype(np.int64, copy=False))
    if steps.size and int(steps.min()) < 0:
        row = int(np.argmax(steps < 0))
        raise InputError(
            f"{where}: corrupt sparse matrix (indptr decreases at row {row}: "
            f"{int(indptr[row])} then {int(indptr[row + 1])})"
        )
    if int(indptr[-1]) != nnz:
        raise InputError(
            f"{where}: corrupt sparse matrix (indptr ends at {int(indptr[-1])}, but there are "
            f"{nnz} stored entries)"
        )


def check_csr_block(indptr: Any, indices: Any, n_cols: int, *, where: str) -> None:
    """Check a block of CSR rows: its row pointer and that column indices are in range.

    ``indptr`` is relative to the block (starts at 0). The check is two passes of
    min/max over the block, cheap next to reading it.

    Parameters
    ----------
    indptr
        Row pointer of the block.
    indices
        Column indices of its stored entries.
    n_cols
        Columns of the matrix.
    where
        Prefix of the message (file and matrix).

    Raises
    ------
    InputError
        ``<where>: corrupt sparse matrix (...)`` naming the first defect.
    """
    indices = np.asarray(indices)
    check_csr_indptr(indptr, len(indptr) - 1, len(indices), where=where)
    if indices.size == 0:
        return
    if indices.dtype.kind not in "iu":
        raise InputError(f"{where}: corrupt sparse matrix (column indices are not integers)")
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= n_cols:
        bad = low if low < 0 else high
        raise InputError(
            f"{where}: corrupt sparse matrix (column index {bad} outside 0..{n_cols - 1})"
        )


# --------------------------------------------------------------------------- streaming


def _node_key(location: str) -> str:
    return "X" if location == "X" else "raw/X"


def matrix_shape(node: Any) -> tuple[int, int]:
    """Return ``(rows, columns)`` of an h5ad matrix node (dataset or sparse group).

    Parameters
    ----------
    node
        An ``h5py`` dataset (dense) or group (sparse, with a ``shape`` attribute).

    Returns
    -------
    tuple of int
        The shape.
    """
    shape = node.shape if isinstance(node, h5py.Dataset) else node.attrs["shape"]
    return int(shape[0]), int(shape[1])


def _row_blocks(node: Any, shape: tuple[int, int]) -> Iterator[tuple[int, sparse.csr_matrix]]:
    """Yield ``(first row, CSR block)`` over consecutive rows of an h5ad matrix."""
    n_rows, n_cols = shape
    encoding = None if isinstance(node, h5py.Dataset) else node.attrs.get("encoding-type")
    if encoding == "csr_matrix":
        indptr = node["indptr"][:]
        data, indices = node["data"], node["indices"]
        per_row = max(1, int(indptr[-1]) // max(n_rows, 1))
        step = max(1, BLOCK_VALUES // per_row)
        for a in range(0, n_rows, step):
            b = min(a + step, n_rows)
            lo, hi = int(indptr[a]), int(indptr[b])
            yield (
                a,
                sparse.csr_matrix(
                    (data[lo:hi], indices[lo:hi], indptr[a : b + 1] - lo), shape=(b - a, n_cols)
                ),
            )
        return
    step = max(1, BLOCK_VALUES // max(n_cols, 1))
    if encoding is None:  # dense
        for a in range(0, n_rows, step):
            yield a, sparse.csr_matrix(node[a : a + step])
        return
    if encoding == "csc_matrix":
        from anndata.io import sparse_dataset

        matrix = sparse_dataset(node)
        for a in range(0, n_rows, step):
            yield a, sparse.csr_matrix(matrix[a : a + step])
        return
    raise InputError(f"unsupported matrix encoding {encoding!r}")


def _entries_bound(node: Any, keep: np.ndarray) -> int | None:
    """Return the stored entries of the kept rows of a CSR matrix (None otherwise)."""
    if isinstance(node, h5py.Dataset) or node.attrs.get("encoding-type") != "csr_matrix":
        return None
    return int(np.diff(node["indptr"][:])[keep].sum())


@dataclass(frozen=True)
class Block:
    """Counts of the kept cells among consecutive rows of a matrix.

    Attributes
    ----------
    start
        First row of the block in the file.
    rows
        Positions (in the file) of the kept rows, ascending.
    counts
        CSR counts of those rows (all genes; no explicit zeros, duplicates summed).
    """

    start: int
    rows: np.ndarray
    counts: sparse.csr_matrix


def _take_columns(block: sparse.csr_matrix, genes: np.ndarray) -> sparse.csr_matrix:
    """Keep the columns ``genes`` (boolean mask) of a CSR block, renumbered in order."""
    chosen = genes[block.indices]
    wide = block.nnz >= np.iinfo(np.int32).max
    before = np.zeros(block.nnz + 1, dtype=np.int64 if wide else np.int32)
    np.cumsum(chosen, out=before[1:])  # entries kept before each stored entry
    new_column = (np.cumsum(genes) - 1).astype(block.indices.dtype)
    return sparse.csr_matrix(
        (block.data[chosen], new_column[block.indices[chosen]], before[block.indptr]),
        shape=(block.shape[0], int(genes.sum())),
    )


def kept_blocks(
    path: str | os.PathLike[str],
    location: str,
    keep: np.ndarray,
    *,
    genes: np.ndarray | None = None,
) -> Iterator[Block]:
    """Stream the raw counts of the kept cells, one block of rows at a time.

    Blocks without a kept cell are skipped. Every stored value is checked with
    :func:`check_counts`.

    Parameters
    ----------
    path
        The h5ad file.
    location
        ``"X"`` or ``"raw.X"``.
    keep
        Boolean mask over the file's rows.
    genes
        Boolean mask over the file's columns: only these genes are returned, in
        file order (None: every gene).

    Yields
    ------
    Block
        The kept rows of each block, in file order.

    Raises
    ------
    InputError
        If the matrix and ``keep`` or ``genes`` disagree in length or a value is
        not a count.
    """
    path = Path(path)
    with h5py.File(path, "r") as fh, reading(path, location):
        node = fh[_node_key(location)]
        shape = matrix_shape(node)
        if shape[0] != len(keep):
            raise InputError(f"{path}: {location} has {shape[0]} rows, obs has {len(keep)}")
        if genes is not None and shape[1] != len(genes):
            raise InputError(f"{path}: {location} has {shape[1]} columns, var has {len(genes)}")
        progress = Progress(f"{path.name}: rows read", total=shape[0])
        for a, block in _row_blocks(node, shape):
            progress.step(block.shape[0])
            check_csr_block(block.indptr, block.indices, shape[1], where=f"{path}: {location}")
            local = np.flatnonzero(keep[a : a + block.shape[0]])
            if local.size == 0:
                continue
            sub = block if local.size == block.shape[0] else block[local]
            sub.sum_duplicates()
            sub.eliminate_zeros()
            check_counts(sub.data, path, location)
            if genes is not None and not genes.all():
                sub = _take_columns(sub, genes)
            yield Block(start=a, rows=a + local, counts=sub)


def read_counts(
    path: str | os.PathLike[str],
    location: str,
    keep: np.ndarray,
    *,
    genes: np.ndarray | None = None,
    drop_empty_genes: bool = True,
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Read the kept cells' raw counts, dropping genes without any count.

    Parameters
    ----------
    path
        The h5ad file.
    location
        ``"X"`` or ``"raw.X"``.
    keep
        Boolean mask of the cells to read.
    genes
        Boolean mask of the genes to read (None: every gene).
    drop_empty_genes
        Of those, drop the genes without any count in the kept cells (else keep
        every one).

    Returns
    -------
    tuple
        ``(counts, genes)``: CSR float32 counts (kept cells x genes read, no
        explicit zeros, sorted indices) and the boolean mask of the genes read over
        all genes of the file.

    Raises
    ------
    InputError
        If a value is negative, fractional or not finite.
    """
    path = Path(path)
    with h5py.File(path, "r") as fh:
        node = fh[_node_key(location)]
        n_cols = matrix_shape(node)[1]
        bound = _entries_bound(node, keep) if len(keep) == matrix_shape(node)[0] else None
    wide = max(bound or 0, n_cols) >= np.iinfo(np.int32).max
    index_dtype = np.int64 if wide else np.int32
    data = np.empty(bound or 0, dtype=np.float32)
    indices = np.empty(bound or 0, dtype=index_dtype)
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    row_nnz: list[np.ndarray] = []
    totals = np.zeros(n_cols, dtype=np.float64)
    pos = 0
    chosen = np.ones(n_cols, dtype=bool) if genes is None else np.asarray(genes, dtype=bool)
    columns = np.flatnonzero(chosen)
    for block in kept_blocks(path, location, keep, genes=chosen):
        sub = block.counts
        totals[columns] += np.bincount(sub.indices, weights=sub.data, minlength=len(columns))
        row_nnz.append(np.diff(sub.indptr))
        if bound is None:
            pieces.append((sub.data.astype(np.float32), sub.indices.astype(index_dtype)))
        else:
            data[pos : pos + sub.nnz] = sub.data
            indices[pos : pos + sub.nnz] = sub.indices
        pos += sub.nnz
    if bound is None:
        data = np.concatenate([p[0] for p in pieces]) if pieces else data
        indices = np.concatenate([p[1] for p in pieces]) if pieces else indices
    elif pos < bound:  # explicit zeros, duplicates or genes not read were dropped
        data.resize(pos, refcheck=False)  # in place: no second copy
        indices.resize(pos, refcheck=False)
    read = chosen & (totals > 0) if drop_empty_genes else chosen
    if not read[columns].all():  # renumber the columns read onto the genes kept
        new_column = (np.cumsum(read[columns]) - 1).astype(index_dtype)
        for lo in range(0, len(indices), BLOCK_VALUES):  # renumber columns in place
            indices[lo : lo + BLOCK_VALUES] = new_column[indices[lo : lo + BLOCK_VALUES]]
    nnz_per_row = np.concatenate(row_nnz) if row_nnz else np.zeros(0, dtype=np.int64)
    indptr = np.zeros(len(nnz_per_row) + 1, dtype=index_dtype)
    np.cumsum(nnz_per_row, out=indptr[1:])
    counts = sparse.csr_matrix(
        (data, indices, indptr), shape=(len(nnz_per_row), int(read.sum())), copy=False
    )
    log.info(
        "read %d cells, %d stored counts; %d of %d genes",
        counts.shape[0],
        counts.nnz,
        counts.shape[1],
        n_cols,
    )
    return counts, read


def gene_table(adata: Any, location: str, path: str | os.PathLike[str]) -> pd.DataFrame:
    """Return the gene annotations matching the columns of the raw counts.

    Parameters
    ----------
    adata
        The dataset (backed is fine).
    location
        ``"X"`` or ``"raw.X"``.
    path
        The file, for messages.

    Returns
    -------
    pandas.DataFrame
        ``var`` (or ``raw.var``, with ``feature_name`` taken from ``var`` when it
        has none and the genes are the same).

    Raises
    ------
    InputError
        If ``raw.var`` has no symbols and its genes differ from ``var``.
    """
    if location == "X":
        return adata.var
    raw_var = adata.raw.var
    if "feature_name" in raw_var.columns:
        return raw_var
    if raw_var.index.equals(adata.var.index):
        return raw_var.assign(feature_name=adata.var["feature_name"].to_numpy())
    raise InputError(f"{path}: raw.var has no 'feature_name' column and its genes differ from var")


def expressed_genes(path: str | os.PathLike[str], location: str, keep: np.ndarray) -> np.ndarray:
    """Return which genes have any count in the kept cells, streaming the counts.

    Memory is one block of rows: nothing is assembled.

    Parameters
    ----------
    path
        The h5ad file.
    location
        ``"X"`` or ``"raw.X"``.
    keep
        Boolean mask of the cells.

    Returns
    -------
    numpy.ndarray
        Boolean mask over the file's genes.

    Raises
    ------
    InputError
        If a value is negative, fractional or not finite.
    """
    with h5py.File(path, "r") as fh:
        n_cols = matrix_shape(fh[_node_key(location)])[1]
    seen = np.zeros(n_cols, dtype=bool)
    n_cells = n_counts = 0
    for block in kept_blocks(path, location, keep):
        seen[block.counts.indices] = True  # explicit zeros were removed
        n_cells += block.counts.shape[0]
        n_counts += block.counts.nnz
    log.info(
        "read %d cells, %d stored counts; %d of %d genes have counts",
        n_cells,
        n_counts,
        int(seen.sum()),
        n_cols,
    )
    return seen


# --------------------------------------------------------------------------- selection

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
    through :meth:`read` and :meth:`blocks`.

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

    def read(self, keep: np.ndarray | None = None) -> sparse.csr_matrix:
        """Read the raw counts of the kept cells (or a subset) and genes.

        Parameters
        ----------
        keep
            Boolean mask over the selection's cells (None: all of them).

        Returns
        -------
        scipy.sparse.csr_matrix
            float32 counts, cells x the selection's genes, in the selection's order.
        """
        matrix, _ = read_counts(
            self.source,
            self.location,
            self.row_mask(keep),
            genes=self.gene_mask(),
            drop_empty_genes=False,
        )
        return matrix

    def blocks(
        self, keep: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, sparse.csr_matrix]]:
        """Stream the raw counts of the kept cells (or a subset), one block at a time.

        Parameters
        ----------
        keep
            Boolean mask over the selection's cells (None: all of them).

        Yields
        ------
        tuple
            ``(positions, counts)``: positions of the block's cells in ``obs`` and
            their float32 CSR counts over the selection's genes.
        """
        for block in kept_blocks(
            self.source, self.location, self.row_mask(keep), genes=self.gene_mask()
        ):
            counts = block.counts
            if counts.dtype != np.float32:
                counts = counts.astype(np.float32)
            yield np.searchsorted(self.rows, block.rows), counts


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
        if _node_key(location) not in fh:
            raise InputError(
                f"{path}: made from the counts in {location}, but {source} has no {location}: "
                "rerun the filter stage"
            )
        found = matrix_shape(fh[_node_key(location)])
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


# --------------------------------------------------------------------------- cell tables


def read_cells(path: str | os.PathLike[str], columns: Sequence[str] = ()) -> pd.DataFrame:
    """Read a per-cell table (``cells.parquet``) indexed by ``cell_id``.

    Parameters
    ----------
    path
        The parquet file; ``cell_id`` is its index or a column.
    columns
        Columns that must be present.

    Returns
    -------
    pandas.DataFrame
        The table, index ``cell_id`` (strings, unique).

    Raises
    ------
    InputError
        If the file is missing or unreadable, has no ``cell_id``, repeats one, or
        lacks a required column.
    """
    from immune_aging import io

    path = Path(path)
    table = io.read_parquet(path, columns=[c for c in columns if c != CELL_ID])
    if CELL_ID in table.columns:
        table = table.set_index(CELL_ID)
    elif table.index.name != CELL_ID:
        raise InputError(f"{path}: no {CELL_ID!r} index or column")
    table.index = table.index.astype(str)
    if not table.index.is_unique:
        raise InputError(
            f"{path}: {CELL_ID} {table.index[table.index.duplicated()][0]!r} repeated"
        )
    return table


def read_keep(
    path: str | os.PathLike[str], cell_ids: pd.Index, counts_path: str | os.PathLike[str]
) -> np.ndarray:
    """Return the QC ``keep`` flag of every cell of a count matrix, in its order.

    Parameters
    ----------
    path
        The QC cell table (``cell_id`` index or column, boolean ``keep``).
    cell_ids
        The cells of the count matrix, in order.
    counts_path
        The count matrix file, named in messages.

    Returns
    -------
    numpy.ndarray
        Boolean mask aligned with ``cell_ids``.

    Raises
    ------
    InputError
        If the table is unreadable, lacks ``keep``, has a non-boolean or missing
        ``keep``, or does not list exactly the cells of ``counts_path``.
    """
    path = Path(path)
    table = read_cells(path, ["keep"])
    keep = table["keep"]
    if isinstance(keep.dtype, pd.BooleanDtype):
        if keep.isna().any():
            raise InputError(f"{path}: column 'keep' has missing values")
        keep = keep.astype(bool)
    if keep.dtype != bool:
        raise InputError(f"{path}: column 'keep' must be boolean, got {keep.dtype}")
    cell_ids = pd.Index(cell_ids).astype(str)
    name = counts_path
    missing = cell_ids.difference(table.index)
    if len(missing):
        raise InputError(
            f"{path}: {len(missing)} cells of {name} are not listed (e.g. {missing[0]!r}); "
            "expected one row per cell"
        )
    extra = table.index.difference(cell_ids)
    if len(extra):
        raise InputError(f"{path}: {len(extra)} cells are not in {name} (e.g. {extra[0]!r})")
    return keep.reindex(cell_ids).to_numpy(dtype=bool)


# --------------------------------------------------------------------------- pseudobulk

#: obs columns of ``pseudobulk.h5ad`` that the de and predict stages read.
SAMPLE_OBS = ("cell_type", "donor_id", "sex", "age")


def validate_pseudobulk(adata: Any, path: str | os.PathLike[str]) -> None:
    """Check that a pseudobulk AnnData holds what the de and predict stages read.

    Parameters
    ----------
    adata
        Pseudobulk samples: obs ``cell_type, donor_id, sex, age``, var
        ``feature_name``, ``X`` summed raw counts.
    path
        The file, named in messages.

    Raises
    ------
    InputError
        Naming the missing column, the non-numeric age, duplicated samples or
        values of ``X`` that are not counts.
    """
    for col in SAMPLE_OBS:
        if col not in adata.obs.columns:
            raise InputError(f"{path}: obs column {col!r} missing")
    if "feature_name" not in adata.var.columns:
        raise InputError(f"{path}: var column 'feature_name' missing")
    if not pd.api.types.is_numeric_dtype(adata.obs["age"]):
        raise InputError(f"{path}: obs column 'age' must be numeric years (NaN when unknown)")
    pairs = adata.obs[["cell_type", "donor_id"]].astype(str)
    if pairs.duplicated().any():
        ct, donor = pairs[pairs.duplicated()].iloc[0]
        raise InputError(f"{path}: more than one sample for cell type {ct!r} and donor {donor!r}")
    values = adata.X.data if sparse.issparse(adata.X) else np.asarray(adata.X)
    check_counts(values, path, "X")
