"""Recovery of planted effects: DE genes by effect size, gene sets, decoys.

The scores of :mod:`immune_aging.analysis.evaluate` that compare DE, GSEA and ORA
results with the simulation's planted effects; definitions are in that module's
docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

#: Bins of |planted log2 fold change per decade| for ``de.recall_by_effect``: label,
#: lower bound (inclusive), upper bound (exclusive).
EFFECT_BINS = (
    ("<0.05", 0.0, 0.05),
    ("0.05-0.1", 0.05, 0.1),
    ("0.1-0.2", 0.1, 0.2),
    (">=0.2", 0.2, float("inf")),
)


def ratio(num: int, den: int) -> float | None:
    """Return ``num / den``, or None when ``den`` is 0 (a score that is undefined)."""
    return num / den if den else None


def de_scores(
    de_results: pd.DataFrame, truth: Mapping[str, Any], *, alpha: float
) -> dict[str, float | None]:
    """Recall and false-discovery proportion of the planted age genes.

    Parameters
    ----------
    de_results
        DE rows with ``cell_type, gene_id, log2FoldChange, padj``.
    truth
        The simulation truth (``aged_cell_types``, ``age_genes``).
    alpha
        Adjusted p-value cut.

    Returns
    -------
    dict
        ``de.recall`` and ``de.fdr``.
    """
    planted: dict[tuple[str, str], int] = {}
    for ct in truth["aged_cell_types"]:
        genes = truth["age_genes"].get(ct, {})
        for gene in genes.get("up", []):
            planted[(ct, gene)] = 1
        for gene in genes.get("down", []):
            planted[(ct, gene)] = -1
    tested_cts = set(de_results["cell_type"].astype(str))
    sig = de_results[de_results["padj"].to_numpy(dtype=float) < alpha]
    found_sign = {
        (str(c), str(g)): int(np.sign(v))
        for c, g, v in zip(sig["cell_type"], sig["gene_id"], sig["log2FoldChange"], strict=True)
    }
    relevant = {k: s for k, s in planted.items() if k[0] in tested_cts}
    hits = sum(found_sign.get(k) == s for k, s in relevant.items())
    false = sum(planted.get(k) != s for k, s in found_sign.items())
    return {"de.recall": ratio(hits, len(relevant)), "de.fdr": ratio(false, len(found_sign))}


def planted_effects(truth: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """Every planted effect: (cell type, gene id) -> log2 fold change per decade.

    Parameters
    ----------
    truth
        The simulation truth: ``log2fc_per_decade_by_cell_type`` when present,
        else ``age_genes`` of ``aged_cell_types`` with ``log2fc_per_decade``.

    Returns
    -------
    dict
        Non-zero effects only.
    """
    by_type = truth.get("log2fc_per_decade_by_cell_type")
    if by_type is not None:
        return {
            (str(ct), str(g)): float(v) for ct, genes in by_type.items() for g, v in genes.items()
        }
    effect = truth.get("log2fc_per_decade", {})
    out = {}
    for ct in truth["aged_cell_types"]:
        genes = truth["age_genes"].get(ct, {})
        for gene in [*genes.get("up", []), *genes.get("down", [])]:
            if gene in effect:
                out[(str(ct), str(gene))] = float(effect[gene])
    return out


def null_cell_types(truth: Mapping[str, Any]) -> list[str]:
    """Return the simulated cell types without any planted age effect.

    Parameters
    ----------
    truth
        The simulation truth (``null_cell_types`` when present, else ``cell_types``
        not in ``aged_cell_types``).

    Returns
    -------
    list of str
        Labels.
    """
    if "null_cell_types" in truth:
        return [str(c) for c in truth["null_cell_types"]]
    aged = set(truth["aged_cell_types"])
    return [str(c) for c in truth.get("cell_types", []) if c not in aged]


def recall_by_effect(
    de_results: pd.DataFrame, truth: Mapping[str, Any], *, alpha: float
) -> pd.DataFrame:
    """Recall of the planted pairs of the tested cell types per effect-size bin.

    Parameters
    ----------
    de_results
        DE rows with ``cell_type, gene_id, log2FoldChange, padj``.
    truth
        The simulation truth.
    alpha
        Adjusted p-value cut.

    Returns
    -------
    pandas.DataFrame
        One row per bin of :data:`EFFECT_BINS`: ``bin, low, high, planted, found,
        recall`` (recall NaN for an empty bin).
    """
    tested = set(de_results["cell_type"].astype(str))
    sig = de_results[de_results["padj"].to_numpy(dtype=float) < alpha]
    found = {
        (str(c), str(g)): float(np.sign(v))
        for c, g, v in zip(sig["cell_type"], sig["gene_id"], sig["log2FoldChange"], strict=True)
    }
    rows = []
    effects = {k: v for k, v in planted_effects(truth).items() if k[0] in tested}
    for label, low, high in EFFECT_BINS:
        pairs = [(k, v) for k, v in effects.items() if low <= abs(v) < high]
        hits = sum(found.get(k) == np.sign(v) for k, v in pairs)
        rows.append(
            {
                "bin": label,
                "low": low,
                "high": high,
                "planted": len(pairs),
                "found": int(hits),
                "recall": hits / len(pairs) if pairs else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def _none_if_nan(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def power_scores(
    de_results: pd.DataFrame, truth: Mapping[str, Any], *, alpha: float
) -> dict[str, Any]:
    """Recall by effect size, effect-size bias and discoveries in null cell types.

    Parameters
    ----------
    de_results
        DE rows with ``cell_type, gene_id, log2FoldChange, padj`` and, for
        ``de.effect_scale``, ``log2fc_per_decade``.
    truth
        The simulation truth.
    alpha
        Adjusted p-value cut.

    Returns
    -------
    dict
        ``de.discoveries, de.recall_by_effect, de.effect_scale, de.null_cell_types,
        de.null_cell_types_with_discoveries, de.null_discoveries``.
    """
    table = recall_by_effect(de_results, truth, alpha=alpha)
    by_bin = {
        r.bin: {"planted": int(r.planted), "found": int(r.found), "recall": _none_if_nan(r.recall)}
        for r in table.itertuples(index=False)
    }
    sig = de_results["padj"].to_numpy(dtype=float) < alpha
    scale = None
    if "log2fc_per_decade" in de_results.columns:
        est = dict(
            zip(
                zip(
                    de_results["cell_type"].astype(str),
                    de_results["gene_id"].astype(str),
                    strict=True,
                ),
                de_results["log2fc_per_decade"].to_numpy(dtype=float),
                strict=True,
            )
        )
        pairs = [(est[k], v) for k, v in planted_effects(truth).items() if k in est]
        pairs = [(e, v) for e, v in pairs if np.isfinite(e)]
        if pairs:
            e, v = np.array(pairs).T
            scale = float(np.sum(e * v) / np.sum(v * v))
    tested = set(de_results["cell_type"].astype(str))
    null = [c for c in null_cell_types(truth) if c in tested]
    cts = de_results["cell_type"].astype(str).to_numpy()
    per_null = {c: int((sig & (cts == c)).sum()) for c in null}
    return {
        "de.discoveries": int(sig.sum()),
        "de.recall_by_effect": by_bin,
        "de.effect_scale": scale,
        "de.null_cell_types": len(null),
        "de.null_cell_types_with_discoveries": sum(n > 0 for n in per_null.values()),
        "de.null_discoveries": sum(per_null.values()),
    }


def decoy_scores(
    gsea_results: pd.DataFrame,
    ora_results: pd.DataFrame,
    truth: Mapping[str, Any],
    cell_types: set[str],
    *,
    alpha: float,
) -> dict[str, Any]:
    """Decoy gene sets called significant by GSEA and by ORA.

    Parameters
    ----------
    gsea_results
        GSEA rows with ``cell_type, term, fdr``.
    ora_results
        ORA rows with ``cell_type, term, padj``.
    truth
        The simulation truth (``decoy_sets``, optionally ``decoy_kinds``).
    cell_types
        The cell types DE tested; every (decoy, cell type) pair counts.
    alpha
        Significance cut.

    Returns
    -------
    dict
        ``{gsea,ora}.decoys_called``, ``.decoys_total``, ``.decoy_rate`` and
        ``.decoy_rate_by_kind``.
    """
    decoys = [str(d) for d in truth.get("decoy_sets", [])]
    kinds = {d: str(truth.get("decoy_kinds", {}).get(d, "random")) for d in decoys}
    out: dict[str, Any] = {}
    for name, table, column in (("gsea", gsea_results, "fdr"), ("ora", ora_results, "padj")):
        called_rows = table[table[column].to_numpy(dtype=float) < alpha]
        called_pairs = set(
            zip(called_rows["cell_type"].astype(str), called_rows["term"].astype(str), strict=True)
        )
        by_kind: dict[str, list[int]] = {}
        for decoy in decoys:
            for ct in sorted(cell_types):
                hit = any(
                    c == ct and (t == decoy or t.endswith(f":{decoy}")) for c, t in called_pairs
                )
                by_kind.setdefault(kinds[decoy], []).append(int(hit))
        calls = [h for hits in by_kind.values() for h in hits]
        out[f"{name}.decoys_called"] = int(sum(calls))
        out[f"{name}.decoys_total"] = len(calls)
        out[f"{name}.decoy_rate"] = ratio(int(sum(calls)), len(calls))
        out[f"{name}.decoy_rate_by_kind"] = {
            kind: ratio(int(sum(h)), len(h)) for kind, h in sorted(by_kind.items())
        }
    return out


def _term_index(terms: pd.Series, name: str) -> pd.Series:
    t = terms.astype(str)
    return (t == name) | t.str.endswith(f":{name}")


def planted_pairs(truth: Mapping[str, Any], cell_types: set[str]) -> list[tuple[str, str, str]]:
    """List the planted (set, cell type, direction) triples in the given cell types.

    Parameters
    ----------
    truth
        The simulation truth (``gene_sets``).
    cell_types
        Cell types to keep (those DE tested).

    Returns
    -------
    list of tuple
        ``(set name, cell type, "up" | "down")``, sorted.
    """
    out = []
    for name, info in truth["gene_sets"].items():
        for ct in info.get("cell_types", []):
            if ct in cell_types:
                out.append((name, ct, info["direction"]))
    return sorted(out)


def _pairs_found(
    results: pd.DataFrame,
    pairs: list[tuple[str, str, str]],
    hit: Callable[[pd.DataFrame, str], np.ndarray],
) -> int:
    """Count the pairs with a row of their cell type and set for which ``hit`` holds.

    ``hit(rows, direction)`` is True per row of the pair's cell type and set that
    finds it in the planted ``direction`` (``"up"`` or ``"down"``).
    """
    found = 0
    for name, ct, direction in pairs:
        rows = results[
            (results["cell_type"].astype(str) == ct) & _term_index(results["term"], name)
        ]
        found += bool(hit(rows, direction).any())
    return found


def gsea_scores(
    gsea_results: pd.DataFrame, pairs: list[tuple[str, str, str]], *, alpha: float
) -> dict[str, int]:
    """Count planted (set, cell type) pairs found by GSEA with the planted sign.

    Parameters
    ----------
    gsea_results
        GSEA rows with ``cell_type, term, nes, fdr``.
    pairs
        From :func:`planted_pairs`.
    alpha
        FDR cut.

    Returns
    -------
    dict
        ``gsea.planted_found`` and ``gsea.planted_total``.
    """

    def hit(rows: pd.DataFrame, direction: str) -> np.ndarray:
        sign = 1.0 if direction == "up" else -1.0
        return (rows["fdr"].to_numpy(float) < alpha) & (
            np.sign(rows["nes"].to_numpy(float)) == sign
        )

    found = _pairs_found(gsea_results, pairs, hit)
    return {"gsea.planted_found": found, "gsea.planted_total": len(pairs)}


def ora_scores(
    ora_results: pd.DataFrame, pairs: list[tuple[str, str, str]], *, alpha: float
) -> dict[str, int]:
    """Count planted (set, cell type) pairs found by ORA in the planted direction.

    Parameters
    ----------
    ora_results
        ORA rows with ``cell_type, direction, term, padj``.
    pairs
        From :func:`planted_pairs`.
    alpha
        Adjusted p-value cut.

    Returns
    -------
    dict
        ``ora.planted_found``.
    """

    def hit(rows: pd.DataFrame, direction: str) -> np.ndarray:
        return (rows["direction"].astype(str) == direction).to_numpy() & (
            rows["padj"].to_numpy(float) < alpha
        )

    return {"ora.planted_found": _pairs_found(ora_results, pairs, hit)}
