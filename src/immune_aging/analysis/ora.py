"""Over-representation analysis (ORA) of the genes up and down with age.

Local backend (offline): for each cell type and direction, a one-sided
hypergeometric test of every gene set against the genes significant in that
direction (``padj`` below the cut and ``log2FoldChange`` of that sign). The
background is the genes that had a DE test in that cell type, i.e. a ``padj``
(genes whose ``padj`` is NaN, removed by DESeq2's independent filtering or as
outliers, could never have been significant, so they are left out) and that
belong to at least one set of the library; sets are restricted to the background and kept
when their restricted size lies within ``[min_size, max_size]``; p-values are
Benjamini-Hochberg adjusted across the sets tested for one (cell type,
direction). Only sets with at least one significant gene are reported.

Enrichr backend (online): the same gene lists are sent to the Enrichr web service
(through gseapy) against named Enrichr libraries; there is no custom background.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import hypergeom

from immune_aging.analysis import plots
from immune_aging.errors import InputError

log = logging.getLogger(__name__)

#: Columns of the results table, in order.
RESULT_COLUMNS = ["cell_type", "direction", "term", "overlap", "pval", "padj", "genes"]
#: Enrichr's address, probed before the enrichr backend runs.
ENRICHR_URL = "https://maayanlab.cloud/Enrichr/"


def bh_adjust(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values.

    Parameters
    ----------
    pvalues
        Raw p-values (no NaN).

    Returns
    -------
    ndarray
        Adjusted p-values, same order, capped at 1.
    """
    p = np.asarray(pvalues, dtype=float)
    n = p.size
    if n == 0:
        return p.copy()
    order = np.argsort(p, kind="mergesort")
    scaled = p[order] * n / np.arange(1, n + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def hypergeometric_sf(k: int, population: int, successes: int, draws: int) -> float:
    """Probability of drawing at least ``k`` set genes in ``draws`` genes.

    Parameters
    ----------
    k
        Significant genes in the set (observed overlap).
    population
        Background size.
    successes
        Set size within the background.
    draws
        Significant genes within the background.

    Returns
    -------
    float
        ``P(X >= k)`` for ``X ~ Hypergeom(population, successes, draws)``.
    """
    return float(hypergeom.sf(k - 1, population, successes, draws))


def significant_genes(de_results: pd.DataFrame, *, padj: float) -> dict[str, dict[str, list[str]]]:
    """Split each cell type's significant genes by direction.

    Parameters
    ----------
    de_results
        DE rows with ``cell_type, gene, log2FoldChange, padj``.
    padj
        Adjusted p-value cut.

    Returns
    -------
    dict
        ``{cell_type: {"up": [symbols], "down": [symbols]}}``, symbols unique and sorted.
    """
    out: dict[str, dict[str, list[str]]] = {}
    for ct, rows in de_results.groupby(de_results["cell_type"].astype(str), sort=True):
        sig = rows["padj"].to_numpy(dtype=float) < padj
        lfc = rows["log2FoldChange"].to_numpy(dtype=float)
        genes = rows["gene"].astype(str).to_numpy()
        out[str(ct)] = {
            "up": sorted(set(genes[sig & (lfc > 0)])),
            "down": sorted(set(genes[sig & (lfc < 0)])),
        }
    return out


def ora_local(
    query: Sequence[str],
    background: Sequence[str],
    gene_sets: Mapping[str, Sequence[str]],
    *,
    min_size: int,
    max_size: int,
) -> pd.DataFrame:
    """Hypergeometric over-representation of one gene list.

    Parameters
    ----------
    query
        Significant gene symbols.
    background
        Gene symbols that could have been significant.
    gene_sets
        Set name to gene symbols.
    min_size, max_size
        Bounds on a set's size within the background.

    Returns
    -------
    DataFrame
        ``term, overlap ("k/K"), pval, padj, genes (";"-joined overlap)`` for the
        sets with ``k >= 1``, sorted by p-value then term; ``padj`` is adjusted over
        every tested set, including those with no overlap.
    """
    universe = set(background) & {g for genes in gene_sets.values() for g in genes}
    hits = set(query) & universe
    rows = []
    for term, members in gene_sets.items():
        restricted = set(members) & universe
        size = len(restricted)
        if not min_size <= size <= max_size:
            continue
        found = sorted(restricted & hits)
        p = hypergeometric_sf(len(found), len(universe), size, len(hits)) if found else 1.0
        rows.append((term, f"{len(found)}/{size}", p, ";".join(found), len(found)))
    df = pd.DataFrame(rows, columns=["term", "overlap", "pval", "genes", "k"])
    df["pval"] = df["pval"].astype(float)
    df["padj"] = bh_adjust(df["pval"].to_numpy())
    df = df[df["k"] > 0].sort_values(["pval", "term"], kind="mergesort")
    return df[["term", "overlap", "pval", "padj", "genes"]].reset_index(drop=True)


def _empty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            c: pd.Series([], dtype=float if c in ("pval", "padj") else object)
            for c in RESULT_COLUMNS
        }
    )


