"""Read the pipeline's results into plain objects for the report.

Only reading happens here, never writing. A missing input is not an error (its
section of the report says "not run"); an input that exists but cannot be read
raises :class:`~immune_aging.errors.InputError` naming the file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from immune_aging import io
from immune_aging.errors import InputError
from immune_aging.report.provenance import Provenance, read_provenance

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: rows of a CSV series shown in the report
SERIES_PREVIEW_ROWS = 6
#: columns the report reads from each result table (docs/pipeline.md)
DE_COLUMNS = ("cell_type", "gene_id", "gene", "baseMean", "log2FoldChange", "pvalue", "padj")
#: read when present: older DE tables lack it (the report then derives it from age_sd_years)
DE_OPTIONAL = ("log2fc_per_decade",)
GSEA_COLUMNS = ("cell_type", "term", "nes", "pval", "fdr", "lead_genes")
ORA_COLUMNS = ("cell_type", "direction", "term", "overlap", "pval", "padj", "genes")


@dataclass(frozen=True)
class Figure:
    """A PNG figure of a stage: its name in ``plots/<stage>/``, bytes and pixel size."""

    stage: str
    name: str
    png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Series:
    """A CSV data series of a stage: shape, columns and the first rows."""

    stage: str
    name: str
    n_rows: int
    columns: tuple[str, ...]
    head: pd.DataFrame


@dataclass
class ReportInputs:
    """Everything the report shows, loaded; missing pieces are absent or ``None``."""

    params: Mapping[str, Any] = field(default_factory=dict)
    param_notes: Mapping[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    plot_stages: set[str] = field(default_factory=set)
    figures: dict[str, list[Figure]] = field(default_factory=dict)
    series: dict[str, list[Series]] = field(default_factory=dict)
    provenance: list[Provenance] = field(default_factory=list)
    de: pd.DataFrame | None = None
    gsea: pd.DataFrame | None = None
    ora: pd.DataFrame | None = None


# --------------------------------------------------------------------------- params


def read_params(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read every section of a params file and the comment describing each key.

    Parameters
    ----------
    path
        The params YAML file.

    Returns
    -------
    tuple
        ``(params, notes)``: the raw mapping of sections, and dotted key
        (``qc.max_pct_mt``) to its comment text (see :func:`param_comments`).
    """
    from immune_aging.params import read_params_file

    params = read_params_file(path)
    return params, param_comments(Path(path).read_text())


_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")


def param_comments(text: str) -> dict[str, str]:
    """Extract the comment of each key of a YAML parameters file.

    A key's comment is the block of ``#`` lines right above it (same block, no
    blank line between) followed by its inline ``# ...`` comment. Comments above
    top-level sections are not attached (they describe the file).

    Parameters
    ----------
    text
        The YAML text.

    Returns
    -------
    dict
        Dotted key path to comment text, lines joined with newlines.
    """
    notes: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            block = []
            continue
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        match = _KEY_LINE.match(line)
        if match is None:  # list items, continuation lines
            block = []
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        lines = list(block) if indent > 0 else []
        inline = _inline_comment(match["rest"])
        if inline:
            lines.append(inline)
        if lines:
            notes[".".join(key for _, key in stack)] = "\n".join(lines)
        block = []
    return notes


def _inline_comment(rest: str) -> str:
    """Return the text of a trailing ``# comment`` outside quotes, or ``""``."""
    quote = ""
    for i, char in enumerate(rest):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[i + 1 :].strip()
    return ""


# --------------------------------------------------------------------------- metrics, plots


def read_metrics(paths: Iterable[str | Path]) -> dict[str, Any]:
    """Read the metrics JSON files that exist, keyed by stage (the file stem).

    Parameters
    ----------
    paths
        ``metrics/<stage>.json`` files; missing ones are skipped.

    Returns
    -------
    dict
        Stage to decoded JSON.
    """
    out: dict[str, Any] = {}
    for path in sorted(Path(p) for p in paths):
        if path.is_file():
            out[path.stem] = io.read_json(path)
        else:
            log.info("%s: not found, its section will say 'not run'", path)
    return out


