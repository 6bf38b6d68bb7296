"""HTML primitives of the report: escaping, value formatting, tables, badges, figures.

Pure functions returning HTML text; every text passed in is escaped here.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from immune_aging.names import slug
from immune_aging.report.captions import caption_for
from immune_aging.report.collect import Figure, Series

GE = "\N{GREATER-THAN OR EQUAL TO}"
TIMES = "\N{MULTIPLICATION SIGN}"
#: beyond this many items a list in a metrics table is cut
LIST_SHOWN = 24


def esc(value: Any) -> str:
    """Return ``str(value)`` escaped for HTML text and attribute values."""
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


def is_number(value: Any) -> bool:
    """Tell whether ``value`` is an int or float (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(value: Any) -> float | int | None:
    """Return a finite-or-infinite number as is (ints stay ints), else ``None`` (NaN too)."""
    if is_number(value) and not (isinstance(value, float) and math.isnan(value)):
        return value
    return None


def is_scalar(value: Any) -> bool:
    """Tell whether ``value`` is a JSON scalar (None, text, number or bool)."""
    return value is None or isinstance(value, str | int | float | bool)


def td(value: Any, *, align: bool = True) -> str:
    """Return a ``<td>`` for a scalar or a short list (numbers right-aligned if ``align``)."""
    if isinstance(value, list) and all(is_scalar(v) for v in value):
        # labels such as cell types hold commas: separate text items with semicolons
        sep = "; " if any(isinstance(v, str) for v in value) else ", "
        shown = sep.join(format_value(v) for v in value[:LIST_SHOWN])
        more = f" \N{HORIZONTAL ELLIPSIS} ({len(value)} in all)" if len(value) > LIST_SHOWN else ""
        return f"<td>{esc(shown + more)}</td>"
    if is_number(value) and align:
        return f'<td class="num">{esc(format_value(value))}</td>'
    if not is_scalar(value):
        return f"<td><code>{esc(json.dumps(value, sort_keys=True))}</code></td>"
    return f"<td>{esc(format_value(value))}</td>"


def data_table(
    headers: Sequence[str],
    rows: Sequence[str],
    *,
    numeric: Sequence[bool] = (),
    css_class: str | None = None,
) -> str:
    """Wrap header cells and pre-rendered ``<tr>`` rows into a scrollable table.

    Parameters
    ----------
    headers
        Column headings (plain text, escaped here).
    rows
        Rendered ``<tr>`` rows.
    numeric
        Per column, whether its heading is right-aligned (numbers); missing ones are not.
    css_class
        Class of the ``<table>`` element, if any.

    Returns
    -------
    str
        HTML.
    """
    ths = "".join(
        f'<th class="num">{esc(h)}</th>'
        if i < len(numeric) and numeric[i]
        else f"<th>{esc(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(rows)
    table = f'<table class="{esc(css_class)}">' if css_class else "<table>"
    return (
        f'<div class="scroll">{table}<thead><tr>{ths}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def badge(status: str) -> str:
    """Return a coloured status badge (met/ran green, not met red, others grey)."""
    kind = {"met": "ok", "not met": "bad", "ran": "ok", "not run": "na"}.get(status, "na")
    return f'<span class="badge {kind}">{esc(status)}</span>'


# --------------------------------------------------------------------------- figures


class FigureCounter:
    """Numbers figures in the order they appear on the page."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        """Return the next figure number."""
        self.n += 1
        return self.n


def figure_html(fig: Figure, number: int, caption: str, *, source: str | None = None) -> str:
    """Render one figure as an embedded PNG with its numbered caption.

    Parameters
    ----------
    fig
        The figure.
    number
        Its number on the page.
    caption
        What it shows and how to read it (plain text).
    source
        The file it was read from, shown after the caption; ``None`` for a figure
        drawn by the report itself.

    Returns
    -------
    str
        HTML: a ``<figure>``, wide when the image is.
    """
    data = base64.b64encode(fig.png).decode("ascii")
    wide = ' class="wide"' if fig.width >= 1000 or fig.width >= 2 * fig.height else ""
    where = f" <code>{esc(source)}</code>" if source is not None else ""
    return (
        f'<figure id="fig-{number}"{wide}><img src="data:image/png;base64,{data}" '
        f'width="{fig.width}" height="{fig.height}" alt="{esc(fig.stage + ": " + fig.name)}">'
        f"<figcaption><b>Figure {number}.</b> {esc(caption)}{where}</figcaption></figure>"
    )


def _figure(fig: Figure, number: int, labels: Sequence[str]) -> str:
    caption = caption_for(fig.stage, fig.name, labels=labels)
    return figure_html(fig, number, caption, source=f"plots/{fig.stage}/{fig.name}")


def figures_block(figs: Sequence[Figure], counter: FigureCounter, labels: Sequence[str]) -> str:
    """Render figures (sorted by file name) as a numbered grid with their captions.

    Parameters
    ----------
    figs
        Figures of one stage.
    counter
        The page's figure counter.
    labels
        Known cell types, for captions that name one (see :func:`caption_for`).

    Returns
    -------
    str
        HTML; empty when there is no figure.
    """
    if not figs:
        return ""
    items = "".join(_figure(f, counter.next(), labels) for f in sorted(figs, key=lambda f: f.name))
    return f'<div class="figures">{items}</div>'


def series_block(items: Sequence[Series]) -> str:
    """Render the CSV series behind a stage's figures as a folded list of previews."""
    if not items:
        return ""
    parts = [
        f"<details><summary>Data behind the figures ({len(items)} CSV file"
        f"{'s' if len(items) != 1 else ''})</summary>"
    ]
    for s in sorted(items, key=lambda s: s.name):
        parts.append(
            f"<h5><code>plots/{esc(s.stage)}/{esc(s.name)}</code>: {s.n_rows} rows {TIMES} "
            f"{len(s.columns)} columns</h5>"
        )
        if len(s.head):
            head = s.head
            numeric = [pd.api.types.is_numeric_dtype(head[c]) for c in head.columns]
            rows = [
                "<tr>" + "".join(td(plain(v)) for v in row) + "</tr>"
                for row in head.itertuples(index=False, name=None)
            ]
            parts.append(data_table([str(c) for c in head.columns], rows, numeric=numeric))
            if s.n_rows > len(head):
                parts.append(f'<p class="note">First {len(head)} of {s.n_rows} rows.</p>')
    parts.append("</details>")
    return "".join(parts)


def plain(value: Any) -> Any:
    """Numpy scalars to Python ones (for formatting)."""
    if hasattr(value, "item") and not isinstance(value, str):
        return value.item()
    return value


# --------------------------------------------------------------------------- anchors


def anchor_slug(text: str) -> str:
    """Return ``text`` lower-cased with runs of other characters as one ``-``."""
    return slug(text, sep="-", default="x")


def anchors_for(prefix: str, labels: Sequence[str]) -> dict[str, str]:
    """Return unique, stable anchor ids for labels (they may differ only in punctuation)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for label in labels:
        base = f"{prefix}-{anchor_slug(label)}"
        anchor, i = base, 2
        while anchor in used:
            anchor, i = f"{base}-{i}", i + 1
        used.add(anchor)
        out[label] = anchor
    return out


def chips(anchors: Mapping[str, str]) -> str:
    """Return a row of links to anchors, one per label."""
    links = "".join(f'<a href="#{a}">{esc(label)}</a>' for label, a in anchors.items())
    return f'<div class="chips">{links}</div>'


# --------------------------------------------------------------------------- numbers


def plural(n: int, noun: str) -> str:
    """Return ``"1 gene"``, ``"2 genes"``, ``"12,000 genes"``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def td_num3(value: Any) -> str:
    """Return a numeric ``<td>`` with 3 significant digits (compact tables)."""
    value = plain(value)
    if isinstance(value, float) and math.isfinite(value) and value != int(value):
        return f'<td class="num">{esc(f"{value:.3g}")}</td>'
    return td_num(value)


def td_num(value: Any) -> str:
    """Return a numeric ``<td>`` formatted by :func:`format_value`."""
    return f'<td class="num">{esc(format_value(plain(value)))}</td>'
