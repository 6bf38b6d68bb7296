"""Time the ``de`` stage's science at OneK1K's size, and check that faster settings agree.

Usage::

    python bench/de.py simulate                      # pseudobulk of 981 donors x 12 types
    python bench/de.py time --cell-types 2 --tag before --set de.size_factors=ratio
    python bench/de.py time --tag after              # every cell type, params.yaml's de
    python bench/de.py compare before after          # agreement of two timed runs

``simulate`` draws a pseudobulk AnnData shaped like OneK1K's (981 donors, 12 cell
types, 35.5 k genes, ~1,274 cells per donor) straight from the project's simulator
(:func:`immune_aging.synthetic.design_simulation`, default preset): for each donor,
its expected expression per cell type (:func:`~immune_aging.synthetic.sampling.donor_profiles`:
biological noise, planted age effects, sex genes) times the libraries of its cells
of that type (a doublet adds its second cell's RNA to the first one's label), and
one negative-binomial draw per (cell type, donor, gene) with the gene's inverse
dispersion times the number of cells (a sum of cells' counts). No cell is drawn, so
it takes about a minute instead of the ~12 minutes of simulating 1.25 M cells, and
the sums have OneK1K's depth (unlike a pipeline run on few cells per donor). Cells
are not QC-filtered (doublets stay at the simulator's rate); samples with fewer than
``pseudobulk.min_cells`` cells are dropped, as the pseudobulk stage does. The file
goes to ``bench/scratch/de/`` (git-ignored).

``time`` runs :func:`immune_aging.analysis.de.differential_expression` (the stage's
science, without reading and writing files) with the ``de`` section of params.yaml,
changed by ``--set key=value``, on the ``--cell-types`` largest cell types (most samples, then
most counts; all by default, or as ``de.cell_types`` says; expression ratios are
computed over every cell type either way) and records wall and CPU seconds, genes tested per
cell type and the load average before and after; results go to
``bench/scratch/de/<tag>.parquet`` and ``bench/scratch/de/<tag>.json``.
Threads: ``IMMUNE_AGING_THREADS`` (default all cores), as in the stage.

``compare`` reports, over the genes both runs tested, the Spearman correlation of
the Wald statistic, the largest differences of log2 fold change and of
log10 padj, and the significant calls (padj < alpha) each run makes alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "bench" / "scratch" / "de"
#: OneK1K (Yazar et al. 2022) on CELLxGENE: ~1.25 M cells, 981 donors, ~35.5 k genes.
ONEK1K = {"n_donors": 981, "cells_per_donor": 1274, "n_genes": 35_500, "n_cell_types": 12}
PACKAGES = ("numpy", "scipy", "pandas", "anndata", "pydeseq2", "joblib")


def simulate(shape: dict[str, int], out: Path, *, seed: int = 0, min_cells: int = 10) -> None:
    """Write a pseudobulk h5ad of the shape (see the module docstring)."""
    import anndata as ad
    import pandas as pd

    import immune_aging  # noqa: F401  (thread variables before numpy work)
    from immune_aging.params import load_section
    from immune_aging.synthetic.design import design_simulation
    from immune_aging.synthetic.sampling import _donor_rng, donor_profiles

    defaults = vars(load_section("data", ROOT / "params.yaml").synthetic)
    settings = {k: defaults[k] for k in ("doublet_rate", "dying_rate", "rbc_rate")}
    t0 = time.perf_counter()
    design = design_simulation(seed=seed, preset="default", **settings, **shape)
    labels = [ct.label for ct in design.cell_types]
    n_types = len(labels)
    droplet_type = design.obs["cell_type"].cat.codes.to_numpy()
    rows, blocks = [], []
    for d in range(shape["n_donors"]):
        rng = _donor_rng(design, d)
        pi = donor_profiles(design, d, rng)[:n_types]
        start, stop = design.donor_rows(d)
        lo = np.searchsorted(design.comp_cell, start, side="left")
        hi = np.searchsorted(design.comp_cell, stop, side="left")
        body_label = droplet_type[design.comp_cell[lo:hi]]
        weight = np.zeros((n_types, n_types))
        np.add.at(weight, (body_label, design.comp_type[lo:hi]), design.comp_library[lo:hi])
        n_cells = np.bincount(droplet_type[start:stop], minlength=n_types)
        mean = weight @ pi  # label x genes
        for t in np.flatnonzero(n_cells >= min_cells):
            k = design.theta * n_cells[t]
            blocks.append(rng.poisson(rng.gamma(k, mean[t] / k)).astype(np.float32))
            rows.append((labels[t], design.donors["donor_id"].iloc[d], int(n_cells[t])))
    donors = design.donors.set_index("donor_id")
    obs = pd.DataFrame(rows, columns=["cell_type", "donor_id", "n_cells"])
    obs.index = pd.Index(obs["cell_type"] + "|" + obs["donor_id"].astype(str))
    obs["sex"] = pd.Categorical(donors.loc[obs["donor_id"], "sex"].to_numpy())
    obs["age"] = donors.loc[obs["donor_id"], "age"].to_numpy(dtype=np.float64)
    obs["pool"] = pd.Categorical(donors.loc[obs["donor_id"], "pool"].astype(str).to_numpy())
    obs["cell_type"] = pd.Categorical(obs["cell_type"])
    obs["donor_id"] = pd.Categorical(obs["donor_id"].astype(str))
    adata = ad.AnnData(X=np.vstack(blocks), obs=obs, var=design.var.copy())
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    print(
        f"wrote {out}: {adata.n_obs} samples x {adata.n_vars} genes "
        f"in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _params(sets: list[str]) -> Any:
    """The ``de`` params of params.yaml with ``key=value`` overrides (YAML values)."""
    import dataclasses

    import yaml

    from immune_aging.params import DeParams, load_section

    params = load_section("de", ROOT / "params.yaml")
    changes = {}
    for item in sets:
        key, _, value = item.partition("=")
        changes[key.removeprefix("de.")] = yaml.safe_load(value)
    fields = {f.name for f in dataclasses.fields(DeParams)}
    unknown = set(changes) - fields
    if unknown:
        raise SystemExit(f"unknown de key(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(params, **changes)


def time_de(args: argparse.Namespace) -> None:
    """Time differential_expression on the simulated pseudobulk (see the module docstring)."""
    import dataclasses

    import immune_aging  # noqa: F401
    from immune_aging import io
    from immune_aging.analysis import de
    from immune_aging.threads import n_threads

    params = _params(args.set)
    adata = io.read_h5ad(args.input)
    if args.cell_types:  # the N largest (most samples, then most counts)
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        totals = np.asarray(adata.X.sum(axis=1)).ravel()
        size = {c: ((labels == c).sum(), totals[labels == c].sum()) for c in set(labels)}
        largest = sorted(size, key=lambda c: size[c], reverse=True)[: args.cell_types]
        params = dataclasses.replace(params, cell_types=sorted(largest))
    load_before = _load()
    cpu0, t0 = _cpu_s(), time.perf_counter()
    results, summaries = de.differential_expression(
        adata, n_jobs=n_threads(), **de.options(params)
    )
    wall = time.perf_counter() - t0
    record = {
        "tag": args.tag,
        "params": {k: v for k, v in vars(params).items()},
        "threads": n_threads(),
        "wall_s": round(wall, 1),
        "cpu_s": round(_cpu_s() - cpu0, 1),
        "load_before": load_before,
        "load_after": _load(),
        "n_samples": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_tests": len(results),
        "cell_types": {s.cell_type: s.as_dict() for s in summaries},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "versions": {p: metadata.version(p) for p in PACKAGES},
    }
    SCRATCH.mkdir(parents=True, exist_ok=True)
    results.to_parquet(SCRATCH / f"{args.tag}.parquet")
    (SCRATCH / f"{args.tag}.json").write_text(json.dumps(record, indent=2, default=str))
    print(
        json.dumps(
            {
                k: record[k]
                for k in ("tag", "wall_s", "cpu_s", "n_tests", "load_before", "load_after")
            }
        )
    )


def agreement(a: Any, b: Any, *, alpha: float) -> dict[str, Any]:
    """Agreement of two results tables over the (cell type, gene) pairs both tested.

    Parameters
    ----------
    a, b
        Results tables (``cell_type, gene_id, log2FoldChange, stat, padj``).
    alpha
        The significance cut.

    Returns
    -------
    dict
        Pairs compared, Spearman of ``stat``, largest |difference| of log2 fold
        change and of log10 padj, significant calls in each and in one only.
    """
    from scipy.stats import spearmanr

    m = a.merge(b, on=["cell_type", "gene_id"], suffixes=("_a", "_b"))
    ok = m["stat_a"].notna() & m["stat_b"].notna()
    sig_a = (m["padj_a"] < alpha).to_numpy()
    sig_b = (m["padj_b"] < alpha).to_numpy()
    lp_a = np.log10(m["padj_a"].clip(lower=1e-300))
    lp_b = np.log10(m["padj_b"].clip(lower=1e-300))
    both_p = m["padj_a"].notna() & m["padj_b"].notna()
    only = m.loc[sig_a != sig_b]
    near = only[["padj_a", "padj_b"]].min(axis=1) if len(only) else only
    return {
        "pairs_a": len(a),
        "pairs_b": len(b),
        "pairs_both": len(m),
        "spearman_stat": float(spearmanr(m.loc[ok, "stat_a"], m.loc[ok, "stat_b"])[0]),
        "max_abs_diff_log2fc": float((m["log2FoldChange_a"] - m["log2FoldChange_b"]).abs().max()),
        "max_abs_diff_log10_padj": float((lp_a - lp_b)[both_p].abs().max()),
        "padj_nan_differs": int((m["padj_a"].isna() != m["padj_b"].isna()).sum()),
        "significant_a": int(sig_a.sum()),
        "significant_b": int(sig_b.sum()),
        "significant_a_only": int((sig_a & ~sig_b).sum()),
        "significant_b_only": int((sig_b & ~sig_a).sum()),
        "discordant_max_padj_of_the_pair": float(
            only[["padj_a", "padj_b"]].max(axis=1).max() if len(only) else float("nan")
        ),
        "discordant_min_padj_of_the_pair": float(near.max() if len(only) else float("nan")),
    }


def compare(args: argparse.Namespace) -> None:
    """Print the agreement of two timed runs."""
    import pandas as pd

    a = pd.read_parquet(SCRATCH / f"{args.a}.parquet")
    b = pd.read_parquet(SCRATCH / f"{args.b}.parquet")
    print(json.dumps(agreement(a, b, alpha=args.alpha), indent=2))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("simulate", help="write the pseudobulk h5ad")
    s.add_argument("--donors", type=int, default=ONEK1K["n_donors"])
    s.add_argument("--cells-per-donor", type=int, default=ONEK1K["cells_per_donor"])
    s.add_argument("--genes", type=int, default=ONEK1K["n_genes"])
    s.add_argument("--cell-types", type=int, default=ONEK1K["n_cell_types"])
    s.add_argument("--out", type=Path, default=SCRATCH / "pseudobulk_onek1k.h5ad")
    t = sub.add_parser("time", help="time differential_expression")
    t.add_argument("--input", type=Path, default=SCRATCH / "pseudobulk_onek1k.h5ad")
    t.add_argument("--cell-types", type=int, default=0, help="the N largest (0: all)")
    t.add_argument("--set", action="append", default=[], help="de key=value (YAML value)")
    t.add_argument("--tag", required=True)
    c = sub.add_parser("compare", help="agreement of two timed runs")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--alpha", type=float, default=0.05)
    args = p.parse_args()
    if args.command == "simulate":
        shape = {
            "n_donors": args.donors,
            "cells_per_donor": args.cells_per_donor,
            "n_genes": args.genes,
            "n_cell_types": args.cell_types,
        }
        simulate(shape, args.out)
    elif args.command == "time":
        time_de(args)
    else:
        compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
