"""File formats and atomic outputs.

Every stage writes through an :class:`Outputs` transaction: files and folders are
first written under temporary names next to their destination and renamed into
place only when the whole stage has succeeded, so a failed or killed stage never
leaves a file DVC could take for a result. Formats are community ones only:
h5ad, parquet, JSON, CSV, GMT and PNG. The h5ad files the stages write are
gzip-compressed, which every HDF5 reader decodes: they open in a plain
``anndata.read_h5ad``. The simulated input (a large count matrix) is
zstd-compressed through hdf5plugin; reading it needs ``import hdf5plugin``, which
this module does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hdf5plugin  # registers the zstd filter with h5py, to read zstd-compressed inputs

from immune_aging.errors import InputError

#: The simulated input's count matrix: zstd level 3, measured in
#: bench/results/compression.md as small as gzip-4 and 3-4x faster to write.
H5AD_COMPRESSION = dict(hdf5plugin.Zstd(clevel=3))
#: The stages' h5ad outputs: gzip level 4, built into every HDF5 reader, so the files
#: open without hdf5plugin; within 5 % of zstd-3's size on them, a few seconds slower
#: to write (bench/results/compression.md).
OUTPUT_COMPRESSION = {"compression": "gzip", "compression_opts": 4}
_TMP_TAG = ".tmp-"


class Outputs:
    """Collect a stage's outputs under temporary names and publish them together.

    Use as a context manager; :meth:`file` and :meth:`dir` return the temporary
    path to write to. On normal exit every temporary is renamed onto its final
    path (replacing an older one); on an exception every temporary is removed and
    nothing is published.

    Examples
    --------
    >>> with Outputs() as out:                                  # doctest: +SKIP
    ...     adata.write_h5ad(out.file("data/preprocess/pca.h5ad"))
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def file(self, path: str | os.PathLike[str]) -> Path:
        """Return a temporary path for output file ``path`` (its folder is created).

        Parameters
        ----------
        path
            Final location of the file.

        Returns
        -------
        Path
            Where to write now.
        """
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{final.name}{_TMP_TAG}*"):
            _remove(stale)  # left by a killed run of this stage
        tmp = final.with_name(f".{final.name}{_TMP_TAG}{os.getpid()}")
        self._pending.append((tmp, final))
        return tmp

    def dir(self, path: str | os.PathLike[str]) -> Path:
        """Return a fresh temporary folder for output folder ``path``.

        Parameters
        ----------
        path
            Final location of the folder.

        Returns
        -------
        Path
            An empty folder to fill now.
        """
        tmp = self.file(path)
        tmp.mkdir()
        return tmp

    def commit(self) -> None:
        """Rename every temporary onto its final path."""
        for tmp, final in self._pending:
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            elif final.exists() or final.is_symlink():
                final.unlink()
            os.replace(tmp, final)
        self._pending.clear()

    def abort(self) -> None:
        """Remove every temporary; publish nothing."""
        for tmp, _ in self._pending:
            _remove(tmp)
        self._pending.clear()

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --------------------------------------------------------------------------- h5ad


def write_h5ad(adata: Any, path: str | os.PathLike[str]) -> None:
    """Write an AnnData to ``path`` with gzip compression (:data:`OUTPUT_COMPRESSION`).

    Any HDF5 reader opens the file (``anndata.read_h5ad`` without hdf5plugin).

    Parameters
    ----------
    adata
        The AnnData to write.
    path
        Destination (normally a temporary from :class:`Outputs`).
    """
    adata.write_h5ad(
        path,
        compression=OUTPUT_COMPRESSION["compression"],
        compression_opts=OUTPUT_COMPRESSION["compression_opts"],
    )


def read_h5ad(path: str | os.PathLike[str], *, backed: bool = False) -> Any:
    """Read an h5ad file, failing with one clear line when it is not one.

    The file's structure is first checked in a child process with a time limit
    (:func:`immune_aging.guard.check_h5ad`), so that a damaged file fails with
    one line instead of hanging or crashing the reader.

    Parameters
    ----------
    path
        The file.
    backed
        Open read-only backed (``X`` stays on disk) instead of loading it.

    Returns
    -------
    anndata.AnnData
        The dataset.

    Raises
    ------
    InputError
        If the file is missing, damaged or not a readable h5ad file.
    """
    import anndata as ad

    from immune_aging import guard

    path = Path(path)
    guard.check_h5ad(path)
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:  # anndata raises many types for a broken file
        raise InputError(f"{path}: not a readable h5ad file ({guard.describe(exc)})") from None


