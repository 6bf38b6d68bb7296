"""Turn the loaded results of the pipeline into one self-contained HTML page.

Everything here is pure: :func:`build_report` takes a
:class:`~immune_aging.report.collect.ReportInputs` and returns the page as text.
Figures are embedded as ``data:`` URIs, the stylesheet is inline, there is no
script and no external reference, every text is HTML-escaped, and iteration
order is fixed, so the same inputs always give the same bytes.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from immune_aging.report.captions import caption_for
from immune_aging.report.collect import Figure, Provenance, ReportInputs, Series
from immune_aging.report.style import CSS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageInfo:
    """A pipeline stage as the report introduces it."""

    name: str
    title: str
    summary: str


#: The stages in pipeline order (stage name = params section = plots/metrics name).
STAGES: tuple[StageInfo, ...] = (
    StageInfo(
        "data",
        "Input data",
        "Obtains the input: a simulated OneK1K-like dataset with planted age effects, a "
        "downloaded file or a local h5ad, in the CELLxGENE schema.",
    ),
    StageInfo(
        "filter",
        "Donor and cell-type filter",
        "Drops donors with too few cells and cell types missing from most donors, then "
        "genes never detected.",
    ),
    StageInfo(
        "qc",
        "Cell quality control",
        "Flags cells by detected genes, total counts, mitochondrial and hemoglobin share, and "
        "doublets (Scrublet per donor); keeps the rest.",
    ),
    StageInfo(
        "preprocess",
        "Normalisation, highly variable genes, PCA",
        "Normalises counts per cell, log-transforms, selects highly variable genes on raw "
        "counts, removes nuisance genes and runs PCA.",
    ),
    StageInfo(
        "dimred",
        "Integration and embedding",
        "Corrects the PCA for donor effects with Harmony, builds the neighbour graph and "
        "a UMAP embedding.",
    ),
    StageInfo(
        "cluster",
        "Clustering",
        "Leiden clustering of the neighbour graph and its agreement with the annotated "
        "cell types.",
    ),
    StageInfo(
        "pseudobulk",
        "Pseudobulk",
        "Sums raw counts per (cell type, donor) sample and attaches donor age and sex.",
    ),
    StageInfo(
        "genesets",
        "Gene sets",
        "Resolves the gene-set libraries into one GMT file used by GSEA and ORA.",
    ),
    StageInfo(
        "de",
        "Differential expression with age",
        "Per cell type, DESeq2 (PyDESeq2) on the pseudobulk counts with design "
        "~ age_scaled + sex; Wald test on the age coefficient, BH-adjusted p-values.",
    ),
    StageInfo(
        "gsea",
        "Gene-set enrichment (GSEA)",
        "Preranked GSEA of each cell type's DE Wald statistic against the gene sets.",
    ),
    StageInfo(
        "ora",
        "Over-representation (ORA)",
        "Hypergeometric over-representation of the significantly up and down genes of each "
        "cell type in the gene sets, against the tested genes.",
    ),
    StageInfo(
        "predict",
        "Age prediction",
        "Predicts donor age from each cell type's pseudobulk expression (scaled LinearSVR, "
        "repeated random splits) and compares with a sex-only baseline.",
    ),
    StageInfo(
        "evaluate",
        "Evaluation against the simulation truth",
        "Scores the results against the effects planted in the simulated data (empty on "
        "real data, which has no truth).",
    ),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


@dataclass(frozen=True)
class Goal:
    """A target on one value of ``metrics/evaluate.json``.

    The value at ``key`` is compared (``op``) with ``target``, or with the value at
    ``ref_key`` plus ``offset`` when ``ref_key`` is set.
    """

    name: str
    key: str
    op: str
    target: float | None
    meaning: str
    ref_key: str | None = None
    offset: float = 0.0


#: What the workflow must achieve on the default simulated dataset.
GOALS: tuple[Goal, ...] = (
    Goal(
        "DE recall",
        "de.recall",
        ">=",
        0.8,
        "share of the planted (cell type, gene) age effects found at padj < alpha with the "
        "right sign",
    ),
    Goal(
        "DE false discoveries",
        "de.fdr",
        "<=",
        0.1,
        "share of the significant (cell type, gene) pairs that were not planted",
    ),
    Goal(
        "GSEA finds the planted sets",
        "gsea.planted_found",
        "==",
        None,
        "planted (set, cell type) pairs found at FDR < alpha with the right sign, out of all",
        ref_key="gsea.planted_total",
    ),
    Goal(
        "Age prediction R\N{SUPERSCRIPT TWO}",
        "predict.r2",
        ">=",
        0.5,
        "mean cross-validated R\N{SUPERSCRIPT TWO} over the aged cell types",
    ),
    Goal(
        "Age prediction beats the baseline",
        "predict.r2",
        ">=",
        None,
        "R\N{SUPERSCRIPT TWO} of the expression model against the sex-only baseline + 0.3",
        ref_key="predict.baseline_r2",
        offset=0.3,
    ),
    Goal(
        "Cluster purity",
        "cluster.purity",
        ">=",
        0.9,
        "share of cells whose Leiden cluster's majority cell type is their own",
    ),
    Goal(
        "Doublet recall",
        "qc.doublet_recall",
        ">=",
        0.5,
        "share of the simulated doublets that Scrublet called",
    ),
    Goal(
        "Doublet precision",
        "qc.doublet_precision",
        ">=",
        0.5,
        "share of the called doublets that were simulated doublets",
    ),
)

_OPS = {
    ">=": ("\N{GREATER-THAN OR EQUAL TO}", float.__ge__),
    "<=": ("\N{LESS-THAN OR EQUAL TO}", float.__le__),
    "==": ("=", float.__eq__),
}
GE = "\N{GREATER-THAN OR EQUAL TO}"
TIMES = "\N{MULTIPLICATION SIGN}"
#: genes listed per row of a pathway table
_GENES_SHOWN = 8
#: beyond this many items a list in a metrics table is cut
_LIST_SHOWN = 24


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# --------------------------------------------------------------------------- formatting


def format_value(value: Any) -> str:
    """Format a metric or parameter value for display (plain text, not escaped).

    Parameters
    ----------
    value
        A JSON-like scalar.

    Returns
    -------
    str
        ``null`` for None and NaN, ``true``/``false`` for booleans, whole numbers
        without decimals (thousands separated from 10,000), other floats with 4
        significant digits (scientific notation when tiny).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "null"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == int(value) and abs(value) < 1e15:
            return format_value(int(value))
        if abs(value) < 1e-3 or abs(value) >= 1e15:
            return f"{value:.3g}"
        if abs(value) >= 1000:
            return f"{value:,.1f}"
        return f"{value:.4g}"
    if hasattr(value, "item"):  # numpy scalar
        return format_value(value.item())
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _cell(value: Any, *, align: bool = True) -> str:
    """Return a ``<td>`` for a scalar or a short list (numbers right-aligned if ``align``)."""
    if isinstance(value, list) and all(_is_scalar(v) for v in value):
        # labels such as cell types hold commas: separate text items with semicolons
        sep = "; " if any(isinstance(v, str) for v in value) else ", "
        shown = sep.join(format_value(v) for v in value[:_LIST_SHOWN])
        more = (
            f" \N{HORIZONTAL ELLIPSIS} ({len(value)} in all)" if len(value) > _LIST_SHOWN else ""
        )
        return f"<td>{_esc(shown + more)}</td>"
    if _is_number(value) and align:
        return f'<td class="num">{_esc(format_value(value))}</td>'
    if not _is_scalar(value):
        return f"<td><code>{_esc(json.dumps(value, sort_keys=True))}</code></td>"
    return f"<td>{_esc(format_value(value))}</td>"


