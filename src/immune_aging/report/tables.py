"""Tables of the report built from metrics JSON, params.yaml and provenance records."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from immune_aging.report.config import STAGE_NAMES
from immune_aging.report.markup import (
    TIMES,
    data_table,
    esc,
    format_value,
    is_number,
    is_scalar,
    td,
)
from immune_aging.report.provenance import Provenance

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
        return f"<table><tbody><tr>{td(obj)}</tr></tbody></table>"
    if not obj:
        return '<p class="note">(empty)</p>'
    if depth >= 3:
        return f"<pre><code>{esc(json.dumps(obj, indent=1, sort_keys=True))}</code></pre>"
    if _is_matrix(obj):
        return _matrix_table(obj)
    items = _items(obj)
    flat = [(k, v) for k, v in items if is_scalar(v) or _is_short_list(v)]
    nested = [(k, v) for k, v in items if not (is_scalar(v) or _is_short_list(v))]
    parts = []
    if flat:
        rows = [f'<tr><td class="key">{esc(k)}</td>{td(v, align=False)}</tr>' for k, v in flat]
        parts.append(data_table(["metric", "value"], rows))
    tag = "h4" if depth == 0 else "h5"
    if nested:
        parts.append('<div class="subtables">')
        for key, value in nested:
            parts.append(f'<div class="sub"><{tag}>{esc(key)}</{tag}>')
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
    return isinstance(value, list) and all(is_scalar(v) for v in value)


def _is_matrix(obj: Mapping[str, Any]) -> bool:
    """Tell whether every value is a non-empty mapping of scalars (rows of one table)."""
    return len(obj) > 0 and all(
        isinstance(v, Mapping) and v and all(is_scalar(x) or _is_short_list(x) for x in v.values())
        for v in obj.values()
    )


def _matrix_table(obj: Mapping[str, Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in obj.values():
        columns.extend(c for c in row if c not in columns)
    numeric = [False] + [
        all(is_number(r.get(c)) or r.get(c) is None for r in obj.values()) for c in columns
    ]
    rows = [
        f'<tr><td class="key">{esc(k)}</td>{"".join(td(r.get(c)) for c in columns)}</tr>'
        for k, r in _items(obj)
    ]
    return data_table(["", *columns], rows, numeric=numeric)


def _records_table(records: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in records:
        columns.extend(c for c in row if c not in columns)
    rows = [f"<tr>{''.join(td(r.get(c)) for c in columns)}</tr>" for r in records]
    return data_table(columns, rows)


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
        return f"<code>{esc(value)}</code>"
    if value is None or isinstance(value, bool):
        return esc(format_value(value))
    return esc(str(value))


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
            f'<tr><td class="key"><code>{esc(key)}</code></td><td>{_param_value(value)}</td>'
            f'<td class="note">{esc(note)}</td></tr>'
        )
    return data_table(["parameter", "value", "meaning (from params.yaml)"], rows)


# --------------------------------------------------------------------------- provenance


def params_match(record: Provenance, params: Mapping[str, Any]) -> str:
    """Say whether a checkpoint's recorded parameters match its params.yaml section.

    Parameters
    ----------
    record
        The checkpoint's provenance.
    params
        Every section of params.yaml.

    Returns
    -------
    str
        ``matches params.yaml``, ``differs from params.yaml``, ``not recorded`` or
        ``no params.yaml section``.
    """
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


def provenance_block(record: Provenance, params: Mapping[str, Any]) -> str:
    """Render one checkpoint: shape, parameter check, input hashes, differing parameters.

    ``record`` and ``params`` are as for :func:`params_match`; returns HTML.
    """
    shape = ""
    if record.n_obs is not None and record.n_vars is not None:
        shape = f" \N{EM DASH} {record.n_obs:,} observations {TIMES} {record.n_vars:,} variables"
    head = f"<h4>Checkpoint <code>{esc(record.path)}</code>{esc(shape)}</h4>"
    if not record.recorded:
        return (
            head + "<p class=\"note\">No provenance record (uns['provenance']) in this file.</p>"
        )
    match = params_match(record, params)
    kind = {"matches params.yaml": "ok", "differs from params.yaml": "bad"}.get(match, "na")
    parts = [
        head,
        f'<p>Parameters recorded in the file: <span class="badge {kind}">{esc(match)}</span></p>',
    ]
    if record.inputs:
        rows = [
            f'<tr><td><code>{esc(p)}</code></td><td><code class="hash">{esc(h)}</code></td></tr>'
            for p, h in sorted(record.inputs.items())
        ]
        parts.append("<details><summary>Input files and their SHA-256</summary>")
        parts.append(data_table(["input", "sha256"], rows))
        parts.append("</details>")
    if record.params is not None and match != "matches params.yaml":
        parts.append("<details><summary>Parameters recorded in the file</summary>")
        parts.append(
            f"<pre><code>{esc(json.dumps(record.params, indent=2, sort_keys=True))}</code></pre>"
        )
        parts.append("</details>")
    return "".join(parts)


def packages_table(records: Sequence[Provenance]) -> str:
    """Render the package versions recorded by the checkpoints, flagging differences.

    Parameters
    ----------
    records
        Every checkpoint's provenance.

    Returns
    -------
    str
        HTML: one row per (package, version) with the stages that recorded it.
    """
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
            stages = "all" if seen == recorders else ", ".join(ordered_stages(seen))
            flag = ' <span class="badge bad">differs between checkpoints</span>' if many else ""
            rows.append(
                f"<tr><td><code>{esc(package)}</code></td><td>{esc(version)}{flag}</td>"
                f"<td>{esc(stages)}</td></tr>"
            )
    return data_table(["package", "version", "recorded by stage"], rows)


def ordered_stages(stages: set[str]) -> list[str]:
    """Stage names in pipeline order, unknown ones after, sorted."""
    known = [s for s in STAGE_NAMES if s in stages]
    return known + sorted(stages - set(STAGE_NAMES))
