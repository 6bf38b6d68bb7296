"""Run the whole pipeline at OneK1K's shape (or a fraction of it) and record what it costs.

Usage::

    python bench/scale.py --scale 1.0                 # OneK1K: 981 donors x 1,274 cells
    python bench/scale.py --ladder 0.04 0.2 1.0       # ~50 k, ~250 k, ~1.25 M cells
    python bench/scale.py --donors 6 --cells-per-donor 80 --genes 800 --until filter  # smoke

``make bench-scale SCALE=1.0`` runs the first form. The input is simulated once per
shape with the project's simulator (all of OneK1K's 12 cell types, 35.5 k genes) and
kept in ``bench/scratch/inputs/`` (git-ignored); the pipeline then runs as a user
would run it on a downloaded file: in a scratch copy of this repository
(``bench/scratch/scale-<shape>/``), ``data.source`` pointing at the file under
``data/external/``, ``dvc repro``. Recorded per stage, from the run log: wall
seconds, CPU seconds (all threads and worker processes), peak resident memory;
and the bytes of its outputs. Also: the no-op ``dvc repro`` time (median of three),
and the checkpoint bytes of the workspace and DVC cache together, excluding the raw
input, a hard-linked file counted once. Results go to
``bench/results/scale-<shape>.json``; ``--ladder`` adds each stage's growth
exponent (the slope of log time on log cells) to ``bench/results/scale-ladder.json``.
``bench/README.md`` holds the tables made from them.

Threads: ``IMMUNE_AGING_THREADS`` (default all cores), passed to every stage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "bench" / "scratch"
RESULTS = ROOT / "bench" / "results"
#: OneK1K (Yazar et al. 2022) on CELLxGENE: ~1.25 M cells, 981 donors, ~35.5 k genes.
ONEK1K = {"n_donors": 981, "cells_per_donor": 1274, "n_genes": 35_500, "n_cell_types": 12}
#: What a scratch project holds (everything dvc.yaml and the stages need).
PROJECT_FILES = ("dvc.yaml", "params.yaml", "pyproject.toml", ".gitignore", ".dvcignore", "src")
#: Packages whose versions are recorded with the results.
PACKAGES = ("numpy", "scipy", "scanpy", "anndata", "pydeseq2", "harmonypy", "umap-learn", "dvc")


def shape_tag(shape: dict[str, int]) -> str:
    """Return a file-name tag of a simulated shape, e.g. ``981x1274x35500``."""
    return f"{shape['n_donors']}x{shape['cells_per_donor']}x{shape['n_genes']}"


def simulate(shape: dict[str, int], folder: Path) -> dict[str, Any]:
    """Simulate ``dataset.h5ad``, ``genesets.gmt`` and ``truth.json`` once per shape."""
    done = folder / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    import immune_aging  # noqa: F401  (thread variables before numpy)
    from immune_aging import synthetic
    from immune_aging.params import load_section
    from immune_aging.threads import n_threads

    defaults = load_section("data", ROOT / "params.yaml").synthetic
    settings = {**vars(defaults), **shape}
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    summary = synthetic.write_simulation(tmp, **settings, threads=n_threads())
    summary = {**summary, "simulate_s": round(time.perf_counter() - t0, 1)}
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return summary


def make_project(dest: Path, inputs: Path) -> None:
    """Copy the repository into ``dest`` as a fresh git + DVC project reading ``inputs``."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    external = dest / "data" / "external"
    external.mkdir(parents=True)
    for name in ("dataset.h5ad", "genesets.gmt"):
        os.link(inputs / name, external / name)  # no copy of a multi-GB file
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"]["source"] = "data/external/dataset.h5ad"
    params["genesets"]["sources"] = ["data/external/genesets.gmt"]
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(dest, "git", "init", "-q", "-b", "main")
    run(dest, "dvc", "init", "-q")
    run(dest, "dvc", "config", "core.analytics", "false")
    run(dest, "dvc", "config", "cache.type", "reflink,hardlink,copy")
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-q", "-m", "scale bench project")


def env(root: Path) -> dict[str, str]:
    """Environment of the scratch project: this venv first, its own run log and src."""
    out = dict(os.environ)
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    out["PYTHONPATH"] = str(root / "src")
    out["IMMUNE_AGING_LOG_DIR"] = str(root / "logs")
    out.setdefault("GIT_AUTHOR_NAME", "bench")
    out.setdefault("GIT_AUTHOR_EMAIL", "bench@example.org")
    out.setdefault("GIT_COMMITTER_NAME", "bench")
    out.setdefault("GIT_COMMITTER_EMAIL", "bench@example.org")
    return out


