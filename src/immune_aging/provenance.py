"""Provenance of the h5ad checkpoints: what made them, from what, with which packages.

Every h5ad a stage writes carries ``uns['provenance']`` (:func:`record`): the stage,
its parameters, the versions of the packages that shape results and the SHA-256 of
its input files. Nothing volatile (no time, host, folder or git revision) goes in,
so reruns stay byte-identical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from immune_aging import io

#: Packages whose versions are recorded in every output's provenance.
PACKAGES = (
    "immune-aging",
    "anndata",
    "scanpy",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "harmonypy",
    "umap-learn",
    "pynndescent",
    "leidenalg",
    "igraph",
    "pydeseq2",
    "gseapy",
    "h5py",
    "hdf5plugin",
)


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Return installed versions of ``names`` (``"not installed"`` when absent).

    Parameters
    ----------
    names
        Distribution names.

    Returns
    -------
    dict
        Name to version string.
    """
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def record(
    stage: str, params: Mapping[str, Any], inputs: Sequence[str | os.PathLike[str]]
) -> dict[str, Any]:
    """Build the provenance record stored in an output's ``uns['provenance']``.

    Holds nothing volatile (no time, host or git revision) so that reruns stay
    byte-identical.

    Parameters
    ----------
    stage
        Stage name.
    params
        The parameters the stage used (plain dict).
    inputs
        Input files; folders are hashed file by file.

    Returns
    -------
    dict
        ``{"stage", "params" (JSON text), "packages", "inputs" (JSON text: path to
        SHA-256)}``.
    """
    hashes: dict[str, str] = {}
    for item in inputs:
        p = Path(item)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            hashes[f.as_posix()] = io.sha256_file(f)
    return {
        "stage": stage,
        "params": json.dumps(io.plain(dict(params)), sort_keys=True),
        "packages": package_versions(),
        # file paths are not valid h5ad keys ('/' is a group separator): JSON text
        "inputs": json.dumps(hashes, sort_keys=True),
    }