# --------------------------------------------------------------------------- tables


def write_parquet(df: Any, path: str | os.PathLike[str]) -> None:
    """Write a DataFrame to parquet (zstd, no pandas index unless named).

    Parameters
    ----------
    df
        A pandas DataFrame.
    path
        Destination.
    """
    df.to_parquet(path, compression="zstd", index=df.index.name is not None)


def read_parquet(path: str | os.PathLike[str], columns: Sequence[str] = ()) -> Any:
    """Read a parquet table, checking the columns the caller needs.

    Parameters
    ----------
    path
        The parquet file.
    columns
        Required columns.

    Returns
    -------
    pandas.DataFrame
        The table.

    Raises
    ------
    InputError
        If the file is missing, unreadable, or lacks a required column.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise InputError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    for col in columns:
        if col not in df.columns:
            raise InputError(f"{path}: column {col!r} missing")
    return df


def plain(obj: Any) -> Any:
    """Return ``obj`` as plain JSON values: NaN/inf as None, numpy scalars as Python ones.

    Parameters
    ----------
    obj
        Mappings, lists, tuples and scalars, nested.

    Returns
    -------
    Any
        The same structure with plain values (mapping keys as strings).
    """
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write JSON deterministically: sorted keys, 2-space indent, NaN as null.

    Parameters
    ----------
    obj
        Mapping or list of plain or numpy values.
    path
        Destination.
    """
    text = json.dumps(plain(obj), indent=2, sort_keys=True, allow_nan=False)
    Path(path).write_text(text + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, failing with one clear line when it is not JSON.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    Any
        The decoded value.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno})") from None


# --------------------------------------------------------------------------- GMT


def read_gmt(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read a GMT gene-set library.

    Each line is ``name<TAB>description<TAB>gene1<TAB>gene2...``. The file must be
    UTF-8 text: a NUL byte or an invalid UTF-8 sequence (a binary or damaged file)
    is refused with its byte offset.

    Parameters
    ----------
    path
        The GMT file.

    Returns
    -------
    dict
        Set name to its genes, in file order, duplicates removed.

    Raises
    ------
    InputError
        If the file is missing, is not UTF-8 text, has a malformed line, or holds
        no gene set.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: gene-set file not found")
    text = _read_text(path, "gene-set file")
    sets: dict[str, list[str]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        genes = [g for g in fields[2:] if g]
        if len(fields) < 3 or not fields[0] or not genes:
            raise InputError(f"{path}: line {lineno}: expected 'name<TAB>description<TAB>gene...'")
        sets[fields[0]] = list(dict.fromkeys(genes))
    if not sets:
        raise InputError(f"{path}: gene-set file holds no gene set")
    return sets


def _read_text(path: Path, what: str) -> str:
    """Read a UTF-8 text file; a NUL byte or invalid UTF-8 raises one line with the offset."""
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise InputError(
            f"{path}: not a text {what}: NUL byte at offset {nul} (line {line}); binary or damaged"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(
            f"{path}: not a UTF-8 text {what}: byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start} (line {line}) is not UTF-8; binary or damaged"
        ) from None


def write_gmt(
    sets: Mapping[str, Sequence[str]],
    path: str | os.PathLike[str],
    descriptions: Mapping[str, str] | None = None,
) -> None:
    """Write gene sets as GMT, in the mapping's order.

    Parameters
    ----------
    sets
        Set name to genes.
    path
        Destination.
    descriptions
        Optional set name to description (default: empty).
    """
    descriptions = descriptions or {}
    lines = ["\t".join([name, descriptions.get(name, ""), *genes]) for name, genes in sets.items()]
    Path(path).write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- figures


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 110) -> None:
    """Save a matplotlib figure as PNG without volatile metadata, then close it.

    Parameters
    ----------
    fig
        The figure.
    path
        Destination.
    dpi
        Resolution.
    """
    import matplotlib.pyplot as plt

    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def save_figures(figures: Mapping[str, Any], folder: str | os.PathLike[str]) -> None:
    """Save figures as PNG files in ``folder`` (see :func:`save_figure`).

    Parameters
    ----------
    figures
        File name (``"umap.png"``) to figure.
    folder
        Destination folder (normally a temporary from :class:`Outputs`).
    """
    for name, fig in figures.items():
        save_figure(fig, Path(folder) / name)


# --------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 22) -> str:
    """Return the SHA-256 hex digest of a file, read in chunks.

    Parameters
    ----------
    path
        The file.
    chunk
        Bytes per read.

    Returns
    -------
    str
        Hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
