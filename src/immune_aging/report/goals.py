"""Check the goals of :data:`~immune_aging.report.config.GOALS` and render them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from immune_aging.report.config import GOALS, Goal
from immune_aging.report.markup import badge, data_table, esc, format_value, number
from immune_aging.report.tables import flatten_metrics

_OPS = {
    ">=": ("\N{GREATER-THAN OR EQUAL TO}", float.__ge__),
    "<=": ("\N{LESS-THAN OR EQUAL TO}", float.__le__),
    "==": ("=", float.__eq__),
}


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
        value = number(flat.get(goal.key))
        symbol, test = _OPS[goal.op]
        if goal.ref_key is not None:
            ref = number(flat.get(goal.ref_key))
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


def goals_table(results: Sequence[GoalResult]) -> str:
    """Render checked goals as a table: goal and meaning, metric, value, target, verdict.

    Parameters
    ----------
    results
        From :func:`check_goals`.

    Returns
    -------
    str
        HTML.
    """
    rows = []
    for r in results:
        value = "null" if r.value is None else format_value(r.value)
        rows.append(
            f"<tr><td>{esc(r.goal.name)}<div class='note'>{esc(r.goal.meaning)}</div></td>"
            f"<td><code>{esc(r.goal.key)}</code></td><td class='num'>{esc(value)}</td>"
            f"<td>{esc(r.target_text)}</td><td>{badge(r.status)}</td></tr>"
        )
    return data_table(
        ["goal", "metric", "value", "target", "status"],
        rows,
        numeric=[False, False, True],
        css_class="goals",
    )


def goals_intro(evaluation: Any) -> str:
    """Introduce the goals table, or say that there is no truth to check them against.

    Parameters
    ----------
    evaluation
        Decoded ``metrics/evaluate.json``.

    Returns
    -------
    str
        HTML: one paragraph.
    """
    flat = flatten_metrics(evaluation)
    if flat and all(v is None for v in flat.values()):
        return '<p class="notrun">No ground truth (real data): the goals cannot be checked.</p>'
    return (
        "<p class='lead'>Targets on the default simulated dataset, checked against "
        "<code>metrics/evaluate.json</code>.</p>"
    )


def has_truth(evaluation: Any) -> bool:
    """Tell whether the evaluation scored anything (a planted truth was found).

    Parameters
    ----------
    evaluation
        Decoded ``metrics/evaluate.json``, or ``None``.

    Returns
    -------
    bool
        False when the file is missing or every score is null (real data).
    """
    if not isinstance(evaluation, Mapping):
        return False
    return any(v is not None for v in flatten_metrics(evaluation).values())


def validation_section(evaluation: Any, *, alpha: float | None) -> str:
    """Render the check against the simulated truth; empty when there is no truth.

    Parameters
    ----------
    evaluation
        Decoded ``metrics/evaluate.json``, or ``None``.
    alpha
        The cut-off the evaluation used (``evaluate.alpha``), ``None`` if unrecorded.

    Returns
    -------
    str
        HTML: a section with the headline scores and the goals table, or ``""``.
    """
    if not has_truth(evaluation):
        return ""
    results = check_goals(evaluation)
    met = sum(r.status == "met" for r in results)
    checked = sum(r.status != "n/a" for r in results)
    cards = [("goals met", f"{met} of {checked}")]
    flat = flatten_metrics(evaluation)
    for key, label in (
        ("de.recall", "DE recall"),
        ("de.fdr", "DE false discoveries"),
        ("predict.r2", "age prediction R\N{SUPERSCRIPT TWO}"),
        ("cluster.purity", "cluster purity"),
    ):
        if number(flat.get(key)) is not None:
            cards.append((label, format_value(flat[key])))
    at = (
        f" at <code>evaluate.alpha</code> = {esc(format_value(alpha))}"
        if alpha is not None
        else " (no <code>evaluate.alpha</code> recorded)"
    )
    return (
        '<section id="validation"><h2>Check on simulated data: are the planted effects '
        "recovered?</h2><p class='lead'>This input is simulated, with age effects planted in "
        "known genes, gene sets and cell types (<code>data/raw/truth.json</code>). The "
        f"scores below compare the findings above with that truth{at}, against targets for "
        "the workflow; they test the method, not biology.</p>"
        '<div class="summary">'
        + "".join(
            f'<div class="card"><div class="value">{esc(v)}</div>'
            f'<div class="label">{esc(k)}</div></div>'
            for k, v in cards
        )
        + "</div>"
        + goals_table(results)
        + '<p class="note">All scores in <a href="#stage-evaluate">Evaluation</a>.</p></section>'
    )
