"""Names derived from labels: file-name-safe slugs of cell types and gene sets."""

from __future__ import annotations

import re


def slug(label: str, *, sep: str = "_", default: str = "cell_type") -> str:
    """Return a file-name- and anchor-safe version of a label.

    Parameters
    ----------
    label
        E.g. ``"central memory CD4-positive, alpha-beta T cell"``.
    sep
        What replaces each run of characters other than ``a-z0-9``.
    default
        The slug of a label that has none of those characters.

    Returns
    -------
    str
        Lower case, runs of other characters replaced by ``sep``
        (``"central_memory_cd4_positive_alpha_beta_t_cell"``).
    """
    return re.sub(r"[^a-z0-9]+", sep, label.lower()).strip(sep) or default


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
