"""Fuzz the input stages with thousands of seeded damages; measure the structural check.

Usage::

    python bench/fuzz.py                      # 2000 seeds, then the check's cost
    python bench/fuzz.py --cases 300 --skip-cost

Part 1 runs ``tests/fuzz_harness.py`` on seeds ``0 .. cases-1`` (the CI test runs
the first 210) and tallies the outcomes: ``ok`` (every stage exited 0 and its
output validates), ``error`` (exit 2 with exactly one ``error:`` line, no
traceback, nothing written) and ``other`` (anything else; must be 0), per kind
of damage, with the most frequent error lines. The structural check runs with
its default limits here (5 s of CPU at least), unlike the CI test; the
validation sample is scaled down to the small inputs, as in the CI test.

Part 2 measures :func:`immune_aging.guard.check_h5ad` (CPU seconds of the child,
wall seconds including the fork) on

- the default simulated dataset (``params.yaml`` ``data.synthetic``);
- a file of OneK1K's shape (1.24 M cells, 35.5 k genes, 1.52 G stored counts) in
  both layouts: the simulator's real ``obs``/``var``, a real ``indptr``, and
  matrices whose chunks are written directly as compressed zeros (so the file
  takes seconds to write): the check reads only annotations, ``indptr`` and
  the chunk index of the matrices, which this file has at full size.

Files go to bench/scratch/ (git-ignored); the report to bench/results/fuzz.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fuzz_harness

import immune_aging  # noqa: E402, F401  (sets thread variables before numpy work)
from immune_aging import guard  # noqa: E402

SCRATCH = ROOT / "bench" / "scratch" / "fuzz"
#: OneK1K on CELLxGENE (bench/results/simulate_onek1k.md).
ONEK1K = {"n_donors": 981, "cells_per_donor": 1274, "n_genes": 35_500, "n_cell_types": 12}
ONEK1K_NNZ = 1_524_521_885
ONEK1K_FILE_GB = 4.0
CHUNK = 1 << 18


def run_fuzz(cases: int, workers: int) -> tuple[list, float]:
    from tests import fuzz_harness as fh

    work = SCRATCH / "cases"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    fh.sample_like_a_large_file(setattr)
    inputs = fh.make_inputs(SCRATCH / "inputs")
    t0 = time.monotonic()
    n = [0]

    def progress(result) -> None:
        n[0] += 1
        if result.outcome == "other" or n[0] % 100 == 0:
            print(f"{n[0]}/{cases} seed {result.seed}: {result.outcome} {result.detail[:120]}")

    results = fh.run_cases(range(cases), work, inputs, workers=workers, on_result=progress)
    seconds = time.monotonic() - t0
    with open(SCRATCH / "results.jsonl", "w") as fh_out:
        for r in results:
            fh_out.write(json.dumps(r.as_dict()) + "\n")
    return results, seconds


def _write_matrix(f, name: str, indptr: np.ndarray, n_cols: int, zero_chunk: bytes) -> None:
    import h5py

    g = f.create_group(name)
    g.attrs["encoding-type"] = "csr_matrix"
    g.attrs["encoding-version"] = "0.1.0"
    g.attrs["shape"] = np.array([len(indptr) - 1, n_cols], dtype=np.int64)
    nnz = int(indptr[-1])
    for key, dtype in (("data", np.float32), ("indices", np.int32)):
        d = g.create_dataset(key, shape=(nnz,), dtype=dtype, chunks=(CHUNK,), compression="gzip")
        for start in range(0, nnz, CHUNK):
            d.id.write_direct_chunk((start,), zero_chunk[dtype])
    g.create_dataset("indptr", data=indptr, chunks=(min(CHUNK, len(indptr)),), compression="gzip")
    assert isinstance(g, h5py.Group)


def onek1k_skeleton(path: Path, *, cellxgene: bool) -> None:
    """A file of OneK1K's shape: real annotations and indptr, matrices of zero chunks."""
    import h5py
    from anndata.io import write_elem

    from immune_aging import synthetic

    design = synthetic.design_simulation(
        seed=0, doublet_rate=0.06, dying_rate=0.03, rbc_rate=0.01, **ONEK1K
    )
    n_obs, n_vars = design.n_cells, design.n_genes
    rng = np.random.default_rng(0)
    per_cell = rng.poisson(ONEK1K_NNZ / n_obs, n_obs)
    indptr = np.concatenate([[0], np.cumsum(per_cell)]).astype(np.int64)
    zero_chunk = {
        np.float32: zlib.compress(bytes(CHUNK * 4)),
        np.int32: zlib.compress(bytes(CHUNK * 4)),
    }
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", design.obs)
        write_elem(f, "var", design.var)
        _write_matrix(f, "X", indptr, n_vars, zero_chunk)
        if cellxgene:
            raw = f.create_group("raw")
            raw.attrs["encoding-type"] = "raw"
            raw.attrs["encoding-version"] = "0.1.0"
            write_elem(raw, "var", design.var)
            _write_matrix(raw, "X", indptr, n_vars, zero_chunk)
        for key in ("layers", "obsm", "obsp", "varm", "varp"):
            write_elem(f, key, {})
        write_elem(f, "uns", {"schema_version": "5.0.0", "title": "OneK1K-shaped skeleton"})


