"""Where the input comes from: ``synthetic``, an https URL, or a file under ``data/external``.

The ``data`` stage classifies ``data.source`` (:func:`classify_source`), then
(:func:`adopt`) downloads (:func:`download_into`, resumable, into a cache kept
across runs) or adopts a local file, validates it (:func:`inspect`), checks its
SHA-256 when one is given (:func:`expected_sha256`, :func:`check_sha256`) and
links it into the stage's output (:func:`link`: a hard link, or a copy where the
filesystem refuses).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from difflib import get_close_matches
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from immune_aging import io
from immune_aging.errors import InputError

log = logging.getLogger(__name__)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: A SHA-256 hex digest.
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


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


def expected_sha256(value: str | None, *, where: str) -> str | None:
    """Check the SHA-256 a user expects (``data.sha256``) and return it in lower case.

    Parameters
    ----------
    value
        The digest as given, or None.
    where
        The setting, for the message (``params.yaml: data.sha256``).

    Returns
    -------
    str or None
        The lower-case hex digest; None when none is given.

    Raises
    ------
    InputError
        ``<where>: expected 64 hexadecimal digits, got '...'``.
    """
    if value is not None and not SHA256.match(value.strip()):
        raise InputError(f"{where}: expected 64 hexadecimal digits, got {value!r}")
    return value.strip().lower() if value else None


def adopt(
    kind: str, value: str, dest: Path, *, cache: Path, expected: str | None
) -> dict[str, Any]:
    """Download or take the input, validate it, check its SHA-256 and link it to ``dest``.

    Parameters
    ----------
    kind, value
        From :func:`classify_source`: ``"url"`` and the URL, or ``"external"`` and
        the path.
    dest
        The stage's ``dataset.h5ad``.
    cache
        The download cache (:func:`download_into`).
    expected
        The SHA-256 to check (:func:`expected_sha256`), or None.

    Returns
    -------
    dict
        The metrics of :func:`inspect`, with ``adopted`` (:func:`link`),
        ``source`` (``kind``) and ``sha256_checked``.
    """
    if kind == "url":  # the checksum is verified before the file is renamed
        source = download_into(value, cache, expected)
        metrics = inspect(source)
    else:  # validate first: it reads little, the checksum reads everything
        source = Path(value)
        metrics = inspect(source)
        if expected:
            check_sha256(source, expected)
    metrics["adopted"] = link(source, dest)
    metrics["source"] = kind
    metrics["sha256_checked"] = expected is not None
    return metrics


def download_into(url: str, cache: Path, expected: str | None) -> Path:
    """Download ``url`` into the download cache (resuming a partial file there).

    Parameters
    ----------
    url
        An https URL.
    cache
        The folder kept across runs (it ignores itself in git).
    expected
        Expected SHA-256 (hex), or None.

    Returns
    -------
    Path
        The complete, checked file in ``cache``.
    """
    from immune_aging.download import download

    cache.mkdir(parents=True, exist_ok=True)
    ignore = cache / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# downloads kept across runs of the data stage\n*\n")
    name = Path(urlparse(url).path).name or "download.h5ad"
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    return download(url, cache / f"{key}-{name}", sha256=expected)


def check_sha256(path: Path, expected: str) -> None:
    """Refuse a file whose SHA-256 is not ``expected`` (``data.sha256``).

    Parameters
    ----------
    path
        The file.
    expected
        Lower-case hex digest.
    """
    got = io.sha256_file(path)
    if got != expected:
        raise InputError(f"{path}: SHA-256 mismatch: expected {expected} (data.sha256), got {got}")


def inspect(source: Path) -> dict[str, Any]:
    """Validate an h5ad file (opened backed) and return its size as metrics.

    Parameters
    ----------
    source
        The h5ad file.

    Returns
    -------
    dict
        ``n_cells``, ``n_genes``, ``n_donors``, ``n_cell_types`` and ``counts``
        (where the raw counts are, see :func:`immune_aging.validate.counts_location`).
    """
    from immune_aging.validate import validated

    with validated(source) as (adata, location):
        metrics = {
            "n_cells": int(adata.n_obs),
            "n_genes": int(adata.n_vars),
            "n_donors": int(adata.obs["donor_id"].nunique()),
            "n_cell_types": int(adata.obs["cell_type"].nunique()),
            "counts": location,
        }
    log.info(
        "%s: %d cells, %d genes, %d donors, counts in %s",
        source,
        metrics["n_cells"],
        metrics["n_genes"],
        metrics["n_donors"],
        location,
    )
    return metrics


def link(source: Path, dest: Path) -> str:
    """Hard-link ``source`` to ``dest``, or copy it where linking fails; say which.

    Parameters
    ----------
    source
        The file to adopt.
    dest
        Its new name.

    Returns
    -------
    str
        ``"hardlink"`` or ``"copy"``.
    """
    try:
        os.link(source, dest)
        return "hardlink"
    except OSError as exc:
        log.info("cannot hard-link %s (%s); copying", source, exc.strerror)
        shutil.copyfile(source, dest)
        return "copy"