def _table(headers: Sequence[str], rows: Sequence[str], *, numeric: Sequence[bool] = ()) -> str:
    """Wrap header cells and pre-rendered ``<tr>`` rows into a scrollable table."""
    ths = "".join(
        f'<th class="num">{_esc(h)}</th>'
        if i < len(numeric) and numeric[i]
        else f"<th>{_esc(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(rows)
    return (
        f'<div class="scroll"><table><thead><tr>{ths}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


# --------------------------------------------------------------------------- metrics JSON


def render_metrics(obj: Any, *, depth: int = 0) -> str:
    """Render a decoded metrics JSON as readable HTML tables.

    Scalars of a mapping go into a key/value table; a mapping whose values are all
    mappings of scalars becomes one table with a row per key (e.g. metrics per cell
    type); other nested values get a sub-heading and are rendered recursively.

    Parameters
    ----------
    obj
        The decoded JSON.
    depth
        Nesting level (headings shrink, deep levels are shown as JSON text).

    Returns
    -------
    str
        HTML.
    """
    if not isinstance(obj, Mapping):
        if isinstance(obj, list) and obj and all(isinstance(v, Mapping) for v in obj):
            return _records_table(obj)
        return f"<table><tbody><tr>{_cell(obj)}</tr></tbody></table>"
    if not obj:
        return '<p class="note">(empty)</p>'
    if depth >= 3:
        return f"<pre><code>{_esc(json.dumps(obj, indent=1, sort_keys=True))}</code></pre>"
    if _is_matrix(obj):
        return _matrix_table(obj)
    items = _items(obj)
    flat = [(k, v) for k, v in items if _is_scalar(v) or _is_short_list(v)]
    nested = [(k, v) for k, v in items if not (_is_scalar(v) or _is_short_list(v))]
    parts = []
    if flat:
        rows = [f'<tr><td class="key">{_esc(k)}</td>{_cell(v, align=False)}</tr>' for k, v in flat]
        parts.append(_table(["metric", "value"], rows))
    tag = "h4" if depth == 0 else "h5"
    if nested:
        parts.append('<div class="subtables">')
        for key, value in nested:
            parts.append(f'<div class="sub"><{tag}>{_esc(key)}</{tag}>')
            parts.append(render_metrics(value, depth=depth + 1))
            parts.append("</div>")
        parts.append("</div>")
    return "".join(parts)


def _items(obj: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Return the items of a mapping, numerically ordered when every key is an integer."""
    items = [(str(k), v) for k, v in obj.items()]
    if items and all(re.fullmatch(r"-?\d+", k) for k, _ in items):
        return sorted(items, key=lambda kv: int(kv[0]))
    return items


def _is_short_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_scalar(v) for v in value)


def _is_matrix(obj: Mapping[str, Any]) -> bool:
    """Tell whether every value is a non-empty mapping of scalars (rows of one table)."""
    return len(obj) > 0 and all(
        isinstance(v, Mapping)
        and v
        and all(_is_scalar(x) or _is_short_list(x) for x in v.values())
        for v in obj.values()
    )


def _matrix_table(obj: Mapping[str, Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in obj.values():
        columns.extend(c for c in row if c not in columns)
    numeric = [False] + [
        all(_is_number(r.get(c)) or r.get(c) is None for r in obj.values()) for c in columns
    ]
    rows = [
        f'<tr><td class="key">{_esc(k)}</td>{"".join(_cell(r.get(c)) for c in columns)}</tr>'
        for k, r in _items(obj)
    ]
    return _table(["", *columns], rows, numeric=numeric)


def _records_table(records: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in records:
        columns.extend(c for c in row if c not in columns)
    rows = [f"<tr>{''.join(_cell(r.get(c)) for c in columns)}</tr>" for r in records]
    return _table(columns, rows)


def flatten_metrics(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested metrics into dotted keys (``{"de": {"fdr": x}}`` -> ``de.fdr``).

    Parameters
    ----------
    obj
        Decoded metrics JSON; keys that already hold dots are kept as they are.
    prefix
        Key prefix (used by the recursion).

    Returns
    -------
    dict
        Dotted key to leaf value.
    """
    if not isinstance(obj, Mapping):
        return {prefix: obj} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten_metrics(value, name) if isinstance(value, Mapping) else {name: value})
    return out


# --------------------------------------------------------------------------- goals


@dataclass(frozen=True)
class GoalResult:
    """A goal checked: its value, the target it was compared with, and the verdict."""

    goal: Goal
    value: float | int | None
    target: float | int | None
    target_text: str
    status: str  # "met", "not met" or "n/a"


def check_goals(evaluation: Mapping[str, Any] | None) -> list[GoalResult]:
    """Check every goal of :data:`GOALS` on the evaluation metrics.

    Parameters
    ----------
    evaluation
        Decoded ``metrics/evaluate.json`` (flat dotted keys, or nested), or ``None``.

    Returns
    -------
    list of GoalResult
        One per goal, in :data:`GOALS` order; ``n/a`` where a value is missing or null.
    """
    flat = flatten_metrics(evaluation or {})
    results = []
    for goal in GOALS:
        value = _number(flat.get(goal.key))
        symbol, test = _OPS[goal.op]
        if goal.ref_key is not None:
            ref = _number(flat.get(goal.ref_key))
            target = None if ref is None else ref + goal.offset
            if goal.offset:
                text = f"{symbol} {goal.ref_key} + {format_value(goal.offset)}"
                if target is not None:
                    text += f" = {format_value(target)}"
            else:
                text = f"{symbol} {goal.ref_key}"
                if ref is not None:
                    text += f" ({format_value(ref)})"
        else:
            target = goal.target
            text = f"{symbol} {format_value(target)}"
        if value is None or target is None:
            status = "n/a"
        else:
            status = "met" if test(float(value), float(target)) else "not met"
        results.append(GoalResult(goal, value, target, text, status))
    return results


def _number(value: Any) -> float | int | None:
    """Return a finite-or-infinite number as is (ints stay ints), else ``None``."""
    if _is_number(value) and not (isinstance(value, float) and math.isnan(value)):
        return value
    return None


def _badge(status: str) -> str:
    kind = {"met": "ok", "not met": "bad", "ran": "ok", "not run": "na"}.get(status, "na")
    return f'<span class="badge {kind}">{_esc(status)}</span>'


def _goals_table(results: Sequence[GoalResult]) -> str:
    rows = []
    for r in results:
        value = "null" if r.value is None else format_value(r.value)
        rows.append(
            f"<tr><td>{_esc(r.goal.name)}<div class='note'>{_esc(r.goal.meaning)}</div></td>"
            f"<td><code>{_esc(r.goal.key)}</code></td><td class='num'>{_esc(value)}</td>"
            f"<td>{_esc(r.target_text)}</td><td>{_badge(r.status)}</td></tr>"
        )
    table = _table(
        ["goal", "metric", "value", "target", "status"], rows, numeric=[False, False, True]
    )
    return table.replace("<table>", '<table class="goals">', 1)


# --------------------------------------------------------------------------- figures


class _Counter:
    """Numbers figures in the order they appear on the page."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


def _figure(fig: Figure, number: int, labels: Sequence[str]) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    caption = caption_for(fig.stage, fig.name, labels=labels)
    wide = ' class="wide"' if fig.width >= 1000 or fig.width >= 2 * fig.height else ""
    return (
        f'<figure id="fig-{number}"{wide}><img src="data:image/png;base64,{data}" '
        f'width="{fig.width}" height="{fig.height}" alt="{_esc(fig.stage + ": " + fig.name)}">'
        f"<figcaption><b>Figure {number}.</b> {_esc(caption)} "
        f"<code>plots/{_esc(fig.stage)}/{_esc(fig.name)}</code></figcaption></figure>"
    )


def _figures(figs: Sequence[Figure], counter: _Counter, labels: Sequence[str]) -> str:
    if not figs:
        return ""
    items = "".join(_figure(f, counter.next(), labels) for f in sorted(figs, key=lambda f: f.name))
    return f'<div class="figures">{items}</div>'


def _series(items: Sequence[Series]) -> str:
    if not items:
        return ""
    parts = [
        f"<details><summary>Data behind the figures ({len(items)} CSV file"
        f"{'s' if len(items) != 1 else ''})</summary>"
    ]
    for s in sorted(items, key=lambda s: s.name):
        parts.append(
            f"<h5><code>plots/{_esc(s.stage)}/{_esc(s.name)}</code>: {s.n_rows} rows {TIMES} "
            f"{len(s.columns)} columns</h5>"
        )
        if len(s.head):
            head = s.head
            numeric = [pd.api.types.is_numeric_dtype(head[c]) for c in head.columns]
            rows = [
                "<tr>" + "".join(_cell(_plain(v)) for v in row) + "</tr>"
                for row in head.itertuples(index=False, name=None)
            ]
            parts.append(_table([str(c) for c in head.columns], rows, numeric=numeric))
            if s.n_rows > len(head):
                parts.append(f'<p class="note">First {len(head)} of {s.n_rows} rows.</p>')
    parts.append("</details>")
    return "".join(parts)


def _plain(value: Any) -> Any:
    """Numpy scalars to Python ones (for formatting)."""
    if hasattr(value, "item") and not isinstance(value, str):
        return value.item()
    return value


# --------------------------------------------------------------------------- parameters


def _flatten_params(section: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(section, Mapping):
        out: list[tuple[str, Any]] = []
        for key, value in section.items():
            out.extend(_flatten_params(value, f"{prefix}.{key}"))
        return out
    return [(prefix, section)]


def _param_value(value: Any) -> str:
    """Show a parameter as written in YAML (``1e-05``, ``10000.0``, ``null``)."""
    if isinstance(value, list):
        return ", ".join(_param_value(v) for v in value) or "[]"
    if isinstance(value, str):
        return f"<code>{_esc(value)}</code>"
    if value is None or isinstance(value, bool):
        return _esc(format_value(value))
    return _esc(str(value))


def render_params(name: str, section: Any, notes: Mapping[str, str]) -> str:
    """Render one params.yaml section as a table of key, value and meaning.

    Parameters
    ----------
    name
        Section name.
    section
        The section's raw mapping from params.yaml.
    notes
        Dotted key to its comment in params.yaml.

    Returns
    -------
    str
        HTML.
    """
    rows = []
    for key, value in _flatten_params(section, name):
        note = notes.get(key, "")
        rows.append(
            f'<tr><td class="key"><code>{_esc(key)}</code></td><td>{_param_value(value)}</td>'
            f'<td class="note">{_esc(note)}</td></tr>'
        )
    return _table(["parameter", "value", "meaning (from params.yaml)"], rows)


# --------------------------------------------------------------------------- provenance


def _params_match(record: Provenance, params: Mapping[str, Any]) -> str:
    if record.params is None:
        return "not recorded"
    current = params.get(record.stage)
    if current is None:
        return "no params.yaml section"
    return "matches params.yaml" if _same(record.params, current) else "differs from params.yaml"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _provenance_block(record: Provenance, params: Mapping[str, Any]) -> str:
    shape = ""
    if record.n_obs is not None and record.n_vars is not None:
        shape = f" \N{EM DASH} {record.n_obs:,} observations {TIMES} {record.n_vars:,} variables"
    head = f"<h4>Checkpoint <code>{_esc(record.path)}</code>{_esc(shape)}</h4>"
    if not record.recorded:
        return (
            head + "<p class=\"note\">No provenance record (uns['provenance']) in this file.</p>"
        )
    match = _params_match(record, params)
    kind = {"matches params.yaml": "ok", "differs from params.yaml": "bad"}.get(match, "na")
    parts = [
        head,
        f'<p>Parameters recorded in the file: <span class="badge {kind}">{_esc(match)}</span></p>',
    ]
    if record.inputs:
        rows = [
            f'<tr><td><code>{_esc(p)}</code></td><td><code class="hash">{_esc(h)}</code></td></tr>'
            for p, h in sorted(record.inputs.items())
        ]
        parts.append("<details><summary>Input files and their SHA-256</summary>")
        parts.append(_table(["input", "sha256"], rows))
        parts.append("</details>")
    if record.params is not None and match != "matches params.yaml":
        parts.append("<details><summary>Parameters recorded in the file</summary>")
        parts.append(
            f"<pre><code>{_esc(json.dumps(record.params, indent=2, sort_keys=True))}</code></pre>"
        )
        parts.append("</details>")
    return "".join(parts)


def _packages_table(records: Sequence[Provenance]) -> str:
    versions: dict[str, dict[str, list[str]]] = {}
    for r in records:
        for package, version in r.packages.items():
            versions.setdefault(package, {}).setdefault(version, []).append(r.stage)
    if not versions:
        return '<p class="notrun">No checkpoint recorded package versions.</p>'
    recorders = {r.stage for r in records if r.packages}
    rows = []
    for package in sorted(versions):
        by_version = versions[package]
        many = len(by_version) > 1
        for version in sorted(by_version):
            seen = set(by_version[version])
            stages = "all" if seen == recorders else ", ".join(_ordered(seen))
            flag = ' <span class="badge bad">differs between checkpoints</span>' if many else ""
            rows.append(
                f"<tr><td><code>{_esc(package)}</code></td><td>{_esc(version)}{flag}</td>"
                f"<td>{_esc(stages)}</td></tr>"
            )
    return _table(["package", "version", "recorded by stage"], rows)


def _ordered(stages: set[str]) -> list[str]:
    """Stage names in pipeline order, unknown ones after, sorted."""
    known = [s for s in STAGE_NAMES if s in stages]
    return known + sorted(stages - set(STAGE_NAMES))


# --------------------------------------------------------------------------- top tables


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _anchors(prefix: str, labels: Sequence[str]) -> dict[str, str]:
    """Return unique, stable anchor ids for labels (they may differ only in punctuation)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for label in labels:
        base = f"{prefix}-{_slug(label)}"
        anchor, i = base, 2
        while anchor in used:
            anchor, i = f"{base}-{i}", i + 1
        used.add(anchor)
        out[label] = anchor
    return out


def _chips(anchors: Mapping[str, str]) -> str:
    links = "".join(f'<a href="#{a}">{_esc(label)}</a>' for label, a in anchors.items())
    return f'<div class="chips">{links}</div>'


def _sorted_labels(values: pd.Series) -> list[str]:
    return sorted({str(v) for v in values.dropna().unique()})


def _genes_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    genes = [str(g) for g in value] if not isinstance(value, str) else re.split(r"[;,]\s*", value)
    genes = [g for g in genes if g]
    more = f" \N{HORIZONTAL ELLIPSIS} ({len(genes)})" if len(genes) > _GENES_SHOWN else ""
    return ", ".join(genes[:_GENES_SHOWN]) + more


def _gene_name(row: Any) -> str:
    """Return the gene symbol of a DE row, or its ID when the symbol is missing."""
    gene = row.gene
    if gene is None or (isinstance(gene, float) and math.isnan(gene)) or not str(gene):
        return str(row.gene_id)
    return str(gene)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _num3(value: Any) -> str:
    """Return a numeric ``<td>`` with 3 significant digits (compact tables)."""
    value = _plain(value)
    if isinstance(value, float) and math.isfinite(value) and value != int(value):
        return f'<td class="num">{_esc(f"{value:.3g}")}</td>'
    return _num(value)


def _num(value: Any) -> str:
    return f'<td class="num">{_esc(format_value(_plain(value)))}</td>'


def render_top_de(
    de: pd.DataFrame,
    *,
    top_n: int,
    alpha: float,
    age_sd: Mapping[str, float] | None = None,
) -> str:
    """Render the top genes up and down with age per cell type.

    Parameters
    ----------
    de
        DE results (docs/pipeline.md columns).
    top_n
        Genes listed per cell type and direction.
    alpha
        Significance cut on ``padj``; rows at or above it are shown dimmed.
    age_sd
        Cell type to the standard deviation (years) of its donors' age, which
        ``log2FoldChange`` is per; where known, a log2 fold change per decade
        (``log2FoldChange * 10 / sd``) is shown too.

    Returns
    -------
    str
        HTML: per cell type, two tables (up, down) ordered by ``padj``.
    """
    labels = _sorted_labels(de["cell_type"])
    if not labels:
        return '<p class="notrun">The DE table is empty.</p>'
    anchors = _anchors("de", labels)
    parts = [
        f"<h3>Top genes per cell type</h3><p class='lead'>The {top_n} genes with the smallest "
        f"adjusted p-value rising (up) and falling (down) with age in each cell type. log2FC "
        "is the log2 fold change per standard deviation of donor age"
        + ("; per decade rescales it to 10 years of age" if age_sd else "")
        + "; hover a gene for its Ensembl ID"
        + f". Rows with padj {GE} {format_value(alpha)} are dimmed.</p>",
        _chips(anchors),
    ]
    for label in labels:
        sub = de[de["cell_type"].astype(str) == label]
        tested = sub[sub["padj"].notna()]
        n_up = int(((tested["padj"] < alpha) & (tested["log2FoldChange"] > 0)).sum())
        n_down = int(((tested["padj"] < alpha) & (tested["log2FoldChange"] < 0)).sum())
        sd = (age_sd or {}).get(label)
        sd = float(sd) if _is_number(sd) and sd > 0 else None
        tables = []
        for direction, mask in (
            ("up", tested["log2FoldChange"] > 0),
            ("down", tested["log2FoldChange"] < 0),
        ):
            top = (
                tested[mask]
                .sort_values(["padj", "pvalue", "gene_id"], kind="mergesort")
                .head(top_n)
            )
            rows = []
            for r in top.itertuples(index=False):
                dim = ' class="dim"' if not r.padj < alpha else ""
                decade = _num3(r.log2FoldChange * 10 / sd) if sd else ""
                rows.append(
                    f'<tr{dim}><td title="{_esc(r.gene_id)}">{_esc(_gene_name(r))}</td>'
                    f"{_num3(r.log2FoldChange)}{decade}{_num3(r.padj)}{_num3(r.baseMean)}</tr>"
                )
            headers = ["gene", "log2FC", *(["per decade"] if sd else []), "padj", "baseMean"]
            body = (
                _table(headers, rows, numeric=[False] + [True] * (len(headers) - 1))
                if rows
                else '<p class="note">No gene tested in this direction.</p>'
            )
            arrow = "\N{UPWARDS ARROW}" if direction == "up" else "\N{DOWNWARDS ARROW}"
            tables.append(f"<div><h5>{arrow} {direction} with age</h5>{body}</div>")
        parts.append(
            f'<div class="celltype" id="{anchors[label]}"><h4>{_esc(label)}</h4>'
            f'<p class="meta">{_count(len(tested), "gene")} tested; {n_up} up and {n_down} down '
            f"at padj &lt; "
            f'{_esc(format_value(alpha))}</p><div class="pair">{"".join(tables)}</div></div>'
        )
    return "".join(parts)


def render_top_gsea(gsea: pd.DataFrame, *, top_n: int, fdr: float) -> str:
    """Render the top gene sets of the preranked GSEA per cell type.

    Parameters
    ----------
    gsea
        GSEA results (docs/pipeline.md columns).
    top_n
        Sets listed per cell type.
    fdr
        Significance cut on ``fdr``; rows at or above it are shown dimmed.

    Returns
    -------
    str
        HTML: per cell type one table ordered by FDR, then p-value, then |NES|.
    """
    labels = _sorted_labels(gsea["cell_type"])
    if not labels:
        return '<p class="notrun">The GSEA table is empty: no cell type had sets to test.</p>'
    anchors = _anchors("gsea", labels)
    parts = [
        f"<h3>Top gene sets per cell type</h3><p class='lead'>The {top_n} sets with the smallest "
        "FDR in each cell type. NES &gt; 0: the set's genes rise with age; NES &lt; 0: they fall. "
        f"Rows with FDR {GE} {_esc(format_value(fdr))} are dimmed; lead genes are the "
        "leading-edge genes driving the score.</p>",
        _chips(anchors),
    ]
    for label in labels:
        sub = gsea[gsea["cell_type"].astype(str) == label].copy()
        sub["_abs"] = -sub["nes"].abs()
        top = sub.sort_values(
            ["fdr", "pval", "_abs", "term"], kind="mergesort", na_position="last"
        ).head(top_n)
        n_sig_up = int(((sub["fdr"] < fdr) & (sub["nes"] > 0)).sum())
        n_sig_down = int(((sub["fdr"] < fdr) & (sub["nes"] < 0)).sum())
        rows = []
        for r in top.itertuples(index=False):
            dim = ' class="dim"' if not r.fdr < fdr else ""
            arrow = (
                "\N{UPWARDS ARROW}" if r.nes > 0 else "\N{DOWNWARDS ARROW}" if r.nes < 0 else ""
            )
            rows.append(
                f"<tr{dim}><td>{_esc(r.term)}</td><td>{arrow}</td>{_num(r.nes)}{_num(r.fdr)}"
                f"<td class='genes'>{_esc(_genes_text(r.lead_genes))}</td></tr>"
            )
        body = (
            _table(
                ["gene set", "", "NES", "FDR", "lead genes"],
                rows,
                numeric=[False, False, True, True],
            )
            if rows
            else '<p class="note">No gene set tested.</p>'
        )
        parts.append(
            f'<div class="celltype" id="{anchors[label]}"><h4>{_esc(label)}</h4>'
            f'<p class="meta">{_count(len(sub), "set")} tested; {n_sig_up} up and '
            f"{n_sig_down} down at FDR &lt; "
            f"{_esc(format_value(fdr))}</p>{body}</div>"
        )
    return "".join(parts)


def render_top_ora(ora: pd.DataFrame, *, top_n: int, padj: float) -> str:
    """Render the top over-represented gene sets per cell type and direction.

    Parameters
    ----------
    ora
        ORA results (docs/pipeline.md columns).
    top_n
        Sets listed per cell type and direction.
    padj
        Significance cut on ``padj``; rows at or above it are shown dimmed.

    Returns
    -------
    str
        HTML: per cell type, one table per direction ordered by ``padj``.
    """
    labels = _sorted_labels(ora["cell_type"])
    if not labels:
        return '<p class="notrun">The ORA table is empty: no cell type had significant genes.</p>'
    anchors = _anchors("ora", labels)
    parts = [
        f"<h3>Top gene sets per cell type</h3><p class='lead'>The {top_n} sets with the smallest "
        "adjusted p-value among the genes significantly up and down with age in each cell type. "
        "Overlap is k/K: genes of the set in the list / genes of the set tested. Rows with padj "
        f"\N{GREATER-THAN OR EQUAL TO} {_esc(format_value(padj))} are dimmed.</p>",
        _chips(anchors),
    ]
    for label in labels:
        sub = ora[ora["cell_type"].astype(str) == label]
        tables = []
        directions = sorted(
            {str(d) for d in sub["direction"].dropna()}, key=lambda d: (d != "up", d)
        )
        for direction in directions:
            part = sub[sub["direction"].astype(str) == direction]
            top = part.sort_values(
                ["padj", "pval", "term"], kind="mergesort", na_position="last"
            ).head(top_n)
            rows = []
            for r in top.itertuples(index=False):
                dim = ' class="dim"' if not r.padj < padj else ""
                rows.append(
                    f"<tr{dim}><td>{_esc(r.term)}</td><td class='num'>{_esc(r.overlap)}</td>"
                    f"{_num(r.padj)}<td class='genes'>{_esc(_genes_text(r.genes))}</td></tr>"
                )
            arrow = {"up": "\N{UPWARDS ARROW} ", "down": "\N{DOWNWARDS ARROW} "}.get(direction, "")
            tables.append(
                f"<div><h5>{arrow}{_esc(direction)} genes</h5>"
                + _table(
                    ["gene set", "overlap", "padj", "genes"], rows, numeric=[False, True, True]
                )
                + "</div>"
            )
        body = (
            f'<div class="pair">{"".join(tables)}</div>'
            if tables
            else '<p class="note">No set tested.</p>'
        )
        parts.append(
            f'<div class="celltype" id="{anchors[label]}"><h4>{_esc(label)}</h4>{body}</div>'
        )
    return "".join(parts)


# --------------------------------------------------------------------------- page


def _cell_types(inputs: ReportInputs) -> list[str]:
    """Return the cell-type labels of the result tables and per-cell-type metrics."""
    labels: set[str] = set()
    for table in (inputs.de, inputs.gsea, inputs.ora):
        if table is not None:
            labels.update(str(v) for v in table["cell_type"].dropna().unique())
    predict = inputs.metrics.get("predict")
    if isinstance(predict, Mapping):
        labels.update(k for k, v in predict.items() if isinstance(v, Mapping))
    for stage in ("de", "gsea", "ora"):
        per_type = _per_cell_type(inputs.metrics.get(stage))
        labels.update(per_type)
    return sorted(labels)


def _per_cell_type(metrics: Any) -> dict[str, Mapping[str, Any]]:
    """Return the ``cell_types`` mapping of a stage's metrics (empty if it has none)."""
    per_type = metrics.get("cell_types") if isinstance(metrics, Mapping) else None
    if not isinstance(per_type, Mapping):
        return {}
    return {str(k): v for k, v in per_type.items() if isinstance(v, Mapping)}


def _stage_ran(name: str, inputs: ReportInputs) -> bool:
    tables = {"de": inputs.de, "gsea": inputs.gsea, "ora": inputs.ora}
    return (
        name in inputs.metrics
        or name in inputs.plot_stages
        or any(r.stage == name for r in inputs.provenance)
        or tables.get(name) is not None
    )


def _param(params: Mapping[str, Any], section: str, key: str, default: float) -> float:
    value = params.get(section, {}).get(key) if isinstance(params.get(section), Mapping) else None
    return float(value) if _is_number(value) else default


def _stage_section(
    step: int, info: StageInfo, inputs: ReportInputs, *, top_n: int, counter: _Counter
) -> str:
    name = info.name
    ran = _stage_ran(name, inputs)
    parts = [
        f'<section id="stage-{_slug(name)}"><h2><span class="step">{step}.</span>'
        f"{_esc(info.title)} "
        f"<code>{_esc(name)}</code> {_badge('ran' if ran else 'not run')}</h2>",
        f'<p class="lead">{_esc(info.summary)}</p>',
    ]
    if not ran:
        parts.append(
            '<p class="notrun">Not run: none of this stage\'s outputs (metrics, figures, '
            "tables, checkpoints) was found.</p>"
        )
    if name == "evaluate" and name in inputs.metrics:
        parts.append("<h3>Goals</h3>")
        parts.append(_goals_intro(inputs.metrics[name]))
        parts.append(_goals_table(check_goals(inputs.metrics[name])))
    if name in inputs.metrics:
        parts.append(f"<h3>Metrics</h3>{render_metrics(inputs.metrics[name])}")
    if inputs.figures.get(name):
        parts.append("<h3>Figures</h3>")
        parts.append(_figures(inputs.figures[name], counter, _cell_types(inputs)))
    parts.append(_series(inputs.series.get(name, [])))
    if name == "de" and inputs.de is not None:
        age_sd = {
            k: v.get("age_sd_years") for k, v in _per_cell_type(inputs.metrics.get("de")).items()
        }
        parts.append(
            render_top_de(
                inputs.de,
                top_n=top_n,
                alpha=_param(inputs.params, "de", "alpha", 0.05),
                age_sd={k: v for k, v in age_sd.items() if _is_number(v)},
            )
        )
    if name == "gsea" and inputs.gsea is not None:
        parts.append(
            render_top_gsea(
                inputs.gsea, top_n=top_n, fdr=_param(inputs.params, "gsea", "fdr", 0.05)
            )
        )
    if name == "ora" and inputs.ora is not None:
        parts.append(
            render_top_ora(
                inputs.ora, top_n=top_n, padj=_param(inputs.params, "ora", "padj", 0.05)
            )
        )
    records = [r for r in inputs.provenance if r.stage == name]
    if records:
        parts.append("<h3>Provenance</h3>")
        parts.extend(_provenance_block(r, inputs.params) for r in records)
    if name in inputs.params:
        parts.append(
            "<details><summary>Parameters (params.yaml section "
            f"<code>{_esc(name)}</code>)</summary>"
        )
        parts.append(render_params(name, inputs.params[name], inputs.param_notes))
        parts.append("</details>")
    parts.append("</section>")
    return "".join(parts)


def _goals_intro(evaluation: Any) -> str:
    flat = flatten_metrics(evaluation)
    if flat and all(v is None for v in flat.values()):
        return '<p class="notrun">No ground truth (real data): the goals cannot be checked.</p>'
    return (
        "<p class='lead'>Targets on the default simulated dataset, checked against "
        "<code>metrics/evaluate.json</code>.</p>"
    )


def _overview(inputs: ReportInputs, stages: Sequence[StageInfo]) -> str:
    parts = ['<section id="overview"><h2>Overview</h2>']
    evaluation = inputs.metrics.get("evaluate")
    if evaluation is not None:
        results = check_goals(evaluation)
        met = sum(r.status == "met" for r in results)
        checked = sum(r.status != "n/a" for r in results)
        cards = [
            ("goals met", f"{met} of {checked}" if checked else "n/a"),
        ]
        flat = flatten_metrics(evaluation)
        for key, label in (
            ("de.recall", "DE recall"),
            ("de.fdr", "DE false discoveries"),
            ("predict.r2", "age prediction R\N{SUPERSCRIPT TWO}"),
            ("cluster.purity", "cluster purity"),
        ):
            if _number(flat.get(key)) is not None:
                cards.append((label, format_value(flat[key])))
        parts.append('<div class="summary">')
        parts.extend(
            f'<div class="card"><div class="value">{_esc(v)}</div>'
            f'<div class="label">{_esc(k)}</div></div>'
            for k, v in cards
        )
        parts.append("</div>")
        if checked:
            parts.append(_goals_table(results))
            parts.append(
                '<p class="note">Details in <a href="#stage-evaluate">Evaluation</a>.</p>'
            )
    rows = []
    for step, info in enumerate(stages, start=1):
        ran = _stage_ran(info.name, inputs)
        n_fig = len(inputs.figures.get(info.name, []))
        rows.append(
            f'<tr><td class="num">{step}</td>'
            f'<td><a href="#stage-{_slug(info.name)}">{_esc(info.title)}</a> '
            f"<code>{_esc(info.name)}</code></td><td>{_badge('ran' if ran else 'not run')}</td>"
            f'<td class="num">{n_fig}</td><td class="note">{_esc(info.summary)}</td></tr>'
        )
    parts.append("<h3>Stages</h3>")
    parts.append(
        _table(
            ["", "stage", "status", "figures", "what it does"],
            rows,
            numeric=[True, False, False, True],
        )
    )
    parts.append("</section>")
    return "".join(parts)


def _provenance_section(inputs: ReportInputs, *, title: str, top_n: int) -> str:
    parts = [
        '<section id="provenance"><h2>Provenance and software</h2>',
        "<p class='lead'>Package versions recorded in the checkpoints' "
        "<code>uns['provenance']</code>, and every checkpoint with its size. Input hashes and "
        "recorded parameters are listed in each stage's section.</p>",
        "<h3>Packages</h3>",
        _packages_table(inputs.provenance),
        "<h3>Checkpoints</h3>",
    ]
    if inputs.provenance:
        rows = []
        for r in sorted(inputs.provenance, key=lambda r: (_stage_rank(r.stage), r.path)):
            n_obs = "" if r.n_obs is None else f"{r.n_obs:,}"
            n_vars = "" if r.n_vars is None else f"{r.n_vars:,}"
            match = _params_match(r, inputs.params) if r.recorded else "no record"
            rows.append(
                f"<tr><td><code>{_esc(r.path)}</code></td><td><a href='#stage-{_slug(r.stage)}'>"
                f"{_esc(r.stage)}</a></td><td class='num'>{n_obs}</td>"
                f"<td class='num'>{n_vars}</td><td>{_esc(match)}</td></tr>"
            )
        parts.append(
            _table(
                ["file", "stage", "observations", "variables", "parameters"],
                rows,
                numeric=[False, False, True, True],
            )
        )
    else:
        parts.append('<p class="notrun">No checkpoint found.</p>')
    parts.append("<h3>This report</h3>")
    if "report" in inputs.params:
        parts.append(render_params("report", inputs.params["report"], inputs.param_notes))
    else:
        parts.append(f"<p>Title {_esc(title)}; {top_n} genes and sets per cell type.</p>")
    parts.append(
        "<p class='note'>Built by the <code>report</code> stage from the metrics, figures, "
        "result tables and checkpoints of the pipeline. Self-contained: figures are embedded, "
        "nothing is loaded from elsewhere. It carries no date, so the same results always give "
        "the same page; <code>dvc.lock</code> records which results it was built from.</p>"
    )
    parts.append("</section>")
    return "".join(parts)


def _stage_rank(stage: str) -> int:
    return STAGE_NAMES.index(stage) if stage in STAGE_NAMES else len(STAGE_NAMES)


def _extra_stages(inputs: ReportInputs) -> list[StageInfo]:
    """Stages with outputs but not in :data:`STAGES` (shown after the known ones)."""
    names = set(inputs.metrics) | set(inputs.plot_stages) | {r.stage for r in inputs.provenance}
    return [
        StageInfo(n, n, "A stage not described by the report.")
        for n in sorted(names - set(STAGE_NAMES) - {"report"})
    ]


def build_report(inputs: ReportInputs, *, title: str, top_n: int) -> str:
    """Build the report page.

    Parameters
    ----------
    inputs
        The loaded results (see :func:`immune_aging.report.collect.read_all`).
    title
        Page title.
    top_n
        Genes and gene sets listed per cell type (and direction).

    Returns
    -------
    str
        The complete HTML document: inline CSS, figures as ``data:`` URIs, no
        script, no external reference.
    """
    stages = [*STAGES, *_extra_stages(inputs)]
    counter = _Counter()
    sections = [_overview(inputs, stages)]
    for step, info in enumerate(stages, start=1):
        sections.append(_stage_section(step, info, inputs, top_n=top_n, counter=counter))
    sections.append(_provenance_section(inputs, title=title, top_n=top_n))
    toc = ['<li><span class="n"></span><a href="#overview">Overview</a></li>']
    for step, info in enumerate(stages, start=1):
        ran = _stage_ran(info.name, inputs)
        badge = "" if ran else " " + _badge("not run")
        toc.append(
            f'<li><span class="n">{step}.</span><span><a href="#stage-{_slug(info.name)}">'
            f"{_esc(info.title)}</a>{badge}</span></li>"
        )
    toc.append('<li><span class="n"></span><a href="#provenance">Provenance and software</a></li>')
    source = ""
    data = inputs.params.get("data")
    if isinstance(data, Mapping) and "source" in data:
        source = f"Input: {_esc(format_value(data['source']))}. "
    n_figures = counter.n
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f'<header class="top"><h1>{_esc(title)}</h1><p>{source}{len(stages)} stages, '
        f"{n_figures} figures. Every figure, metric, parameter and checkpoint of the pipeline on "
        "one page.</p></header>\n"
        '<div class="layout">\n<nav class="toc"><h2>Contents</h2><ul>'
        + "".join(toc)
        + "</ul></nav>\n<main>\n"
        + "\n".join(sections)
        + "\n</main>\n</div>\n</body>\n</html>\n"
    )
    log.info("report: %d sections, %d figures, %.1f MB", len(sections), n_figures, len(page) / 1e6)
    return page
