"""Scrublet per donor: scanpy.pp.scrublet (the reference) against analysis/scrublet.py.

Usage::

    python bench/scrublet.py                    # both datasets, writes bench/results/scrublet.md
    python bench/scrublet.py --datasets onek1k --repeats 1

Datasets:

- ``onek1k``: OneK1K's shape, 39 donors of ~1,274 droplets x 35,500 genes, simulated
  once by ``bench/scale.py``'s simulator into ``bench/scratch/inputs/39x1274x35500/``
  (git-ignored; ``--onek1k PATH`` reads another copy of that folder);
- ``default``: the default pipeline's ``data/filter/filtered.h5ad`` and
  ``data/raw/truth.json`` (run ``make repro`` first).

For each, the cells that pass the ``qc`` threshold rules of ``params.yaml`` are scored
per donor, as the ``qc`` stage does, once by each method on one thread, the two runs of a
donor back to back (best of ``--repeats`` timed runs each, wall and CPU seconds; the
reference's numba code is compiled before timing). Per donor: seconds, Spearman and
Pearson correlation of the scores, share of identical scores, the call threshold of each
(:func:`immune_aging.analysis.doublets.doublet_threshold` on its simulated scores), the
calls, and whether scanpy's simulated doublets counted themselves as neighbours. Against
the planted doublets (all filtered cells, as the ``evaluate`` stage counts): recall,
precision and the AUC of the scores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import immune_aging  # noqa: E402,F401  (thread variables before numpy's BLAS starts)
from immune_aging import io  # noqa: E402
from immune_aging.analysis import doublets, evaluate, qc, qc_rules  # noqa: E402
from immune_aging.analysis.scrublet import scrublet  # noqa: E402
from immune_aging.params import load_section  # noqa: E402

ONEK1K_SHAPE = {"n_donors": 39, "cells_per_donor": 1274, "n_genes": 35_500, "n_cell_types": 12}
ONEK1K_DONORS, ONEK1K_CELLS_PER_DONOR = 981, 1274
RESULTS = ROOT / "bench" / "results"


def reference(counts: sparse.csr_matrix, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores by :func:`scanpy.pp.scrublet`, as the ``qc`` stage computed them before."""
    import scanpy as sc
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        obs = pd.DataFrame(index=pd.RangeIndex(counts.shape[0]).astype(str))
        result = sc.pp.scrublet(
            ad.AnnData(X=counts, obs=obs),
            expected_doublet_rate=rate,
            random_state=seed,
            threshold=1.0,
            use_approx_neighbors=False,
            verbose=False,
            copy=True,
        )
    scores = result.obs["doublet_score"].to_numpy(dtype=np.float64)
    return scores, np.asarray(result.uns["scrublet"]["doublet_scores_sim"], dtype=np.float64)


