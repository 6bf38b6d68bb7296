"""What was removed before differential expression, and why.

Read from the metrics of ``filter`` (donors and cell types per rule),
``pseudobulk`` (samples and cell types dropped, donors of unknown age) and ``de``
(cell types skipped). A removal that could depend on age (a donor dropped for
having few cells of some type) shows the donors' ages when the stage recorded
them, under the key ``ages_removed`` (a list aligned with ``donors``, or a
mapping of donor to age), and the filter's comparison of the removed donors'
ages with the rest (``ages_removed`` of ``metrics/filter.json``: mean ages and
a Mann-Whitney p-value per rule and removed cell type); otherwise the table says
they were not recorded. The filter's warnings (a rule that removed by age) are
printed above the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from immune_aging.report.collect import ReportInputs
from immune_aging.report.markup import data_table, esc, format_value, is_number, plural
from immune_aging.report.recorded import per_cell_type

#: shown in the ages column where a rule that can depend on age recorded no ages
NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class Removal:
    """One rule's removals: what, how many, why, and the ages of removed donors."""

    stage: str
    what: str  # "donors", "cell types", "samples", "cells"
    count: int
    rule: str
    items: tuple[str, ...] = ()
    #: ages (years) of the donors in ``items``, "unknown" entries allowed; ``None``
    #: when not recorded, ``()`` when ages do not apply
    ages: tuple[str, ...] | None = ()
    #: the stage's comparison of the removed donors' ages with the others', if any
    age_note: str = ""


def _param(inputs: ReportInputs, section: str, key: str) -> str:
    """Return ``value (section.key)`` from params.yaml, or say the value is not recorded."""
    block = inputs.params.get(section)
    value = block.get(key) if isinstance(block, Mapping) else None
    shown = format_value(value) if value is not None else "(value not recorded)"
    return f"{shown} ({section}.{key})"


def _ages(block: Mapping[str, Any], donors: Sequence[str]) -> tuple[str, ...] | None:
    """Return the recorded ages of ``donors`` (``ages_removed``), or ``None``."""
    ages = block.get("ages_removed")
    if isinstance(ages, Mapping):
        ages = [ages.get(d) for d in donors]
    if not isinstance(ages, list) or len(ages) != len(donors):
        return None
    return tuple(format_value(a) if is_number(a) else "unknown" for a in ages)


def age_note(entry: Any) -> str:
    """Say how the ages of a rule's removed donors compare with the others' (plain text).

    Parameters
    ----------
    entry
        One comparison of the filter's ``ages_removed``: ``donors``, ``mean_age``,
        ``mean_age_rest``, ``p_value`` and, for a removed cell type,
        ``share_age_spearman``.

    Returns
    -------
    str
        E.g. ``mean age 24 (others 55.8)``; ``""`` when nothing is recorded.
    """
    if not isinstance(entry, Mapping) or not is_number(entry.get("mean_age")):
        return ""
    text = f"mean age {format_value(entry['mean_age'])}"
    if is_number(entry.get("mean_age_rest")):
        text += f" (others {format_value(entry['mean_age_rest'])})"
    if is_number(entry.get("p_value")):
        text += f", Mann-Whitney p {format_value(entry['p_value'])}"
    if is_number(entry.get("share_age_spearman")):
        text += f"; share of cells vs age: Spearman {format_value(entry['share_age_spearman'])}"
    return text


def _donor_rule(
    inputs: ReportInputs, block: Any, stage: str, rule: str, note: str = ""
) -> list[Removal]:
    if not isinstance(block, Mapping):
        return []
    donors = tuple(str(d) for d in block.get("donors") or [])
    count = block.get("donors_removed", len(donors))
    if not is_number(count):
        return []
    ages = _ages(block, donors) if donors or count else ()
    return [Removal(stage, "donors", int(count), rule, donors, ages, note)]


def warnings(inputs: ReportInputs) -> list[str]:
    """Return the warnings of the stages before DE (the filter's rules removing by age)."""
    out = []
    for stage in ("filter", "pseudobulk"):
        block = inputs.metrics.get(stage)
        found = block.get("warnings") if isinstance(block, Mapping) else None
        out += [f"{stage}: {w}" for w in found or [] if isinstance(w, str)]
    return out


