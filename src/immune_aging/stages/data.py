"""Stage ``data``: obtain the input dataset.

``data.source`` says where it comes from:

- ``synthetic``: simulate a OneK1K-like dataset (:mod:`immune_aging.synthetic`)
  into ``dataset.h5ad``, with its ground truth ``truth.json`` and gene-set
  library ``genesets.gmt``;
- ``https://...``: download it (:mod:`immune_aging.download`) into the download
  cache, validate it, and link it into the output folder;
- a path under the ``--external`` folder: validate it and link it (a hard link,
  or a copy where the filesystem refuses) into the output folder.

Real data get no ``truth.json`` and no ``genesets.gmt``. The download cache
(``--download-cache``, ``data/.download/`` in dvc.yaml) lies outside the
stage's outputs because DVC deletes outputs before running a stage: a cut
download resumes from its ``.part`` file there, and a finished one is reused
(and shares its disk blocks with the output through the hard link). The
cache ignores itself in git; deleting it frees the space of partial downloads
and forces a new download next time. The output folder is published
atomically through :class:`immune_aging.io.Outputs`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import sys
from difflib import get_close_matches
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from immune_aging import io, stage
from immune_aging.errors import InputError
from immune_aging.params import as_dict
from immune_aging.threads import n_threads

STAGE = "data"
log = logging.getLogger(__name__)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the stage's paths to its parser."""
    p.add_argument("--external", type=Path, required=True, help="folder of local inputs")
    p.add_argument("--out", type=Path, required=True, help="output folder (dataset.h5ad, ...)")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    p.add_argument(
        "--download-cache",
        type=Path,
        required=True,
        help="folder keeping partial and finished downloads across runs",
    )


def classify_source(source: str, external: Path, *, where: str) -> tuple[str, str]:
    """Return ``(kind, value)`` for a ``data.source`` value, or raise a one-line error.

    Parameters
    ----------
    source
        The ``data.source`` parameter.
    external
        The folder local inputs must live in.
    where
        Prefix for error messages (``params.yaml: data.source``).

    Returns
    -------
    tuple
        ``("synthetic", "")``, ``("url", url)`` or ``("external", path)``.

    Raises
    ------
    InputError
        For plain http, another URL scheme, a path outside ``external`` or a
        missing file.
    """
    value = source.strip()
    if value == "synthetic":
        return "synthetic", ""
    if value.lower().startswith("https://"):
        if not urlparse(value).netloc:
            raise InputError(f"{where}: {value!r} is not a valid https URL")
        return "url", value
    if value.lower().startswith("http://"):
        raise InputError(f"{where}: {value!r}: plain http is not accepted, use an https:// URL")
    if _SCHEME.match(value):
        raise InputError(
            f"{where}: {value!r}: unsupported URL scheme (expected 'synthetic', an https:// URL "
            f"or a file under {external}/)"
        )
    if "/" not in value and os.sep not in value:
        hint = " (did you mean 'synthetic'?)" if get_close_matches(value, ["synthetic"]) else ""
        raise InputError(
            f"{where}: expected 'synthetic', an https:// URL or a file under {external}/, "
            f"got {value!r}{hint}"
        )
    path = Path(os.path.abspath(value))
    root = Path(os.path.abspath(external))
    if not path.is_relative_to(root) or path == root:
        raise InputError(
            f"{where}: {value!r} is outside {external}/: put the file there "
            f"(the folder is a declared dependency of the stage)"
        )
    if not path.is_file():
        raise InputError(f"{where}: {value}: file not found")
    return "external", value


def body(args: argparse.Namespace, params: Any) -> None:
    """Simulate, download or adopt the dataset; write it with metrics."""
    where = f"{args.params}: data"
    kind, value = classify_source(params.source, args.external, where=f"{where}.source")
    expected = params.sha256
    if expected is not None and not _SHA256.match(expected.strip()):
        raise InputError(f"{where}.sha256: expected 64 hexadecimal digits, got {expected!r}")
    expected = expected.strip().lower() if expected else None
    if kind == "synthetic" and expected:
        log.warning("data.sha256 is ignored for synthetic data")

    with io.Outputs() as out:
        folder = out.dir(args.out)
        metrics_path = out.file(args.metrics)
        if kind == "synthetic":
            metrics = _simulate(folder, params)
        else:
            if kind == "url":  # the checksum is verified before the file is renamed
                source = _download(value, args.download_cache, expected)
                metrics = _inspect(source)
            else:  # validate first: it reads little, the checksum reads everything
                source = Path(value)
                metrics = _inspect(source)
                if expected:
                    _check_sha256(source, expected)
            metrics["adopted"] = _link(source, folder / "dataset.h5ad")
            metrics["source"] = kind
            metrics["sha256_checked"] = expected is not None
        metrics["file_mb"] = round((folder / "dataset.h5ad").stat().st_size / 2**20, 1)
        io.write_json(metrics, metrics_path)


def _simulate(folder: Path, params: Any) -> dict[str, Any]:
    from immune_aging import synthetic

    uns = {
        "title": "Simulated OneK1K-like PBMC dataset with planted age effects",
        "provenance": io.provenance(STAGE, as_dict(params), []),
    }
    summary = synthetic.write_simulation(
        folder, **as_dict(params.synthetic), uns=uns, threads=n_threads()
    )
    return {"source": "synthetic", "counts": "X", **summary}


def _download(url: str, cache: Path, expected: str | None) -> Path:
    from immune_aging.download import download

    cache.mkdir(parents=True, exist_ok=True)
    ignore = cache / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# downloads kept across runs of the data stage\n*\n")
    name = Path(urlparse(url).path).name or "download.h5ad"
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    return download(url, cache / f"{key}-{name}", sha256=expected)


def _check_sha256(path: Path, expected: str) -> None:
    got = io.sha256_file(path)
    if got != expected:
        raise InputError(f"{path}: SHA-256 mismatch: expected {expected} (data.sha256), got {got}")


def _inspect(source: Path) -> dict[str, Any]:
    """Validate ``source`` (opened backed) and return its size as metrics."""
    from immune_aging.validate import validate_dataset

    adata = io.read_h5ad(source, backed=True)
    try:
        location = validate_dataset(adata, source)
        metrics = {
            "n_cells": int(adata.n_obs),
            "n_genes": int(adata.n_vars),
            "n_donors": int(adata.obs["donor_id"].nunique()),
            "n_cell_types": int(adata.obs["cell_type"].nunique()),
            "counts": location,
        }
    finally:
        adata.file.close()
    log.info(
        "%s: %d cells, %d genes, %d donors, counts in %s",
        source,
        metrics["n_cells"],
        metrics["n_genes"],
        metrics["n_donors"],
        location,
    )
    return metrics


def _link(source: Path, dest: Path) -> str:
    """Hard-link ``source`` to ``dest``, or copy it where linking fails; say which."""
    try:
        os.link(source, dest)
        return "hardlink"
    except OSError as exc:
        log.info("cannot hard-link %s (%s); copying", source, exc.strerror)
        shutil.copyfile(source, dest)
        return "copy"


main = stage.main_for(
    STAGE, "Obtain the input dataset (simulate, download or adopt).", add_arguments, body
)

if __name__ == "__main__":
    sys.exit(main())