def ours(counts: sparse.csr_matrix, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores by :func:`immune_aging.analysis.scrublet.scrublet`."""
    result = scrublet(counts, expected_doublet_rate=rate, seed=seed)
    return result.obs, result.sim


def self_counted(sim: np.ndarray, k_adj: int, rate: float, ratio: float = 2.0) -> np.ndarray:
    """Simulated scores had each doublet counted itself (one more simulated neighbour).

    Inverts Scrublet's score ``L = q rho/r / (1 - rho - q (1 - rho - rho/r))`` for
    ``q = (n_sim + 1) / (k_adj + 2)`` and adds ``1 / (k_adj + 2)`` to ``q``.
    """
    a, b = rate / ratio, 1 - rate - rate / ratio
    q = sim * (1 - rate) / (a + sim * b) + 1 / (k_adj + 2.0)
    return q * a / (1 - rate - q * b)


METHODS = {"scanpy": reference, "ours": ours}
#: our observed scores, simulated scores as if each doublet counted itself (not timed)
VARIANT = "ours_self"


def timed(fn, counts, rate, seed, repeats):
    """Best wall and best CPU seconds of ``repeats`` runs (CPU time is what a shared
    machine's load does not inflate, on one thread), and the last result."""
    wall = cpu = float("inf")
    out = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(counts, rate, seed)
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu, out


def eligible_cells(adata: ad.AnnData, params) -> np.ndarray:
    """Cells passing every ``qc`` threshold rule (what Scrublet scores in the stage)."""
    metrics = qc.qc_metrics(adata)
    fails, _ = qc_rules.threshold_rules(
        metrics, groups=adata.obs["donor_id"], rules=qc_rules.Rules.of(params)
    )
    return ~fails.any(axis=1).to_numpy()


def compare(adata: ad.AnnData, truth: dict, params, repeats: int) -> dict:
    """Score every donor with both methods; per-donor rows and overall figures."""
    X = sparse.csr_matrix(adata.X)
    donors = adata.obs["donor_id"].astype(str).to_numpy()
    keep = eligible_cells(adata, params)
    rate, seed = params.expected_doublet_rate, params.seed
    first = np.flatnonzero(keep & (donors == donors[0]))
    reference(X[first], rate, seed)  # numba compilation, not timed
    score = {m: np.full(adata.n_obs, np.nan) for m in METHODS}
    called = {m: np.zeros(adata.n_obs, dtype=bool) for m in (*METHODS, VARIANT)}
    rows = []
    for donor in pd.unique(donors):
        idx = np.flatnonzero(keep & (donors == donor))
        if len(idx) < params.min_cells_scrublet:
            continue
        row = {"donor": donor, "cells": len(idx)}
        sims = {}
        for m, fn in METHODS.items():
            seconds, cpu, (obs, sim) = timed(fn, X[idx], rate, seed, repeats)
            sims[m] = sim
            threshold = doublets.doublet_threshold(sim)
            score[m][idx] = obs
            called[m][idx] = np.nan_to_num(obs, nan=-np.inf) > threshold
            row |= {f"s_{m}": seconds, f"cpu_{m}": cpu, f"threshold_{m}": threshold}
            row[f"doublets_{m}"] = int(called[m][idx].sum())
        # scanpy's simulated scores: as ours (the doublet not its own neighbour), or
        # one step higher (the doublet counted itself), whichever they equal
        n = int(np.isfinite(score["ours"][idx]).sum())
        k_adj = round(round(0.5 * np.sqrt(n)) * (1 + int(n * 2.0) / n))
        variant = self_counted(sims["ours"], k_adj, rate)
        threshold = doublets.doublet_threshold(variant)
        called[VARIANT][idx] = np.nan_to_num(score["ours"][idx], nan=-np.inf) > threshold
        row["threshold_self"] = threshold
        row["doublets_self"] = int(called[VARIANT][idx].sum())
        as_ours = np.mean(np.isclose(sims["scanpy"], sims["ours"], rtol=1e-9, atol=0))
        as_self = np.mean(np.isclose(sims["scanpy"], variant, rtol=1e-9, atol=0))
        row["scanpy_self"] = "no" if as_ours > 0.95 else "yes" if as_self > 0.95 else "neither"
        a, b = score["scanpy"][idx], score["ours"][idx]
        both = np.isfinite(a) & np.isfinite(b)
        row |= {
            "spearman": float(spearmanr(a[both], b[both])[0]),
            "pearson": float(pearsonr(a[both], b[both])[0]),
            "identical": float(np.mean(a[both] == b[both])),
            "calls_differ": int((called["scanpy"][idx] != called["ours"][idx]).sum()),
        }
        rows.append(row)
        print(
            f"{donor}: {len(idx)} cells, scanpy {row['cpu_scanpy']:.2f} CPU s,"
            f" ours {row['cpu_ours']:.3f} CPU s, spearman {row['spearman']:.5f},"
            f" calls differ {row['calls_differ']}, scanpy counts self {row['scanpy_self']}",
            flush=True,
        )
    planted = adata.obs_names.isin(set(map(str, truth["doublets"])))
    overall = {}
    for m in (*METHODS, VARIANT):
        cells = pd.DataFrame({"predicted_doublet": called[m]}, index=adata.obs_names)
        found = evaluate.doublet_scores(cells, truth)
        scores = score[m if m in METHODS else "ours"]
        scored = np.isfinite(scores)
        overall[m] = {
            "recall": found["qc.doublet_recall"],
            "precision": found["qc.doublet_precision"],
            "auc": float(roc_auc_score(planted[scored], scores[scored])),
            "doublets_called": int(called[m].sum()),
        }
    a, b = score["scanpy"], score["ours"]
    both = np.isfinite(a) & np.isfinite(b)
    overall["agreement"] = {
        "cells_scored": int(both.sum()),
        "spearman": float(spearmanr(a[both], b[both])[0]),
        "pearson": float(pearsonr(a[both], b[both])[0]),
        "identical": float(np.mean(a[both] == b[both])),
        "calls_both": int((called["scanpy"] & called["ours"]).sum()),
        "calls_scanpy_only": int((called["scanpy"] & ~called["ours"]).sum()),
        "calls_ours_only": int((~called["scanpy"] & called["ours"]).sum()),
        "donors_same_threshold": sum(
            r["threshold_scanpy"] == r["threshold_ours"]
            or (np.isnan(r["threshold_scanpy"]) and np.isnan(r["threshold_ours"]))
            for r in rows
        ),
    }
    return {"donors": rows, "overall": overall}


def onek1k_input(folder: Path | None) -> Path:
    if folder is not None:
        return folder
    from scale import SCRATCH, shape_tag, simulate

    folder = SCRATCH / "inputs" / shape_tag(ONEK1K_SHAPE)
    simulate(ONEK1K_SHAPE, folder)
    return folder


def load(dataset: str, onek1k: Path | None) -> tuple[ad.AnnData, dict]:
    if dataset == "onek1k":
        folder = onek1k_input(onek1k)
        truth = json.loads((folder / "truth.json").read_text())
        return io.read_h5ad(folder / "dataset.h5ad"), truth
    h5ad, truth = ROOT / "data/filter/filtered.h5ad", ROOT / "data/raw/truth.json"
    if not h5ad.is_file() or not truth.is_file():
        raise SystemExit(f"{h5ad} or {truth} missing: run `make repro` first")
    return io.read_h5ad(h5ad), json.loads(truth.read_text())


def scaling(rows: list[dict], method: str) -> tuple[float, float]:
    """Fit CPU seconds = a * cells^b over the donors; return (b, predicted s at 1,274 cells)."""
    cells = np.log([r["cells"] for r in rows])
    seconds = np.log([r[f"cpu_{method}"] for r in rows])
    b, a = np.polyfit(cells, seconds, 1)
    return float(b), float(np.exp(a + b * np.log(ONEK1K_CELLS_PER_DONOR)))


def markdown(results: dict, machine: dict) -> str:
    out = [
        "# Scrublet per donor: scanpy.pp.scrublet against analysis/scrublet.py",
        "",
        "Written by `bench/scrublet.py`. Each donor's cells that pass the `qc` threshold rules"
        " (params.yaml), scored by each method on one thread, back to back, best of"
        f" {machine['repeats']} timed run(s). Times are process CPU seconds (one thread, so"
        " close to the wall time of an idle machine) unless marked wall; the projection"
        " for OneK1K divides CPU seconds by 2 processes.",
        f"Machine: {machine['machine']}, {machine['cores']} cores, Python {machine['python']},"
        f" {machine['packages']}; 1-minute load average {machine['load_start']:.1f} at the"
        f" start, {machine['load_end']:.1f} at the end"
        + (
            " (above the core count: other work shared the cores and times are inflated)."
            if max(machine["load_start"], machine["load_end"]) > machine["cores"]
            else "."
        ),
        "",
        "Columns: `scanpy` is `scanpy.pp.scrublet` (exact neighbours, as the `qc` stage ran it"
        " before); `ours` is `analysis/scrublet.py`; `ours, self counted` takes our observed"
        " scores and our simulated scores one neighbour step higher, as if each simulated"
        " doublet counted itself among its neighbours (derived, not timed). scanpy counts the"
        " doublet itself in some groups and not in others, depending on floating-point ties"
        " between coinciding droplets (see the module docstring of `analysis/scrublet.py`);"
        " the column `scanpy counts self` says which it did for each donor (its simulated"
        " scores equal ours, or ours one step higher). The simulated scores set each donor's"
        " call threshold, so that choice moves the calls; the observed scores do not depend"
        " on it.",
        "",
    ]
    columns = (*METHODS, VARIANT)
    for name, res in results.items():
        rows, overall = res["donors"], res["overall"]
        agree = overall["agreement"]
        total = {m: sum(r[f"s_{m}"] for r in rows) for m in METHODS}
        cpu = {m: sum(r[f"cpu_{m}"] for r in rows) for m in METHODS}
        selfs = {v: sum(r["scanpy_self"] == v for r in rows) for v in ("yes", "no", "neither")}
        out += [f"## {res['title']}", ""]
        out += [
            f"{len(rows)} donors, {agree['cells_scored']:,} cells scored"
            f" ({min(r['cells'] for r in rows)} to {max(r['cells'] for r in rows)} per donor).",
            "",
            "| | scanpy.pp.scrublet | analysis/scrublet.py | ours, self counted |",
            "| --- | ---: | ---: | ---: |",
            "| seconds, all donors (one thread) | "
            f"{total['scanpy']:.1f} | {total['ours']:.1f} | |",
            f"| CPU seconds, all donors | {cpu['scanpy']:.1f} | {cpu['ours']:.1f} | |",
            "| CPU seconds per donor, mean | "
            f"{cpu['scanpy'] / len(rows):.3f} | {cpu['ours'] / len(rows):.3f} | |",
        ]
        if name == "onek1k":
            fits = {m: scaling(rows, m) for m in METHODS}
            out += [
                "| CPU seconds per donor of 1,274 cells (fit s = a n^b) | "
                f"{fits['scanpy'][1]:.2f} | {fits['ours'][1]:.3f} | |",
                f"| growth exponent b | {fits['scanpy'][0]:.2f} | {fits['ours'][0]:.2f} | |",
                "| CPU seconds for OneK1K's 981 donors (from the fit) | "
                f"{fits['scanpy'][1] * ONEK1K_DONORS:,.0f} |"
                f" {fits['ours'][1] * ONEK1K_DONORS:,.0f} | |",
                "| wall seconds for 981 donors on 2 processes (CPU / 2) | "
                f"{fits['scanpy'][1] * ONEK1K_DONORS / 2:,.0f} |"
                f" {fits['ours'][1] * ONEK1K_DONORS / 2:,.0f} | |",
            ]
        out += [
            "| doublets called | "
            + " | ".join(str(overall[m]["doublets_called"]) for m in columns)
            + " |",
            "| recall of planted doublets | "
            + " | ".join(f"{overall[m]['recall']:.3f}" for m in columns)
            + " |",
            "| precision | "
            + " | ".join(f"{overall[m]['precision']:.3f}" for m in columns)
            + " |",
            "| AUC of the scores (scored cells) | "
            + " | ".join(f"{overall[m]['auc']:.4f}" for m in columns)
            + " |",
            "",
            f"Speed-up, all donors: {cpu['scanpy'] / cpu['ours']:.1f}x in CPU time,"
            f" {total['scanpy'] / total['ours']:.1f}x in wall time."
            f" Agreement over all scored cells: Spearman {agree['spearman']:.5f}, Pearson"
            f" {agree['pearson']:.5f}, identical scores {100 * agree['identical']:.2f} %;"
            f" same call threshold in {agree['donors_same_threshold']} of {len(rows)} donors;"
            f" calls: {agree['calls_both']} by both, {agree['calls_scanpy_only']} by scanpy"
            f" only, {agree['calls_ours_only']} by ours only. scanpy counted the simulated"
            f" doublet itself in {selfs['yes']} donors, not in {selfs['no']}"
            + (f", neither in {selfs['neither']}" if selfs["neither"] else "")
            + ".",
            "",
            "| donor | cells | scanpy (CPU s) | ours (CPU s) | speed-up | Spearman | Pearson |"
            " identical | scanpy counts self | threshold scanpy | threshold ours |"
            " threshold self counted | doublets scanpy | doublets ours |"
            " doublets self counted |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"
            " ---: | ---: | ---: |",
        ]
        for r in sorted(rows, key=lambda r: r["cells"]):
            out.append(
                f"| {r['donor']} | {r['cells']} | {r['cpu_scanpy']:.2f} | {r['cpu_ours']:.3f} |"
                f" {r['cpu_scanpy'] / r['cpu_ours']:.1f} | {r['spearman']:.5f} |"
                f" {r['pearson']:.5f} |"
                f" {100 * r['identical']:.1f} % | {r['scanpy_self']} |"
                f" {r['threshold_scanpy']:.4f} | {r['threshold_ours']:.4f} |"
                f" {r['threshold_self']:.4f} | {r['doublets_scanpy']} | {r['doublets_ours']} |"
                f" {r['doublets_self']} |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["onek1k", "default"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--onek1k", type=Path, default=None, help="folder of dataset.h5ad")
    parser.add_argument("--out", type=Path, default=RESULTS / "scrublet.md")
    args = parser.parse_args(argv)
    params = load_section("qc", ROOT / "params.yaml")
    titles = {
        "onek1k": "OneK1K's shape: 39 donors x ~1,274 droplets x 35,500 genes (simulated)",
        "default": "Default pipeline data: data/filter/filtered.h5ad",
    }
    load_start = os.getloadavg()[0]
    results = {}
    for name in args.datasets:
        adata, truth = load(name, args.onek1k)
        results[name] = compare(adata, truth, params, args.repeats) | {"title": titles[name]}
    packages = ", ".join(
        f"{p} {metadata.version(p)}" for p in ("numpy", "scipy", "scikit-learn", "scanpy")
    )
    machine = {
        "machine": platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "packages": packages,
        "repeats": args.repeats,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(results, machine))
    args.out.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "results": results}, indent=1, default=float)
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