def run(root: Path, *cmd: str, log: Path | None = None) -> float:
    """Run a command in ``root`` (output to ``log`` when given); return its wall seconds."""
    t0 = time.perf_counter()
    with open(log, "a") if log else open(os.devnull, "w") as out:
        proc = subprocess.run(cmd, cwd=root, env=env(root), stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {root} (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def out_paths(spec: dict[str, Any]) -> list[str]:
    """Paths a dvc.yaml stage writes (outs, metrics, plots)."""
    paths = []
    for key in ("outs", "metrics", "plots"):
        for entry in spec.get(key) or []:
            paths.append(next(iter(entry)) if isinstance(entry, dict) else str(entry))
    return paths


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def checkpoint_bytes(root: Path, exclude: set[Path]) -> int:
    """Bytes of the workspace outputs and the DVC cache, each inode once."""
    seen: set[tuple[int, int]] = set()
    skip = {os.stat(p).st_ino for p in exclude if p.exists()}
    total = 0
    for top in (root / "data", root / "metrics", root / "plots", root / "reports", root / ".dvc"):
        for f in top.rglob("*") if top.exists() else []:
            if not f.is_file() or f.is_symlink():
                continue
            st = f.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen or st.st_ino in skip or "external" in f.parts:
                continue
            seen.add(key)
            total += st.st_size
    return total


def bench(
    shape: dict[str, int], *, until: str | None, keep: bool, scratch: Path = SCRATCH
) -> dict[str, Any]:
    """Simulate (cached), run the pipeline in a scratch project and return the record."""
    tag = shape_tag(shape)
    inputs = scratch / "inputs" / tag
    print(f"[{tag}] simulating (cached in {inputs}) ...", flush=True)
    sim = simulate(shape, inputs)
    root = scratch / f"scale-{tag}" / "project"
    make_project(root, inputs)
    log = root.parent / "repro.log"
    log.unlink(missing_ok=True)
    target = [until] if until else []
    print(f"[{tag}] dvc repro {' '.join(target)} (log: {log}) ...", flush=True)
    load_before = os.getloadavg()
    wall = run(root, "dvc", "repro", *target, log=log)
    load_after = os.getloadavg()
    noop = [run(root, "dvc", "repro", *target) for _ in range(3)]
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    records = [
        json.loads(line) for line in (root / "logs" / "runs.jsonl").read_text().splitlines()
    ]
    per_stage = {}
    for rec in records:
        name = rec["stage"]
        per_stage[name] = {
            "wall_s": rec["seconds"],
            "cpu_s": rec.get("cpu_s"),
            "peak_mb": rec["peak_mb"],
            "output_bytes": sum(size_of(root / p) for p in out_paths(stages[name])),
        }
    raw = {root / "data" / "raw" / "dataset.h5ad", root / "data" / "external" / "dataset.h5ad"}
    record = {
        "shape": shape,
        "cells": sim["n_cells"],
        "until": until,
        "threads": os.environ.get("IMMUNE_AGING_THREADS") or str(len(os.sched_getaffinity(0))),
        "simulate_s": sim.get("simulate_s"),
        "input_bytes": (inputs / "dataset.h5ad").stat().st_size,
        "repro_wall_s": round(wall, 1),
        "stages_wall_s": round(sum(s["wall_s"] for s in per_stage.values()), 1),
        "peak_mb": max(s["peak_mb"] for s in per_stage.values()),
        "noop_repro_s": round(statistics.median(noop), 2),
        "checkpoint_bytes_excluding_raw": checkpoint_bytes(root, raw),
        "stages": per_stage,
        "load_average_before_after": [round(x, 1) for x in (*load_before, *load_after)],
        "machine": machine(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
    }
    if not keep:
        shutil.rmtree(root.parent)
    return record


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    mem = ""
    if Path("/proc/meminfo").is_file():
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cores": len(os.sched_getaffinity(0)),
        "memory": mem,
        "packages": versions,
    }


def exponents(records: list[dict[str, Any]], key: str = "wall_s") -> dict[str, float | None]:
    """Per stage, the least-squares slope of log(``key``) on log(cells) across the ladder.

    ``key`` is ``wall_s`` or ``cpu_s``: CPU seconds are what a shared machine's load
    inflates least, so their slope is the fairer growth estimate when loads differed.
    """
    out: dict[str, float | None] = {}
    names = sorted({n for r in records for n in r["stages"]})
    for name in names:
        pts = [
            (math.log(r["cells"]), math.log(max(r["stages"][name][key] or 0.0, 1e-3)))
            for r in records
            if name in r["stages"]
        ]
        if len(pts) < 2:
            out[name] = None
            continue
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        out[name] = round(sum((x - mx) * (y - my) for x, y in pts) / sxx, 2) if sxx else None
    return out


def markdown(results: Path) -> str:
    """Tables of every ``scale-*.json`` record in ``results`` (and the ladder, if run)."""
    lines = [
        "# Scale bench results",
        "",
        f"Written by `python bench/scale.py` from `{results.name}/scale-*.json`.",
        "",
    ]
    records = sorted(
        (json.loads(f.read_text()) for f in results.glob("scale-*x*.json")),
        key=lambda r: r["cells"],
    )
    for r in records:
        m = r["machine"]
        lines += [
            f"## {r['cells']:,} cells ({shape_tag(r['shape'])}, "
            f"{r['shape']['n_cell_types']} cell types)"
            + (f", until `{r['until']}`" if r.get("until") else ""),
            "",
            f"{m['platform']}, Python {m['python']}, {m['cores']} cores, {m['memory']}; "
            f"commit {r.get('commit', '?')}; threads {r['threads']}; "
            "load average before/after (1, 5, 15 min): "
            f"{r['load_average_before_after']}. `dvc repro` {r['repro_wall_s']} s wall; "
            f"no-op `dvc repro` {r['noop_repro_s']} s; peak {r['peak_mb']:,.0f} MiB; "
            "checkpoints excluding the raw input "
            f"{r['checkpoint_bytes_excluding_raw'] / 1e6:,.0f} MB; "
            f"input {r['input_bytes'] / 1e6:,.0f} MB.",
            "",
            "| stage | wall s | CPU s | peak MiB | output MB |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, st in r["stages"].items():
            cpu = "" if st.get("cpu_s") is None else f"{st['cpu_s']:,.1f}"
            lines.append(
                f"| {name} | {st['wall_s']:,.1f} | {cpu} | {st['peak_mb']:,.0f} | "
                f"{st['output_bytes'] / 1e6:,.1f} |"
            )
        lines.append("")
    ladder = results / "scale-ladder.json"
    if ladder.is_file():
        data = json.loads(ladder.read_text())
        lines += [
            "## Growth exponents (slope of log seconds on log cells)",
            "",
            f"Cells: {', '.join(f'{c:,}' for c in data['cells'])}.",
            "",
            "Exponents of stages that take a second or less are noise. Wall seconds move "
            "with the machine's load; CPU seconds (all processes of the stage) much less.",
            "",
            "| stage | exponent (wall s) | exponent (CPU s) |",
            "| --- | ---: | ---: |",
        ]
        cpu = data.get("exponents_cpu", {})
        lines += [f"| {k} | {v} | {cpu.get(k)} |" for k, v in data["exponents"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=None, help="fraction of OneK1K's donors")
    p.add_argument("--ladder", type=float, nargs="+", help="several scales, smallest first")
    p.add_argument("--donors", type=int, help="donors (overrides --scale)")
    p.add_argument("--cells-per-donor", type=int, default=ONEK1K["cells_per_donor"])
    p.add_argument("--genes", type=int, default=ONEK1K["n_genes"])
    p.add_argument("--cell-types", type=int, default=ONEK1K["n_cell_types"])
    p.add_argument("--until", help="run `dvc repro <stage>` (its upstream only)")
    p.add_argument("--keep", action="store_true", help="keep the scratch project")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")
    p.add_argument("--scratch", type=Path, default=SCRATCH, help="folder of inputs and projects")
    p.add_argument(
        "--render", action="store_true", help="only rewrite scale.md from the JSON results"
    )
    args = p.parse_args(argv)
    if args.render:
        ladder = args.results / "scale-ladder.json"
        if ladder.is_file():
            data = json.loads(ladder.read_text())
            runs = [json.loads((args.results / f).read_text()) for f in data["runs"]]
            data["exponents"] = exponents(runs)
            data["exponents_cpu"] = exponents(runs, "cpu_s")
            ladder.write_text(json.dumps(data, indent=2) + "\n")
        (args.results / "scale.md").write_text(markdown(args.results))
        return 0

    def shape(scale: float | None) -> dict[str, int]:
        donors = args.donors or max(2, round(ONEK1K["n_donors"] * (scale or 1.0)))
        return {
            "n_donors": donors,
            "cells_per_donor": args.cells_per_donor,
            "n_genes": args.genes,
            "n_cell_types": args.cell_types,
        }

    scales = args.ladder or [args.scale if args.scale is not None else 1.0]
    records = []
    args.results.mkdir(parents=True, exist_ok=True)
    for scale in scales:
        record = bench(shape(scale), until=args.until, keep=args.keep, scratch=args.scratch)
        records.append(record)
        path = args.results / f"scale-{shape_tag(record['shape'])}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(
            f"[{shape_tag(record['shape'])}] {record['cells']} cells: repro "
            f"{record['repro_wall_s']} s, peak {record['peak_mb']:.0f} MiB, no-op "
            f"{record['noop_repro_s']} s -> {path}",
            flush=True,
        )
    if args.ladder:
        ladder = {
            "cells": [r["cells"] for r in records],
            "exponents": exponents(records),
            "exponents_cpu": exponents(records, "cpu_s"),
            "runs": [f"scale-{shape_tag(r['shape'])}.json" for r in records],
        }
        (args.results / "scale-ladder.json").write_text(json.dumps(ladder, indent=2) + "\n")
        print(json.dumps(ladder["exponents"], indent=2))
    (args.results / "scale.md").write_text(markdown(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