def removals(inputs: ReportInputs) -> list[Removal]:
    """List what each rule before DE removed, in pipeline order.

    Parameters
    ----------
    inputs
        The loaded results; stages whose metrics are missing contribute nothing.

    Returns
    -------
    list of Removal
        Every rule that the metrics describe, including those that removed nothing.
    """
    out: list[Removal] = []
    filt = inputs.metrics.get("filter")
    if isinstance(filt, Mapping):
        rule_ages = filt.get("ages_removed")
        rule_ages = rule_ages if isinstance(rule_ages, Mapping) else {}
        minimum = filt.get("min_cells_per_donor")
        fewest = f"fewer than {format_value(minimum)} cells: " if is_number(minimum) else ""
        out += _donor_rule(
            inputs,
            filt.get("donor_cutoff"),
            "filter",
            f"{fewest}below percentile {_param(inputs, 'filter', 'cutoff_percentile')} of "
            "cells per donor",
            age_note(rule_ages.get("donor_cutoff")),
        )
        block = filt.get("cell_type_prevalence")
        if isinstance(block, Mapping) and is_number(block.get("cell_types_removed")):
            per_type = rule_ages.get("cell_type_prevalence")
            per_type = per_type if isinstance(per_type, Mapping) else {}
            notes = [
                f"{ct}: {plural(int(e['donors']), 'donor')} below the minimum, {age_note(e)}"
                for ct, e in sorted(per_type.items())
                if age_note(e) and isinstance(e, Mapping) and is_number(e.get("donors"))
            ]
            out.append(
                Removal(
                    "filter",
                    "cell types",
                    int(block["cell_types_removed"]),
                    "at least "
                    f"{_param(inputs, 'filter', 'min_cells_per_celltype')} cells in a share "
                    f"of donors below {_param(inputs, 'filter', 'percent_donors')}",
                    tuple(str(c) for c in block.get("cell_types") or []),
                    age_note="; ".join(notes),
                )
            )
        out += _donor_rule(
            inputs,
            filt.get("donor_completeness"),
            "filter",
            "fewer than "
            f"{_param(inputs, 'filter', 'min_cells_per_celltype')} cells of some kept "
            "cell type",
            age_note(rule_ages.get("donor_completeness")),
        )
        cells = filt.get("cells_removed")
        missing = cells.get("missing_donor") if isinstance(cells, Mapping) else None
        if is_number(missing) and missing:
            out.append(Removal("filter", "cells", int(missing), "no donor ID"))
    pb = inputs.metrics.get("pseudobulk")
    if isinstance(pb, Mapping):
        few = pb.get("samples_dropped_few_cells")
        if is_number(few):
            out.append(
                Removal(
                    "pseudobulk",
                    "samples",
                    int(few),
                    "(cell type, donor) samples of fewer than "
                    f"{_param(inputs, 'pseudobulk', 'min_cells')} cells",
                    ages=None if few else (),
                )
            )
        dropped = pb.get("dropped_cell_types")
        if isinstance(dropped, Mapping):
            out.append(
                Removal(
                    "pseudobulk",
                    "cell types",
                    len(dropped),
                    "fewer than "
                    f"{_param(inputs, 'pseudobulk', 'min_samples_per_cell_type')} samples left",
                    tuple(f"{ct}: {reason}" for ct, reason in sorted(dropped.items())),
                )
            )
        unknown = pb.get("donors_unknown_age_ids")
        if isinstance(unknown, list):
            donors = tuple(str(d) for d in unknown)
            out.append(
                Removal(
                    "pseudobulk",
                    "donors",
                    len(donors),
                    "age unknown (development_stage gives none): left out of every DE "
                    "model and age prediction",
                    donors,
                    tuple("unknown" for _ in donors),
                )
            )
    skipped = {
        ct: str(info["skipped"])
        for ct, info in per_cell_type(inputs.metrics.get("de")).items()
        if info.get("skipped")
    }
    if "de" in inputs.metrics:
        out.append(
            Removal(
                "de",
                "cell types",
                len(skipped),
                f"fewer than {_param(inputs, 'de', 'min_donors')} donors of known age, a "
                "single age, or no gene with "
                f"{_param(inputs, 'de', 'min_total_count')} counts",
                tuple(f"{ct}: {why}" for ct, why in sorted(skipped.items())),
            )
        )
    return out


def summary_line(items: Sequence[Removal]) -> str:
    """Say in one sentence what the removals of :func:`removals` took away (plain text).

    E.g. ``filter: 2 donors, 1 cell type; pseudobulk: 2 donors``; ``""`` when nothing
    was removed or nothing is recorded.
    """
    parts = []
    for stage in ("filter", "pseudobulk", "de"):
        counts: dict[str, int] = {}
        for r in items:
            if r.stage == stage and r.count:
                counts[r.what] = counts.get(r.what, 0) + r.count
        if counts:
            what = ", ".join(plural(n, noun.removesuffix("s")) for noun, n in counts.items())
            parts.append(f"{stage}: {what}")
    return "; ".join(parts)


def render_removals(items: Sequence[Removal], notes: Sequence[str] = ()) -> str:
    """Render the removals of :func:`removals` as a table (HTML).

    One row per rule: stage, rule, count, which, donor ages; a note instead when no
    stage before DE recorded its removals. ``notes`` (the stages' warnings, from
    :func:`warnings`) come first, one line each.
    """
    warned = "".join(f'<p class="warning">{esc(n)}</p>' for n in notes)
    if not items:
        return (
            '<p class="notrun">No record of removals: the metrics of filter, pseudobulk '
            "and de were not found.</p>"
        )
    rows = []
    for r in items:
        which = "; ".join(r.items) if r.items else ""
        if r.ages is None and r.age_note:
            ages = r.age_note
        elif r.ages is None:
            ages = NOT_RECORDED
        elif r.ages and all(a == "unknown" for a in r.ages):
            ages = "unknown"
        elif r.ages:
            ages = ", ".join(f"{d}: {a}" for d, a in zip(r.items, r.ages, strict=True))
        else:
            ages = r.age_note
        if r.ages and r.age_note:
            ages = f"{ages}; {r.age_note}"
        dim = ' class="dim"' if not r.count else ""
        rows.append(
            f"<tr{dim}><td><code>{esc(r.stage)}</code></td><td>{esc(r.rule)}</td>"
            f'<td class="num">{esc(plural(r.count, r.what.removesuffix("s")))}</td>'
            f"<td>{esc(which)}</td><td>{esc(ages)}</td></tr>"
        )
    return warned + data_table(
        ["stage", "removed when", "removed", "which", "donor ages (years)"],
        rows,
        numeric=[False, False, True],
    )