def ora(
    de_results: pd.DataFrame,
    gene_sets: Mapping[str, Sequence[str]],
    *,
    padj: float,
    min_size: int,
    max_size: int,
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Local ORA of up and down genes for every cell type.

    Parameters
    ----------
    de_results
        DE rows with ``cell_type, gene, log2FoldChange, padj``.
    gene_sets
        Set name to gene symbols.
    padj
        Adjusted p-value cut defining significant genes (also the cut counted in
        the summary).
    min_size, max_size
        Bounds on a set's size within the background.

    Returns
    -------
    results : DataFrame
        :data:`RESULT_COLUMNS`; cell types sorted, ``up`` before ``down``.
    summary : dict
        Per cell type: ``n_background`` (genes with a ``padj`` that belong to a
        set), per direction the number of query genes
        (``n_up_genes``/``n_down_genes``) and of sets with ``padj`` below the cut
        (``n_up_sets``/``n_down_sets``).
    """
    lists = significant_genes(de_results, padj=padj)
    tables = []
    summary: dict[str, dict[str, Any]] = {}
    for ct, rows in de_results.groupby(de_results["cell_type"].astype(str), sort=True):
        ct = str(ct)
        tested = rows["padj"].notna().to_numpy()
        background = sorted(set(rows["gene"].astype(str).to_numpy()[tested]))
        info: dict[str, Any] = {}
        universe = set(background) & {g for genes in gene_sets.values() for g in genes}
        info["n_background"] = len(universe)
        if not tested.all():
            log.info("%s: %d genes without padj left out of the background", ct, (~tested).sum())
        for direction in ("up", "down"):
            query = lists[ct][direction]
            info[f"n_{direction}_genes"] = len(query)
            res = (
                ora_local(query, background, gene_sets, min_size=min_size, max_size=max_size)
                if query
                else _empty()[RESULT_COLUMNS[2:]]
            )
            info[f"n_{direction}_sets"] = int((res["padj"] < padj).sum())
            res.insert(0, "direction", direction)
            res.insert(0, "cell_type", ct)
            tables.append(res)
        log.info(
            "%s: %d up / %d down genes; %d / %d sets",
            ct,
            info["n_up_genes"],
            info["n_down_genes"],
            info["n_up_sets"],
            info["n_down_sets"],
        )
        summary[ct] = info
    nonempty = [t for t in tables if not t.empty]
    results = pd.concat(nonempty, ignore_index=True) if nonempty else _empty()
    return results[RESULT_COLUMNS], summary


def summary(
    per_cell_type: dict[str, dict[str, Any]], *, padj: float, backend: str
) -> dict[str, Any]:
    """Summarise ORA for ``metrics/ora.json``.

    Parameters
    ----------
    per_cell_type
        The summary of :func:`ora` or :func:`ora_enrichr`.
    padj
        The significance cut used.
    backend
        ``"local"`` or ``"enrichr"``.

    Returns
    -------
    dict
        ``padj``, ``backend``, per cell type its summary and the numbers of
        significant (cell type, set) pairs up and down.
    """
    return {
        "padj": padj,
        "backend": backend,
        "cell_types": per_cell_type,
        "n_up_sets": sum(v["n_up_sets"] for v in per_cell_type.values()),
        "n_down_sets": sum(v["n_down_sets"] for v in per_cell_type.values()),
    }


def check_enrichr_reachable(*, url: str | None = None, timeout: float = 10.0) -> None:
    """Fail fast when the Enrichr web service cannot be reached.

    Parameters
    ----------
    url
        Enrichr's address (default :data:`ENRICHR_URL`).
    timeout
        Seconds to wait.

    Raises
    ------
    InputError
        When the service does not answer (e.g. offline).
    """
    import urllib.error
    import urllib.request

    url = url or ENRICHR_URL
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            pass
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(
            f"ora.backend: 'enrichr' needs the Enrichr web service at {url}, which cannot be"
            f" reached ({reason}); set ora.backend: local to test offline"
        ) from None


def ora_enrichr(
    de_results: pd.DataFrame,
    libraries: Sequence[str],
    *,
    padj: float,
    enrichr: Callable[..., Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """ORA of up and down genes through the Enrichr web service.

    Parameters
    ----------
    de_results
        DE rows with ``cell_type, gene, log2FoldChange, padj``.
    libraries
        Enrichr library names.
    padj
        Adjusted p-value cut for significant genes and sets.
    enrichr
        The client (default ``gseapy.enrichr``); injectable for tests.

    Returns
    -------
    results : DataFrame
        :data:`RESULT_COLUMNS` (term prefixed by its library when several).
    summary : dict
        Per cell type: query sizes and significant set counts per direction.
    """
    if enrichr is None:
        import gseapy

        enrichr = gseapy.enrichr
    lists = significant_genes(de_results, padj=padj)
    tables = []
    summary: dict[str, dict[str, Any]] = {}
    for ct, dirs in lists.items():
        info: dict[str, Any] = {}
        for direction in ("up", "down"):
            query = dirs[direction]
            info[f"n_{direction}_genes"] = len(query)
            info[f"n_{direction}_sets"] = 0
            if not query:
                continue
            res = enrichr(
                gene_list=list(query), gene_sets=list(libraries), outdir=None, no_plot=True
            ).results
            term = res["Term"].astype(str)
            if len(libraries) > 1:
                term = res["Gene_set"].astype(str) + ":" + term
            table = pd.DataFrame(
                {
                    "cell_type": ct,
                    "direction": direction,
                    "term": term.to_numpy(),
                    "overlap": res["Overlap"].astype(str).to_numpy(),
                    "pval": res["P-value"].to_numpy(dtype=float),
                    "padj": res["Adjusted P-value"].to_numpy(dtype=float),
                    "genes": res["Genes"].astype(str).to_numpy(),
                }
            ).sort_values(["pval", "term"], kind="mergesort")
            info[f"n_{direction}_sets"] = int((table["padj"] < padj).sum())
            tables.append(table)
        summary[ct] = info
    results = pd.concat(tables, ignore_index=True) if tables else _empty()
    return results[RESULT_COLUMNS], summary


def plot_dots(results: pd.DataFrame, *, padj: float, top: int = 5) -> Any:
    """Draw the top sets per cell type and direction as a dot plot.

    Parameters
    ----------
    results
        Rows from :func:`ora`.
    padj
        Significance cut; significant dots get a black edge.
    top
        Sets per cell type and direction (smallest p-values).

    Returns
    -------
    matplotlib.figure.Figure
        Terms x (cell type, direction); colour signed -log10 padj (red up, blue down).
    """
    score = -np.log10(np.clip(results["padj"].to_numpy(dtype=float), 1e-10, 1.0))
    sign = np.where(results["direction"] == "up", 1.0, -1.0)
    as_gsea = pd.DataFrame(
        {
            "cell_type": results["cell_type"].to_numpy(),
            "term": results["term"].to_numpy(),
            "nes": sign * np.maximum(score, 1e-6),
            "fdr": results["padj"].to_numpy(dtype=float),
        }
    )
    return plots.plot_dots(
        as_gsea,
        fdr=padj,
        top=top,
        colour_label="signed -log10 padj (up > 0 > down)",
        cut_label="padj",
    )