def measure(path: Path) -> dict:
    t0 = time.monotonic()
    result = guard.check_h5ad(path)
    result["wall_s"] = round(time.monotonic() - t0, 2)
    result["file_mb"] = round(path.stat().st_size / 2**20, 1)
    return result


def guard_cost() -> list[tuple[str, dict, str]]:
    import h5py  # noqa: F401  (imported before the fork, as in a stage)

    from immune_aging import synthetic
    from immune_aging.params import as_dict, load_section

    rows = []
    default = SCRATCH / "default"
    default.mkdir(parents=True, exist_ok=True)
    if not (default / "dataset.h5ad").exists():
        params = as_dict(load_section("data", ROOT / "params.yaml"))["synthetic"]
        synthetic.write_simulation(default, **params)
    rows.append(("default simulated dataset (counts in X)", measure(default / "dataset.h5ad"), ""))
    for cellxgene in (False, True):
        name = "onek1k-cellxgene.h5ad" if cellxgene else "onek1k-counts-x.h5ad"
        path = SCRATCH / name
        if not path.exists():
            t0 = time.monotonic()
            onek1k_skeleton(path, cellxgene=cellxgene)
            print(f"wrote {path} in {time.monotonic() - t0:.0f} s")
        label = "OneK1K shape, " + ("normalised X + raw.X" if cellxgene else "counts in X")
        rows.append((label, measure(path), f"{guard.cpu_limit(int(ONEK1K_FILE_GB * 2**30)):.0f}"))
    return rows