def png_size(data: bytes, path: str | Path) -> tuple[int, int]:
    """Return ``(width, height)`` of a PNG from its header.

    Parameters
    ----------
    data
        The file's bytes.
    path
        File name for the error message.

    Returns
    -------
    tuple
        Width and height in pixels.

    Raises
    ------
    InputError
        If the bytes are not a PNG image.
    """
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise InputError(f"{path}: not a PNG image")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def read_plots(
    dirs: Iterable[str | Path],
) -> tuple[set[str], dict[str, list[Figure]], dict[str, list[Series]]]:
    """Read the PNG figures and CSV series of each ``plots/<stage>`` folder.

    Parameters
    ----------
    dirs
        Plot folders, one per stage (the folder name is the stage); missing ones
        are skipped. Files are read recursively, in sorted order.

    Returns
    -------
    tuple
        ``(stages, figures, series)``: the stages whose folder exists, and per
        stage its figures and series.
    """
    stages: set[str] = set()
    figures: dict[str, list[Figure]] = {}
    series: dict[str, list[Series]] = {}
    for folder in sorted(Path(d) for d in dirs):
        if not folder.is_dir():
            log.info("%s: not found, its section will say 'not run'", folder)
            continue
        stage = folder.name
        stages.add(stage)
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            name = path.relative_to(folder).as_posix()
            suffix = path.suffix.lower()
            if suffix == ".png":
                data = path.read_bytes()
                width, height = png_size(data, path)
                figures.setdefault(stage, []).append(Figure(stage, name, data, width, height))
            elif suffix in (".csv", ".tsv"):
                series.setdefault(stage, []).append(_read_series(path, stage, name))
    return stages, figures, series


def _read_series(path: Path, stage: str, name: str) -> Series:
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        table = pd.read_csv(path, sep=sep)
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError):
        raise InputError(f"{path}: not a readable CSV table") from None
    return Series(
        stage=stage,
        name=name,
        n_rows=len(table),
        columns=tuple(str(c) for c in table.columns),
        head=table.head(SERIES_PREVIEW_ROWS),
    )


# --------------------------------------------------------------------------- tables


def read_table(
    path: str | Path, columns: Sequence[str], optional: Sequence[str] = ()
) -> pd.DataFrame | None:
    """Read the needed columns of a result table, or ``None`` when it does not exist.

    Parameters
    ----------
    path
        A parquet file.
    columns
        Columns the report needs; each must be present.
    optional
        Columns read too when the file has them.

    Returns
    -------
    pandas.DataFrame or None
        Those columns, or ``None`` if the file is missing.

    Raises
    ------
    InputError
        If the file is not parquet or lacks one of ``columns``.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        log.info("%s: not found, its section will say 'not run'", path)
        return None
    try:
        names = pq.read_schema(path).names
    except Exception:  # pyarrow raises several types for a broken file
        raise InputError(f"{path}: not a readable parquet file") from None
    for column in columns:
        if column not in names:
            raise InputError(f"{path}: column {column!r} missing")
    return pd.read_parquet(path, columns=[*columns, *(c for c in optional if c in names)])


def read_all(
    *,
    params_file: str | Path,
    metrics: Iterable[str | Path] = (),
    plots: Iterable[str | Path] = (),
    de: str | Path | None = None,
    gsea: str | Path | None = None,
    ora: str | Path | None = None,
    provenance: Iterable[str | Path] = (),
) -> ReportInputs:
    """Read every input of the report.

    Parameters
    ----------
    params_file
        The params YAML file (every section is shown).
    metrics
        ``metrics/<stage>.json`` files.
    plots
        ``plots/<stage>`` folders.
    de, gsea, ora
        Result tables (parquet).
    provenance
        h5ad checkpoints carrying ``uns['provenance']``.

    Returns
    -------
    ReportInputs
        What exists, loaded.
    """
    params, notes = read_params(params_file)
    stages, figures, series = read_plots(plots)
    records = [read_provenance(p) for p in provenance]
    return ReportInputs(
        params=params,
        param_notes=notes,
        metrics=read_metrics(metrics),
        plot_stages=stages,
        figures=figures,
        series=series,
        provenance=sorted((r for r in records if r is not None), key=lambda r: r.path),
        de=read_table(de, DE_COLUMNS, DE_OPTIONAL) if de is not None else None,
        gsea=read_table(gsea, GSEA_COLUMNS) if gsea is not None else None,
        ora=read_table(ora, ORA_COLUMNS) if ora is not None else None,
    )
