"""Names derived from labels: file-name-safe slugs of cell types and gene sets."""

from __future__ import annotations

import re


def slug(label: str) -> str:
    """Return a file-name-safe version of a cell type label.

    Parameters
    ----------
    label
        E.g. ``"central memory CD4-positive, alpha-beta T cell"``.

    Returns
    -------
    str
        Lower case, runs of other characters replaced by ``_``
        (``"central_memory_cd4_positive_alpha_beta_t_cell"``).
    """
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "cell_type"


def unique_slugs(labels: list[str]) -> dict[str, str]:
    """Map labels to distinct file-name-safe slugs (a numeric suffix on a clash).

    Parameters
    ----------
    labels
        Distinct labels.

    Returns
    -------
    dict
        Label to slug.
    """
    out: dict[str, str] = {}
    used: set[str] = set()
    for label in labels:
        base = candidate = slug(label)
        i = 2
        while candidate in used:
            candidate = f"{base}_{i}"
            i += 1
        used.add(candidate)
        out[label] = candidate
    return out