def write_report(out: Path, results: list, seconds: float, workers: int, cost: list) -> None:
    from tests import fuzz_harness as fh

    counts = fh.tally(results) if results else {}
    lines = [
        "# Fuzzing the input stages, and the cost of the structural check",
        "",
        "`python bench/fuzz.py` (see its docstring). Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average at the end {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
        "(the cores are shared: wall times vary with it, CPU times much less).",
        "",
    ]
    if results:
        lines += [
            f"## Outcomes of {len(results)} seeded damages",
            "",
            f"{len(results)} cases in {seconds:.0f} s wall ({workers} at a time); "
            "the structural check ran with its default limits.",
            "",
            "| outcome | cases |",
            "| --- | --- |",
            f"| ok (every stage exit 0, output validates) | {counts['ok']} |",
            f"| clear error (exit 2, one `error:` line, nothing written) | {counts['error']} |",
            f"| other (traceback, hang, crash, output written or invalid) | {counts['other']} |",
            "",
            "| damage | layout | cases | ok | error | other | longest stage (s) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        groups: dict[tuple[str, str], list] = collections.defaultdict(list)
        for r in results:
            groups[(r.kind, r.layout)].append(r)
        for (kind, layout), rs in sorted(groups.items()):
            c = fh.tally(rs)
            longest = max(s for r in rs for _, _, s in r.stages)
            lines.append(
                f"| {kind} | {layout} | {len(rs)} | {c['ok']} | {c['error']} | {c['other']}"
                f" | {longest:.1f} |"
            )
        by_stage = collections.Counter((r.stages[-1][0], r.outcome) for r in results)
        lines += [
            "",
            "Last stage run per case (an error stops the chain; ok means every stage passed):",
            "",
            "| stage | ok | error | other |",
            "| --- | --- | --- | --- |",
        ]
        for stage in ("data", "filter", "genesets", "ora"):
            cells = " | ".join(str(by_stage[(stage, o)]) for o in ("ok", "error", "other"))
            lines.append(f"| {stage} | {cells} |")
        errors = [r for r in results if r.outcome == "error"]
        hung = sum("did not finish within" in r.detail for r in errors)
        crashed = sum("crashed" in r.detail for r in errors)
        lines += [
            "",
            f"Of the clear errors, {hung} were structural checks stopped at their CPU limit"
            f" (HDF5 looping) and {crashed} HDF5 crashes caught in the check's child; the"
            " longest stage times above are those checks, stretched by the load.",
        ]
        kinds: collections.Counter[str] = collections.Counter()
        for r in results:
            if r.outcome == "error":
                kinds[_shape(r.detail)] += 1
        lines += ["", "Most frequent error lines (numbers and values elided):", ""]
        lines += ["| cases | line |", "| --- | --- |"]
        lines += [f"| {n} | `{text}` |" for text, n in kinds.most_common(15)]
        others = [r for r in results if r.outcome == "other"]
        if others:
            lines += ["", "Cases ending otherwise:", ""]
            lines += [f"- seed {r.seed} ({r.kind}, {r.layout}): {r.detail}" for r in others]
        lines.append("")
    if cost:
        lines += [
            "## Cost of the structural check (`immune_aging.guard.check_h5ad`)",
            "",
            "CPU: seconds of the child's walk; wall: the whole call (fork, walk, verdict).",
            "",
            "| file | size (MB) | objects | read whole (MB) | chunk index only | CPU (s) | "
            "wall (s) | CPU limit (s) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for label, r, limit_real in cost:
            limit = f"{r['cpu_limit_s']:.0f}" + (
                f" ({limit_real} for the real {ONEK1K_FILE_GB:.0f} GB file)" if limit_real else ""
            )
            lines.append(
                f"| {label} | {r['file_mb']} | {r['objects']} | {r['read_bytes'] / 2**20:.1f} | "
                f"{r['chunked_only']} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | {limit} |"
            )
        lines.append("")
    out.write_text("\n".join(lines) + NOTES)


def _shape(line: str) -> str:
    import re

    line = re.sub(r"\(e\.g\. [^)]*\)", "(e.g. …)", line)
    line = re.sub(r"(?<![\w.-])-?\d[\d.e+-]*", "N", line)
    line = re.sub(r"'[^']*'", "'…'", line)
    return line[:150]


NOTES = """
## Notes

- The CI test (`tests/test_fuzz.py`) runs seeds 0-209 with the check's base CPU limit
  lowered to 1 s, so that each damage that makes HDF5 loop costs 1 s instead of 5 s.
- The data stage validates a sample of about 2000 rows, all the rows of these small
  inputs; the harness scales it down to 60 rows in 3 blocks, so that, as on a full-size
  file, damage outside the sample reaches the filter stage's own checks.
- The OneK1K-shaped files hold the simulator's annotations at full size and a real
  `indptr`, but matrices of zeros written as precompressed chunks: the check never
  reads matrix values (only their chunk index), so its cost on the real file is that
  of these files; their own size is small, so the limit for the real file (about
  4 GB) is given next to the measured one.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--skip-cost", action="store_true", help="do not measure the check's cost")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz.md")
    args = p.parse_args()
    os.environ.setdefault("IMMUNE_AGING_THREADS", "1")
    SCRATCH.mkdir(parents=True, exist_ok=True)
    results, seconds = run_fuzz(args.cases, args.workers) if args.cases else ([], 0.0)
    cost = [] if args.skip_cost else guard_cost()
    write_report(args.out, results, seconds, args.workers, cost)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
