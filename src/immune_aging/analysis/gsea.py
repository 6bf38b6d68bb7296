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
    for ct in sorted(de_results["cell_type"].astype(str).unique()):
        rnk = ranking(de_results[de_results["cell_type"].astype(str) == ct])
        info: dict[str, Any] = {"n_genes": len(rnk), "n_sets_tested": 0, "n_up": 0, "n_down": 0}
        res = prerank_cell_type(
            rnk,
            gene_sets,
            min_size=min_size,
            max_size=max_size,
            permutations=permutations,
            seed=seed,
            threads=threads,
        )
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


def dot_figure(
    results: pd.DataFrame,
    *,
    fdr: float,
    top: int = 5,
    colour_label: str = "NES",
    cut_label: str = "FDR",
) -> Any:
    """Draw the top up and down sets of every cell type as a dot plot.

    Parameters
    ----------
    results
        Rows from :func:`gsea` (or ORA rows with ``nes`` replaced by a signed score).
    fdr
        Significance cut; significant dots are drawn with a black edge.
    top
        Sets per cell type and direction (by FDR, then |NES|).
    colour_label
        Colour bar title.
    cut_label
        Name of the adjusted p-value in the legend.

    Returns
    -------
    matplotlib.figure.Figure
        Terms x cell types; colour NES, size -log10 FDR.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = []
    for _, rows in results.groupby("cell_type", sort=True):
        for sign in (1, -1):
            part = rows[np.sign(rows["nes"]) == sign]
            part = part.assign(absnes=part["nes"].abs()).sort_values(
                ["fdr", "absnes", "term"], ascending=[True, False, True], kind="mergesort"
            )
            picked.extend(part["term"].head(top))
    terms = sorted(set(picked))
    cts = sorted(results["cell_type"].unique())
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * max(len(cts), 1), 1.5 + 0.28 * max(len(terms), 1)))
    if not terms:
        ax.text(0.5, 0.5, "no gene set tested", ha="center", va="center")
        ax.set_axis_off()
        return fig
    sub = results[results["term"].isin(terms)]
    x = sub["cell_type"].map({c: i for i, c in enumerate(cts)}).to_numpy()
    y = sub["term"].map({t: i for i, t in enumerate(terms)}).to_numpy()
    size = 20 + 40 * np.clip(-np.log10(np.clip(sub["fdr"].to_numpy(float), 1e-4, 1)), 0, 4)
    lim = max(float(np.nanmax(np.abs(sub["nes"]))), 1.0)
    sig = (sub["fdr"] < fdr).to_numpy()
    points = ax.scatter(
        x,
        y,
        s=size,
        c=sub["nes"],
        cmap="coolwarm",
        vmin=-lim,
        vmax=lim,
        edgecolors=np.where(sig, "black", "none").tolist(),
        linewidths=0.8,
    )
    ax.set_xticks(range(len(cts)), cts, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(terms)), terms, fontsize=7)
    ax.set_xlim(-0.6, len(cts) - 0.4)
    ax.set_ylim(-0.6, len(terms) - 0.4)
    fig.colorbar(points, ax=ax, label=colour_label, shrink=0.6)
    ax.set_title(f"dot size: -log10 {cut_label}; black edge: {cut_label} < {fdr:g}", fontsize=8)
    return fig
