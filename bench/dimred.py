"""Time the PCA and the dimred steps, old way and new, on a scale-bench project.

Reads this checkout's ``params.yaml`` and a project that ``bench/scale.py --until
preprocess --keep`` left behind (its ``data/filter`` and ``data/qc`` outputs) and
times, step by step, in this process:

* preprocess: reading the kept cells' counts, HVGs, log-normalisation, and PCA
  with ``arpack`` (scanpy's, the previous default) and ``covariance`` (the new
  default), with the per-component |correlation| of their cell scores;
* dimred: Harmony, the neighbour graph (exact brute force when asked, and
  pynndescent as used above ``exact_knn_max_cells``, with its recall against the
  exact neighbours of 2,000 cells), UMAP on every cell and on a sample
  (``--umap-sample``), and donor mixing.

Every step reports wall seconds and this process's CPU seconds (user + system,
all threads) and the 1-minute load average before it, because the machine is
shared: wall time under load overstates a step's cost, CPU time does not. numba
kernels are compiled before timing (a stage pays that once: about 30 CPU seconds
for pynndescent and UMAP, a few for the PCA kernels, which are cached on disk).
Writes a JSON record and two PNGs (UMAP by cell type, every cell vs the sample).

    python bench/dimred.py bench/scratch/scale-39x1274x35500/project \\
        --umap-sample 10000 --out bench/results/dimred-50k
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

import immune_aging  # noqa: F401  (pins the numeric libraries before numpy)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("numpy", "scipy", "scanpy", "harmonypy", "pynndescent", "umap-learn", "numba")


def cpu_s() -> float:
    """Return this process's CPU seconds (user + system, every thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Timer:
    """Collect wall and CPU seconds and the load average per step."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, float]] = {}

    def __call__(self, name: str):
        """Time the ``with`` block as step ``name``."""
        timer = self

        class _Step:
            def __enter__(self):
                self.load = os.getloadavg()[0]
                self.wall, self.cpu = time.perf_counter(), cpu_s()

            def __exit__(self, *exc):
                timer.steps[name] = {
                    "wall_s": round(time.perf_counter() - self.wall, 2),
                    "cpu_s": round(cpu_s() - self.cpu, 2),
                    "load_1min": round(self.load, 2),
                }
                print(f"{name:28s} {timer.steps[name]}", flush=True)

        return _Step()


def machine() -> dict[str, object]:
    """CPU, cores, memory and package versions."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "threads": os.environ.get("IMMUNE_AGING_THREADS", ""),
        "versions": {p: metadata.version(p) for p in PACKAGES},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the bench; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("project", type=Path, help="scale-bench project (after preprocess)")
    p.add_argument("--umap-sample", type=int, default=10_000, help="cells of the sample UMAP")
    p.add_argument("--exact", action="store_true", help="also time exact (brute) neighbours")
    p.add_argument("--full-umap", action="store_true", help="also lay out every cell")
    p.add_argument("--no-arpack", action="store_true", help="skip the ARPACK PCA")
    p.add_argument("--out", type=Path, required=True, help="prefix of the JSON and PNGs")
    args = p.parse_args(argv)

    import anndata as ad
    import numpy as np
    import scanpy as sc
    from sklearn.neighbors import NearestNeighbors

    from immune_aging import cell_tables, counts, io
    from immune_aging.analysis import dimred, plots, preprocess
    from immune_aging.analysis import hvg as hvg_select
    from immune_aging.params import load_section

    params_file = ROOT / "params.yaml"
    pp = load_section("preprocess", params_file)
    dp = load_section("dimred", params_file)
    t = Timer()
    record: dict[str, object] = {"machine": machine(), "project": str(args.project)}

    # warm the numba kernels (the PCA's and pynndescent's) on small data first
    rng = np.random.default_rng(0)
    # 9,000 cells: above scanpy's 8,192, so pynndescent is compiled too
    small = rng.normal(size=(9000, dp.n_pcs)).astype(np.float32)
    from scipy import sparse

    preprocess.run_pca(sparse.random(300, 40, 0.3, format="csr", rng=rng), n_comps=5, seed=0)
    warm = ad.AnnData(obs={"i": np.arange(len(small))})
    warm.obsm["X"] = small
    with t("compile (warm-up, 9k cells)"):
        dimred.neighbors_umap(
            warm, use_rep="X", n_neighbors=dp.n_neighbors, n_pcs=dp.n_pcs, min_dist=0.5, seed=0
        )

    filtered = args.project / "data" / "filter" / "filtered.h5ad"
    with t("preprocess: read counts"):
        backed = io.read_h5ad(filtered, backed=True)
        keep = cell_tables.read_keep(
            args.project / "data" / "qc" / "cells.parquet", backed.obs_names, filtered
        )
        obs, var = backed.obs.loc[keep].copy(), backed.var.copy()
        backed.file.close()
        matrix, _ = counts.read_counts(filtered, "X", keep, drop_empty_genes=False)
    cells = ad.AnnData(X=matrix, obs=obs, var=var)
    record["cells"] = int(cells.n_obs)
    with t("preprocess: HVG"):
        hvg, _ = hvg_select.highly_variable_genes(
            cells, n_top_genes=pp.n_top_genes, span=pp.hvg_span, batch_key="donor_id"
        )
    blocked = preprocess.block_genes(var["feature_name"], regex=pp.blocklist_regex)
    used = hvg["highly_variable"].to_numpy() & ~blocked
    with t("preprocess: log-normalise"):
        data = preprocess.log_normalise(matrix, columns=used, target_sum=pp.target_sum)
    record["hvg_nnz_per_cell"] = round(data.nnz / data.shape[0], 1)
    del matrix, cells
    with t("preprocess: PCA covariance"):
        pca = preprocess.run_pca(data, n_comps=pp.n_comps, seed=pp.seed, solver="covariance")
    if not args.no_arpack:
        with t("preprocess: PCA arpack"):
            ref = preprocess.run_pca(data, n_comps=pp.n_comps, seed=pp.seed, solver="arpack")
        corr = [
            abs(float(np.corrcoef(pca["X_pca"][:, j], ref["X_pca"][:, j])[0, 1]))
            for j in range(pp.n_comps)
        ]
        record["pca_abs_corr_scores"] = [round(c, 6) for c in corr]
        record["pca_min_abs_corr_used"] = round(min(corr[: dp.n_pcs]), 6)
        record["pca_min_abs_corr_all"] = round(min(corr), 6)
        record["pca_variance_max_rel_diff"] = float(
            np.max(np.abs(pca["variance"] - ref["variance"]) / ref["variance"])
        )
    del data

    adata = ad.AnnData(obs=obs[list(dimred.OBS_COLUMNS)].copy())
    adata.obsm["X_pca"] = pca["X_pca"]
    with t("dimred: Harmony"):
        corrected, info = dimred.harmony_integrate(
            adata, max_iter=dp.harmony_max_iter, seed=dp.seed, n_threads=os.cpu_count() or 1
        )
    record["harmony_iterations"] = info["iterations"]
    work = ad.AnnData(obs=adata.obs.copy())
    work.obsm["X_pca_harmony"] = corrected
    x = corrected[:, : dp.n_pcs]
    kw = {"use_rep": "X_pca_harmony", "n_neighbors": dp.n_neighbors, "n_pcs": dp.n_pcs}
    graph = work.copy()
    with t("dimred: neighbours pynndescent"):
        dimred.neighbor_graph(graph, *kw.values(), dp.seed, 0)
    queries = np.sort(rng.choice(len(x), size=min(2000, len(x)), replace=False))
    k = dp.n_neighbors - 1  # scanpy keeps n_neighbors - 1 besides the cell itself
    _, exact = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x[queries])
    dist = graph.obsp["distances"].tocsr()
    recall = [len(set(dist[q].indices) & set(exact[i, 1:])) / k for i, q in enumerate(queries)]
    record["pynndescent_recall"] = round(float(np.mean(recall)), 4)
    if args.exact:
        with t("dimred: neighbours exact"):
            dimred.neighbor_graph(work.copy(), *kw.values(), dp.seed, len(x))
    if args.full_umap:
        full = graph.copy()
        with t("dimred: UMAP every cell (layout only)"):
            sc.tl.umap(full, min_dist=dp.umap_min_dist, random_state=dp.seed)
    with t(f"dimred: UMAP sample {args.umap_sample} (graph + layout)"):
        rows = dimred.umap_rows(len(x), args.umap_sample, dp.seed)
        sub = ad.AnnData(obs=work.obs.iloc[rows].copy())
        sub.obsm["X_pca_harmony"] = corrected[rows]
        part = dimred.neighbors_umap(
            sub, **kw, min_dist=dp.umap_min_dist, seed=dp.seed, exact_max_cells=0
        )
    with t("dimred: donor mixing"):
        dimred.donor_mixing(
            {"pca": pca["X_pca"][:, : dp.n_pcs], "harmony": x},
            adata.obs["donor_id"].astype(str).to_numpy(),
            n_neighbors=dp.n_neighbors,
            max_cells=dimred.MIXING_CELLS,
            seed=dp.seed,
        )
    record["steps"] = t.steps
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figs = {"sample": (part.obsm["X_umap"], sub.obs["cell_type"], len(rows))}
    if args.full_umap:
        figs["full"] = (full.obsm["X_umap"], work.obs["cell_type"], len(x))
    for name, (xy, labels, n) in figs.items():
        fig = plots.plot_embedding(
            xy, labels, title=f"UMAP by cell type, {n:,} of {len(x):,} cells", seed=dp.seed
        )
        fig.savefig(f"{args.out}-umap-{name}.png", dpi=80)
    Path(f"{args.out}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"-> {args.out}.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
