"""Read what an h5ad checkpoint records about how it was made (``uns['provenance']``).

Only the provenance group and the obs/var indexes are read with h5py, never the
matrix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from immune_aging.errors import InputError

log = logging.getLogger(__name__)

#: checkpoint folders whose name differs from the stage that writes them
FOLDER_STAGE = {"raw": "data"}


@dataclass(frozen=True)
class Provenance:
    """What ``uns['provenance']`` of an h5ad checkpoint records, plus its shape.

    ``recorded`` is False when the file holds no provenance record.
    """

    path: str
    stage: str
    recorded: bool
    params: Mapping[str, Any] | None
    packages: Mapping[str, str]
    inputs: Mapping[str, str]
    n_obs: int | None
    n_vars: int | None


def read_provenance(path: str | Path) -> Provenance | None:
    """Read ``uns['provenance']`` and the shape of an h5ad file with h5py.

    Only the provenance group and the obs/var indexes are read, never the matrix.

    Parameters
    ----------
    path
        An h5ad checkpoint.

    Returns
    -------
    Provenance or None
        ``None`` when the file does not exist. A file without a record gives
        ``recorded=False`` and the stage guessed from its folder name.

    Raises
    ------
    InputError
        If the file exists but is not an HDF5 (h5ad) file.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        log.info("%s: not found, its section will say 'not run'", path)
        return None
    if not h5py.is_hdf5(path):
        raise InputError(f"{path}: not an h5ad file (no HDF5 signature)")
    with h5py.File(path, "r") as fh:
        n_obs, n_vars = _axis_length(fh, "obs"), _axis_length(fh, "var")
        node = fh.get("uns/provenance")
        record = _read_node(node) if node is not None else None
    fallback = FOLDER_STAGE.get(path.parent.name, path.parent.name)
    if not isinstance(record, Mapping):
        return Provenance(path.as_posix(), fallback, False, None, {}, {}, n_obs, n_vars)
    params = record.get("params")
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError:
            raise InputError(f"{path}: uns['provenance']['params'] is not JSON text") from None
    inputs = record.get("inputs", {})
    if isinstance(inputs, str):
        inputs = json.loads(inputs)
    return Provenance(
        path=path.as_posix(),
        stage=str(record.get("stage") or fallback),
        recorded=True,
        params=params if isinstance(params, Mapping) else None,
        packages={k: str(v) for k, v in _flatten(record.get("packages", {}), sep=".").items()},
        inputs={k: str(v) for k, v in _flatten(inputs, sep="/").items()},
        n_obs=n_obs,
        n_vars=n_vars,
    )


def _flatten(obj: Any, *, sep: str, prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into ``{joined key: leaf}``.

    Input paths written as keys with slashes end up as nested HDF5 groups
    (``data`` / ``raw`` / ``dataset.h5ad``); joining with ``/`` restores them.
    """
    if not isinstance(obj, Mapping):
        return {prefix: obj} if prefix else {}
    out: dict[str, Any] = {}
    for key in sorted(obj):
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        out.update(_flatten(obj[key], sep=sep, prefix=name))
    return out


def _read_node(node: Any) -> Any:
    """Read an HDF5 group or dataset written by anndata into plain Python values."""
    import h5py

    if isinstance(node, h5py.Group):
        return {key: _read_node(node[key]) for key in sorted(node.keys())}
    if node.dtype.kind in ("O", "S", "U") or h5py.check_string_dtype(node.dtype) is not None:
        value = node.asstr()[()]
    else:
        value = node[()]
    if hasattr(value, "tolist"):
        value = value.tolist()
    return value


def _axis_length(fh: Any, axis: str) -> int | None:
    """Return the length of the obs or var index of an open h5ad file."""
    group = fh.get(axis)
    if group is None:
        return None
    try:
        index = group.attrs.get("_index", "_index")
        if isinstance(index, bytes):
            index = index.decode()
        return int(group[index].shape[0])
    except (KeyError, TypeError, AttributeError):
        return None
