"""What the run recorded, looked up in its metrics and parameters.

The report never assumes a value the run did not record: a cut-off missing from
both the stage's metrics and its params.yaml section is ``None``, and the page
says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from immune_aging.report.collect import ReportInputs
from immune_aging.report.markup import is_number

#: The significance cut-off of each stage: the key in ``metrics/<stage>.json`` and in
#: the params.yaml section ``<stage>`` (both hold the same value after a run).
CUTOFF_KEYS: Mapping[str, str] = {"de": "alpha", "gsea": "fdr", "ora": "padj", "evaluate": "alpha"}


def cutoff(inputs: ReportInputs, stage: str) -> float | None:
    """Return the significance cut-off a stage used.

    Parameters
    ----------
    inputs
        The loaded results.
    stage
        A stage of :data:`CUTOFF_KEYS`.

    Returns
    -------
    float or None
        The value the stage wrote to its metrics (what the run used), else its
        params.yaml value, else ``None``.
    """
    key = CUTOFF_KEYS[stage]
    for source in (inputs.metrics.get(stage), inputs.params.get(stage)):
        if isinstance(source, Mapping) and is_number(source.get(key)):
            return float(source[key])
    return None


def per_cell_type(metrics: Any) -> dict[str, Mapping[str, Any]]:
    """Return the ``cell_types`` mapping of a stage's metrics (empty if it has none).

    Parameters
    ----------
    metrics
        Decoded ``metrics/<stage>.json``, or ``None``.

    Returns
    -------
    dict
        Cell type to its mapping of metrics.
    """
    per_type = metrics.get("cell_types") if isinstance(metrics, Mapping) else None
    if not isinstance(per_type, Mapping):
        return {}
    return {str(k): v for k, v in per_type.items() if isinstance(v, Mapping)}


def cell_types(inputs: ReportInputs) -> list[str]:
    """Return the sorted cell types of the result tables and per-cell-type metrics."""
    labels: set[str] = set()
    for table in (inputs.de, inputs.gsea, inputs.ora):
        if table is not None:
            labels.update(str(v) for v in table["cell_type"].dropna().unique())
    predict = inputs.metrics.get("predict")
    if isinstance(predict, Mapping):
        labels.update(k for k, v in predict.items() if isinstance(v, Mapping))
    for stage in ("de", "gsea", "ora"):
        labels.update(per_cell_type(inputs.metrics.get(stage)))
    return sorted(labels)
