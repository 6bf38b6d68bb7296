"""Resolving ``genesets.sources`` into gene-set libraries.

A source is either a GMT file or an Enrichr library name:

- A **GMT path** (contains ``/`` or ends in ``.gmt``) must lie under one of the
  allowed folders (``data/raw/`` and ``data/external/``), which the ``genesets``
  stage declares as DVC dependencies: a file elsewhere would change without DVC
  noticing, so it is refused.
- An **Enrichr library name** (e.g. ``MSigDB_Hallmark_2020``) is looked up in the
  library cache folder (``data/external/genesets/<name>.gmt``). On first use,
  when it is not there, it is downloaded once from Enrichr's ``geneSetLibrary``
  text endpoint and written there atomically. The cache lies inside a declared
  dependency folder, so DVC hashes the downloaded file like any user-supplied GMT
  (its hash is recorded in ``dvc.lock`` after the run); later runs read the cached
  copy and need no network. Offline with no cached copy, the stage stops with one
  line saying where to put the file. To refresh a library, delete its cached copy.

All sets are merged into one library; a set name found in more than one source
is renamed ``<source label>:<name>`` in every source that has it, where the label
is the library name or the GMT file's stem.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from immune_aging import io
from immune_aging.errors import InputError

#: Enrichr's text endpoint for a whole library (``libraryName`` is appended).
ENRICHR_LIBRARY_URL = "https://maayanlab.cloud/Enrichr/geneSetLibrary?mode=text&libraryName="
_LIBRARY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")


@dataclass(frozen=True)
class Library:
    """One resolved source.

    Attributes
    ----------
    source
        The entry as written in ``genesets.sources``.
    label
        Library name or GMT file stem (used to prefix clashing set names).
    kind
        ``"gmt"`` or ``"enrichr"``.
    path
        The GMT file read (the cached copy for an Enrichr library).
    sets
        Set name to gene symbols.
    """

    source: str
    label: str
    kind: str
    path: Path
    sets: dict[str, list[str]]


def is_library_name(source: str) -> bool:
    """Tell an Enrichr library name from a GMT path.

    Parameters
    ----------
    source
        A ``genesets.sources`` entry.

    Returns
    -------
    bool
        True for a bare name such as ``MSigDB_Hallmark_2020``.
    """
    return (
        "/" not in source
        and os.sep not in source
        and not source.lower().endswith(".gmt")
        and bool(_LIBRARY_NAME.match(source))
    )


def check_allowed(path: Path, allowed: Sequence[Path], *, where: str) -> None:
    """Refuse a GMT path outside the allowed (DVC-tracked) folders.

    Parameters
    ----------
    path
        The GMT path (relative paths are taken from the working directory).
    allowed
        Folders the path must lie under.
    where
        The params entry, for the message.

    Raises
    ------
    InputError
        When ``path`` is not under any of ``allowed``.
    """
    target = Path(os.path.abspath(path))
    for folder in allowed:
        if target.is_relative_to(Path(os.path.abspath(folder))):
            return
    names = " or ".join(f"{Path(a).as_posix()}/" for a in allowed)
    raise InputError(
        f"{where}: {path.as_posix()} is outside {names}; put the GMT file under one of"
        f" them so that DVC tracks it"
    )


def parse_enrichr_text(text: str) -> dict[str, list[str]]:
    """Parse Enrichr's library text format into gene sets.

    Each line is ``term<TAB>description<TAB>gene...``; a gene may carry a weight
    (``GENE,1.0``), which is dropped.

    Parameters
    ----------
    text
        The downloaded library.

    Returns
    -------
    dict
        Term to unique gene symbols, in file order; lines without genes are skipped.
    """
    sets: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 3 or not fields[0].strip():
            continue
        genes = [g.split(",")[0].strip() for g in fields[2:]]
        genes = [g for g in dict.fromkeys(genes) if g]
        if genes:
            sets[fields[0].strip()] = genes
    return sets


def download_enrichr(name: str, *, timeout: float = 60.0) -> str:
    """Download one Enrichr library as text.

    Parameters
    ----------
    name
        Library name.
    timeout
        Seconds to wait for the server.

    Returns
    -------
    str
        The library text.

    Raises
    ------
    OSError
        When the server cannot be reached or answers with an error
        (``urllib.error.URLError`` is an ``OSError``).
    """
    url = ENRICHR_LIBRARY_URL + urllib.parse.quote(name)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode("utf-8", errors="replace")


def resolve_library(
    name: str,
    *,
    cache: Path,
    where: str,
    fetch: Callable[[str], str] | None = None,
) -> Path:
    """Return the cached GMT of an Enrichr library, downloading it on first use.

    Parameters
    ----------
    name
        Enrichr library name.
    cache
        Cache folder; the library is ``cache/<name>.gmt``.
    where
        The params entry, for messages.
    fetch
        Downloader (default :func:`download_enrichr`); injectable for tests.

    Returns
    -------
    Path
        The cached GMT file.

    Raises
    ------
    InputError
        When it is not cached and cannot be downloaded, or Enrichr has no such
        library.
    """
    path = Path(cache) / f"{name}.gmt"
    if path.is_file():
        return path
    fetch = fetch or download_enrichr
    try:
        text = fetch(name)
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InputError(
            f"{where}: Enrichr library {name!r} is not cached in {path.as_posix()} and cannot"
            f" be downloaded offline ({reason}); run once with network access or put the GMT"
            f" file there"
        ) from None
    sets = parse_enrichr_text(text)
    if not sets:
        raise InputError(
            f"{where}: Enrichr returned no gene set for library {name!r}; check the name"
            f" against https://maayanlab.cloud/Enrichr/#libraries"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    io.write_gmt(sets, tmp, descriptions=dict.fromkeys(sets, name))
    os.replace(tmp, path)
    return path


def resolve_sources(
    sources: Sequence[str],
    *,
    allowed: Sequence[Path],
    cache: Path,
    fetch: Callable[[str], str] | None = None,
) -> list[Library]:
    """Resolve and read every ``genesets.sources`` entry.

    Parameters
    ----------
    sources
        GMT paths and Enrichr library names.
    allowed
        Folders GMT paths must lie under.
    cache
        Enrichr library cache folder.
    fetch
        Enrichr downloader (default :func:`download_enrichr`).

    Returns
    -------
    list of Library
        In the order given.

    Raises
    ------
    InputError
        For an empty list, a path outside ``allowed``, a missing or malformed GMT,
        or an Enrichr library that is neither cached nor downloadable.
    """
    if not sources:
        raise InputError("genesets.sources: expected at least one GMT path or library name")
    libraries = []
    for i, source in enumerate(sources):
        where = f"genesets.sources[{i}]"
        if is_library_name(source):
            path = resolve_library(source, cache=cache, where=where, fetch=fetch)
            kind, label = "enrichr", source
        else:
            path = Path(source)
            check_allowed(path, allowed, where=where)
            kind, label = "gmt", path.stem
        try:
            sets = io.read_gmt(path)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        libraries.append(Library(source=source, label=label, kind=kind, path=path, sets=sets))
    return libraries


def merge(libraries: Sequence[Library]) -> tuple[dict[str, list[str]], dict[str, str], int]:
    """Merge libraries into one, prefixing set names that clash.

    Parameters
    ----------
    libraries
        Resolved sources.

    Returns
    -------
    sets : dict
        Set name to genes, in source order.
    descriptions : dict
        Set name to its source label (the GMT description field).
    n_renamed : int
        Sets renamed because their name occurs in more than one source.
    """
    counts: dict[str, int] = {}
    for lib in libraries:
        for name in lib.sets:
            counts[name] = counts.get(name, 0) + 1
    sets: dict[str, list[str]] = {}
    descriptions: dict[str, str] = {}
    renamed = 0
    for lib in libraries:
        for name, genes in lib.sets.items():
            key = name
            if counts[name] > 1:
                key = f"{lib.label}:{name}"
                renamed += 1
                n = 2
                while key in sets:
                    key = f"{lib.label}:{name}#{n}"
                    n += 1
            sets[key] = list(genes)
            descriptions[key] = lib.label
    return sets, descriptions, renamed


def _sizes(sets: dict[str, list[str]]) -> dict[str, int | None]:
    sizes = [len(g) for g in sets.values()]
    return {
        "n_sets": len(sizes),
        "min_size": min(sizes) if sizes else None,
        "max_size": max(sizes) if sizes else None,
    }


def summary(
    libraries: Sequence[Library], sets: dict[str, list[str]], renamed: int
) -> dict[str, object]:
    """Summarise the resolved libraries for ``metrics/genesets.json``.

    Parameters
    ----------
    libraries
        Output of :func:`resolve_sources`.
    sets, renamed
        The merged sets and the number of renamed clashes (:func:`merge`).

    Returns
    -------
    dict
        Per source its kind, path and set sizes; the merged library's sizes,
        distinct genes and renamed sets.
    """
    return {
        "sources": {
            lib.source: {"kind": lib.kind, "path": lib.path.as_posix(), **_sizes(lib.sets)}
            for lib in libraries
        },
        **_sizes(sets),
        "n_genes": len({g for genes in sets.values() for g in genes}),
        "n_renamed": renamed,
    }
