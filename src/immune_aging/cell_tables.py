"""The per-cell table of the ``qc`` stage (``cells.parquet``), read and aligned.

- :func:`read_cells` reads a per-cell table indexed by ``cell_id``;
- :func:`read_keep` returns its ``keep`` flag aligned with the cells of a count
  matrix.

Every fault raises :class:`~immune_aging.errors.InputError` with one line naming
the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from immune_aging.errors import InputError

#: The index (or column) naming cells in ``cells.parquet``.
CELL_ID = "cell_id"


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
        ``keep``, does not list exactly the cells of ``counts_path``, or keeps no
        cell.
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
    if not keep.any():
        raise InputError(f"{path}: no cell has keep == True")
    return keep.reindex(cell_ids).to_numpy(dtype=bool)
