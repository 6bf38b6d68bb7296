"""Preranked gene-set enrichment (GSEA) of the age effects, per cell type.

Genes are ranked by the DESeq2 Wald statistic of age (positive: up with age), and
gseapy's ``prerank`` tests every gene set of the library with a permutation null.
Genes are identified by symbol; genes without a finite statistic are dropped, and
when a symbol appears more than once the entry with the largest ``|stat|`` is kept.
The ranking is sorted here (statistic descending, then symbol) so ties are broken
the same way on every run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from immune_aging.executor import map_ordered

log = logging.getLogger(__name__)

#: Columns of the results table, in order.
RESULT_COLUMNS = ["cell_type", "term", "es", "nes", "pval", "fdr", "lead_genes"]


def ranking(results: pd.DataFrame) -> pd.Series:
    """Build the ranked gene list of one cell type from its DE results.

    Parameters
    ----------
    results
        DE rows with columns ``gene`` (symbol) and ``stat``.

    Returns
    -------
    Series
        Wald statistic indexed by unique gene symbol, sorted descending (ties by
        symbol); genes with a missing or infinite statistic are left out.
    """
    df = results[["gene", "stat"]].copy()
    df = df[np.isfinite(df["stat"].to_numpy(dtype=float)) & df["gene"].notna()]
    df["gene"] = df["gene"].astype(str)
    df["abs"] = df["stat"].abs()
    df = df.sort_values(["gene", "abs"], ascending=[True, False], kind="mergesort")
    df = df.drop_duplicates("gene", keep="first")
    df = df.sort_values(["stat", "gene"], ascending=[False, True], kind="mergesort")
    return pd.Series(df["stat"].to_numpy(dtype=float), index=pd.Index(df["gene"], name="gene"))


def testable_sets(
    gene_sets: Mapping[str, Sequence[str]], genes: Sequence[str], *, min_size: int, max_size: int
) -> dict[str, list[str]]:
    """Restrict gene sets to the ranked genes and keep those of a testable size.

    Parameters
    ----------
    gene_sets
        Set name to gene symbols.
    genes
        Ranked gene symbols.
    min_size, max_size
        Bounds on the number of a set's genes found among ``genes``.

    Returns
    -------
    dict
        The sets that gseapy will test, restricted to ``genes``.
    """
    universe = set(genes)
    out = {}
    for name, members in gene_sets.items():
        found = [g for g in dict.fromkeys(members) if g in universe]
        if min_size <= len(found) <= max_size and len(found) < len(universe):
            out[name] = found
    return out


def prerank_cell_type(
    rnk: pd.Series,
    gene_sets: Mapping[str, Sequence[str]],
    *,
    min_size: int,
    max_size: int,
    permutations: int,
    seed: int,
    threads: int = 1,
) -> pd.DataFrame:
    """Run gseapy ``prerank`` on one ranked list.

    Parameters
    ----------
    rnk
        Statistic by gene symbol, from :func:`ranking`.
    gene_sets
        Set name to gene symbols.
    min_size, max_size
        Bounds on a set's size among the ranked genes.
    permutations
        Gene-set permutations of the null distribution.
    seed
        Random seed of the permutations.
    threads
        Threads gseapy may use.

    Returns
    -------
    DataFrame
        ``term, es, nes, pval, fdr, lead_genes`` (lead genes joined by ``;``),
        sorted by term; empty when no set is testable.
    """
    import gseapy

    sets = testable_sets(gene_sets, list(rnk.index), min_size=min_size, max_size=max_size)
    if len(rnk) < 2 or not sets:
        return _empty()[RESULT_COLUMNS[1:]]
    res = gseapy.prerank(
        rnk=rnk.copy(),
        gene_sets={k: list(v) for k, v in sets.items()},
        outdir=None,
        min_size=min_size,
        max_size=max_size,
        permutation_num=permutations,
        ascending=None,
        threads=threads,
        seed=seed,
        no_plot=True,
        verbose=False,
    ).res2d
    out = pd.DataFrame(
        {
            "term": res["Term"].astype(str).to_numpy(),
            "es": res["ES"].to_numpy(dtype=float),
            "nes": res["NES"].to_numpy(dtype=float),
            "pval": res["NOM p-val"].to_numpy(dtype=float),
            "fdr": res["FDR q-val"].to_numpy(dtype=float),
            "lead_genes": res["Lead_genes"].fillna("").astype(str).to_numpy(),
        }
    )
    return out.sort_values("term", kind="mergesort").reset_index(drop=True)


def _prerank_job(
    job: tuple[pd.Series, Mapping[str, Sequence[str]], dict[str, Any]],
) -> pd.DataFrame:
    """Worker: :func:`prerank_cell_type` of one ``(ranking, gene sets, options)`` job."""
    rnk, gene_sets, options = job
    return prerank_cell_type(rnk, gene_sets, **options)


def _empty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cell_type": pd.Series([], dtype=object),
            "term": pd.Series([], dtype=object),
            "es": pd.Series([], dtype=float),
            "nes": pd.Series([], dtype=float),
            "pval": pd.Series([], dtype=float),
            "fdr": pd.Series([], dtype=float),
            "lead_genes": pd.Series([], dtype=object),
        }
    )


def gsea(
    de_results: pd.DataFrame,
    gene_sets: Mapping[str, Sequence[str]],
    *,
    min_size: int,
    max_size: int,
    permutations: int,
    seed: int,
    fdr: float,
    threads: int = 1,
    n_jobs: int = 1,
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Run preranked GSEA for every cell type of a DE results table.

    Parameters
    ----------
    de_results
        DE results with ``cell_type, gene, stat``.
    gene_sets
        Set name to gene symbols.
    min_size, max_size
        Bounds on a set's size among a cell type's ranked genes.
    permutations
        Permutations of the null distribution.
    seed
        Random seed (the same for every cell type).
    fdr
        FDR below which a set counts as significant in the summary.
    threads
        Threads gseapy may use.
    n_jobs
        Local worker processes for the cell types (:func:`immune_aging.executor.map_ordered`;
        1 runs them here, one after the other, gseapy's threads doing the parallel work;
        under a Dask scheduler they run on its workers). Results do not depend on it.

    Returns
    -------
    results : DataFrame
        :data:`RESULT_COLUMNS`, cell types sorted, terms sorted within them.
    summary : dict
        Per cell type: ``n_genes`` ranked, ``n_sets_tested``, ``n_up`` and
        ``n_down`` (FDR below ``fdr``, NES sign), and ``skipped`` (reason or None).
    """
    tables = []
    summary: dict[str, dict[str, Any]] = {}
    cell_types = sorted(de_results["cell_type"].astype(str).unique())
    ranked = [ranking(de_results[de_results["cell_type"].astype(str) == ct]) for ct in cell_types]
    options = {
        "min_size": min_size,
        "max_size": max_size,
        "permutations": permutations,
        "seed": seed,
        "threads": threads,
    }
    jobs = (
        (rnk, testable_sets(gene_sets, list(rnk.index), min_size=min_size, max_size=max_size))
        for rnk in ranked
    )
    fitted = map_ordered(
        _prerank_job,
        ((rnk, sets, options) for rnk, sets in jobs),
        n_jobs,
        label="cell types tested",
        total=len(cell_types),
    )
    for ct, rnk, res in zip(cell_types, ranked, fitted, strict=True):
        info: dict[str, Any] = {"n_genes": len(rnk), "n_sets_tested": 0, "n_up": 0, "n_down": 0}
        if res.empty:
            info["skipped"] = (
                f"no gene set with {min_size} to {max_size} genes among {len(rnk)} ranked genes"
            )
            log.warning("cell type %r: %s", ct, info["skipped"])
        else:
            info["skipped"] = None
            sig = res["fdr"] < fdr
            info["n_sets_tested"] = len(res)
            info["n_up"] = int((sig & (res["nes"] > 0)).sum())
            info["n_down"] = int((sig & (res["nes"] < 0)).sum())
            log.info("%s: %d sets, %d up, %d down", ct, len(res), info["n_up"], info["n_down"])
            res.insert(0, "cell_type", ct)
            tables.append(res)
        summary[ct] = info
    results = pd.concat(tables, ignore_index=True) if tables else _empty()
    return results[RESULT_COLUMNS], summary


def summary(
    results: pd.DataFrame, per_cell_type: dict[str, dict[str, Any]], *, fdr: float, n_sets: int
) -> dict[str, Any]:
    """Summarise GSEA for ``metrics/gsea.json``.

    Parameters
    ----------
    results, per_cell_type
        Output of :func:`gsea`.
    fdr
        The significance cut used.
    n_sets
        Sets in the library.

    Returns
    -------
    dict
        ``fdr``, per cell type its summary, the library size and the numbers of
        (cell type, set) pairs up and down.
    """
    return {
        "fdr": fdr,
        "cell_types": per_cell_type,
        "n_sets_in_library": n_sets,
        "n_up": sum(v["n_up"] for v in per_cell_type.values()),
        "n_down": sum(v["n_down"] for v in per_cell_type.values()),
    }
