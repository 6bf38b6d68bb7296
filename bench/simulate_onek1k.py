"""Time the simulator at OneK1K's shape and record time, peak memory and file size.

Usage::

    python bench/simulate_onek1k.py                 # full OneK1K shape (minutes)
    python bench/simulate_onek1k.py --scale 0.05    # a quick check

Simulates ~1.25 M cells x 35.5 k genes from 981 donors (12 cell types) with the
default rates of params.yaml, writes the h5ad incrementally into bench/scratch/
(git-ignored), then opens it with anndata (backed and, for small scales, in
memory) and writes bench/results/simulate_onek1k.md. Threads: IMMUNE_AGING_THREADS
(default all cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

import immune_aging  # noqa: F401  (sets thread variables before numpy work)
from immune_aging import io
from immune_aging.params import load_section
from immune_aging.threads import n_threads

ROOT = Path(__file__).resolve().parents[1]

#: OneK1K (Yazar et al. 2022) on CELLxGENE: ~1.25 M cells, 981 donors, ~35.5 k genes.
ONEK1K = {"n_donors": 981, "cells_per_donor": 1274, "n_genes": 35_500, "n_cell_types": 12}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of OneK1K's donors")
    p.add_argument("--out", type=Path, default=ROOT / "bench/scratch/onek1k_sim.h5ad")
    p.add_argument("--results", type=Path, default=ROOT / "bench/results/simulate_onek1k.md")
    p.add_argument("--keep", action="store_true", help="keep the simulated file")
    args = p.parse_args()

    from immune_aging import synthetic

    defaults = load_section("data", ROOT / "params.yaml").synthetic
    shape = dict(ONEK1K)
    shape["n_donors"] = max(2, round(ONEK1K["n_donors"] * args.scale))
    config = {
        "seed": defaults.seed,
        **shape,
        "doublet_rate": defaults.doublet_rate,
        "dying_rate": defaults.dying_rate,
        "rbc_rate": defaults.rbc_rate,
    }
    threads = n_threads()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    design = synthetic.design_simulation(**config)
    t_design = time.perf_counter() - t0
    mem_design = peak_mb()
    t1 = time.perf_counter()
    synthetic.write_h5ad_incremental(
        design, args.out, chunk_cells=defaults.chunk_cells, threads=threads
    )
    t_write = time.perf_counter() - t1
    total = time.perf_counter() - t0
    cpu_total = cpu_s()
    load = os.getloadavg()
    mem_peak = peak_mb()
    size = args.out.stat().st_size

    t2 = time.perf_counter()
    backed = io.read_h5ad(args.out, backed=True)
    block = backed.X[:1000]
    nnz = int(backed.file["X/indptr"][-1])
    assert backed.shape == (design.n_cells, design.n_genes)
    backed.file.close()
    t_open = time.perf_counter() - t2
    totals = np.asarray(block.sum(axis=1)).ravel()
    genes = np.diff(block.indptr)

    row = {
        "scale": args.scale,
        "cells": design.n_cells,
        "genes": design.n_genes,
        "donors": config["n_donors"],
        "cell_types": config["n_cell_types"],
        "nnz": nnz,
        "threads": threads,
        "chunk_cells": defaults.chunk_cells,
        "design_s": round(t_design, 1),
        "simulate_write_s": round(t_write, 1),
        "total_s": round(total, 1),
        "cpu_s (user+sys, all threads)": round(cpu_total, 1),
        "load_average_1_5_15_min": " / ".join(f"{x:.1f}" for x in load),
        "peak_mem_mb_design": round(mem_design),
        "peak_mem_mb": round(mem_peak),
        "file_mb": round(size / 2**20, 1),
        "bytes_per_nnz": round(size / max(nnz, 1), 2),
        "open_backed_and_read_1000_rows_s": round(t_open, 2),
        "median_umis_first_1000": float(np.median(totals)),
        "median_genes_first_1000": float(np.median(genes)),
    }
    print(json.dumps(row, indent=2))
    write_results(args.results, row)
    if not args.keep:
        args.out.unlink()
    return 0


def write_results(path: Path, row: dict) -> None:
    """Write the markdown record of one run, keeping a hand-written "## Notes" section."""
    path.parent.mkdir(parents=True, exist_ok=True)
    notes = ""
    if path.is_file() and "\n## Notes" in path.read_text():
        notes = "\n## Notes" + path.read_text().split("\n## Notes", 1)[1]
    lines = [
        "# Simulator at OneK1K shape",
        "",
        "`python bench/simulate_onek1k.py` (see its docstring). Simulates the dataset with",
        "`immune_aging.synthetic.write_h5ad_incremental` (whole donors per chunk, CSR float32,",
        "zstd level 3) and reopens it with anndata in backed mode.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {row['threads']} thread(s). Other processes may have "
        "shared the cores: compare `cpu_s` with `total_s` and see the load average.",
        "",
        "| quantity | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v} |" for k, v in row.items()]
    lines.append("")
    path.write_text("\n".join(lines) + notes)


if __name__ == "__main__":
    sys.exit(main())
