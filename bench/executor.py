"""Time the stages whose jobs go through the executor: local processes against Dask.

Usage::

    python bench/scale.py --donors 39 --until pseudobulk --keep   # the inputs, once
    python bench/executor.py                                      # qc and de, 2 rounds
    python bench/executor.py --stages qc --schedulers "" local:2 local:1 --rounds 1

Each stage runs as ``dvc repro`` runs it (its ``dvc.yaml`` command, in the scratch
project left by ``bench/scale.py``: ``bench/scratch/scale-39x1274x35500/project``, the
50 k-cell OneK1K-shaped input), once per executor and round, the executors taking
turns so that the shared machine's load falls on each alike. The empty scheduler is
the local executor (``IMMUNE_AGING_SCHEDULER`` unset: ``IMMUNE_AGING_THREADS``
spawned processes); ``local:N`` a Dask ``LocalCluster`` of N workers.

Recorded per run: wall and CPU seconds (the stage and its worker processes) and peak
memory, from the run log; the seconds of the stage's map over its jobs (its last
progress line), so the share of the stage's time that runs as (distributed) jobs; on
Dask, the seconds the cluster took to start; the 1-minute load average before and
after; and whether the outputs are the bytes of the stage's first run. Results go to
``bench/results/executor.json`` and ``executor.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "bench" / "scratch" / "scale-39x1274x35500" / "project"
RESULTS = ROOT / "bench" / "results"
PACKAGES = ("dask", "distributed", "numpy", "scanpy", "pydeseq2", "gseapy", "scikit-learn")
#: ``HH:MM:SS stage: label: n of n done, S s``: the map's last progress line
DONE = re.compile(r"^\S+ \w+: (?P<label>.+): (?P<n>\d+) of (?P=n) done, (?P<s>\d+) s$", re.M)
READY = re.compile(
    r"Dask scheduler [^,\s]+, (?P<threads>\d+) worker thread\(s\), ready in (?P<s>[\d.]+) s"
)


def out_paths(spec: dict[str, Any]) -> list[str]:
    """Paths a dvc.yaml stage writes (outs, metrics, plots)."""
    paths = []
    for key in ("outs", "metrics", "plots"):
        for entry in spec.get(key) or []:
            paths.append(next(iter(entry)) if isinstance(entry, dict) else str(entry))
    return paths


def digest(root: Path, names: list[str]) -> str:
    """SHA-256 over every file under ``names`` (paths and bytes, in sorted order)."""
    h = hashlib.sha256()
    for name in names:
        path = root / name
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def maps(stderr: str) -> tuple[int, float | None, list[str]]:
    """Jobs, seconds and labels of every map of the executor a stage's log reports.

    Each map's last progress line (``label: n of n done, S s``) counts once; the
    reading progress of the stage's own process (``rows read``) is not a map.
    """
    done = [m for m in DONE.finditer(stderr) if not m["label"].endswith("rows read")]
    if not done:
        return 0, None, []
    labels = list(dict.fromkeys(m["label"] for m in done))
    return sum(int(m["n"]) for m in done), float(sum(int(m["s"]) for m in done)), labels


def run_stage(project: Path, stage: str, spec: dict[str, Any], scheduler: str) -> dict[str, Any]:
    """Run one stage once under ``scheduler`` ('' for local processes); return its record."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(project / "src")
    env["IMMUNE_AGING_LOG_DIR"] = str(project / "logs")
    env.setdefault("IMMUNE_AGING_THREADS", "2")
    env.pop("IMMUNE_AGING_SCHEDULER", None)
    if scheduler:
        env["IMMUNE_AGING_SCHEDULER"] = scheduler
    log = project / "logs" / "runs.jsonl"
    before = len(log.read_text().splitlines()) if log.is_file() else 0
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(
        spec["cmd"].split(), cwd=project, env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    tag = (scheduler or "local").replace(":", "")
    log_file = project / "logs" / f"executor-{stage}-{tag}-{time.strftime('%H%M%S')}.log"
    log_file.write_text(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{stage} under {scheduler or 'local'} failed:\n{proc.stderr}")
    record = json.loads(log.read_text().splitlines()[before])
    ready = READY.search(proc.stderr)
    jobs, map_s, labels = maps(proc.stderr)
    return {
        "stage": stage,
        "executor": scheduler or "local processes",
        "wall_s": record["seconds"],
        "process_wall_s": round(wall, 1),
        "cpu_s": record.get("cpu_s"),
        "peak_mb": record["peak_mb"],
        "map_label": "; ".join(labels) or None,
        "map_jobs": jobs,
        "map_s": map_s,
        "log": str(log_file.relative_to(project)),
        "map_share": round(map_s / record["seconds"], 2) if map_s is not None else None,
        "cluster_start_s": float(ready["s"]) if ready else None,
        "worker_threads": int(ready["threads"]) if ready else None,
        "load_1min_before_after": [round(load_before, 1), round(load_after, 1)],
        "outputs_sha256": digest(project, out_paths(spec)),
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "python": platform.python_version(),
        "cores": len(os.sched_getaffinity(0)),
        "memory": mem,
        "threads": os.environ.get("IMMUNE_AGING_THREADS", "2"),
        "packages": versions,
    }


def markdown(result: dict[str, Any]) -> str:
    """The tables of ``executor.md``."""
    m = result["machine"]
    lines = [
        "# Executor bench: local processes against a Dask LocalCluster",
        "",
        f"Written by `python bench/executor.py` ({result['date']}) into `executor.json`.",
        f"Input: `{result['project']}` ({result['cells']} cells after `filter`,"
        f" {result['donors']} donors), a project left by `bench/scale.py --keep`.",
        "",
        "`jobs` and `map s`: every map of the executor in the stage (each map's last"
        " progress line: its jobs and seconds, summed), so `map share` is the part of the"
        " stage's time spent in jobs, the part a cluster spreads over its workers. On local"
        " processes the batches are read and worked on in the stage's own process (not a"
        " map); its maps are Scrublet's groups within each batch and the per-cell-type"
        " fits.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']} memory, {m['platform']},"
        f" Python {m['python']}; `IMMUNE_AGING_THREADS={m['threads']}`. Packages: "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + ".",
        f"`uptime` before the bench: `{result['uptime_before']}`; after: "
        f"`{result['uptime_after']}`. The machine is shared (2 cores, several users): the "
        "load average is listed with every run, and runs alternate between executors.",
        "",
        "| stage | executor | round | wall s | jobs | map s | map share | Dask start s |"
        " CPU s | peak MiB | load before/after | same bytes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in result["runs"]:
        start = "" if r["cluster_start_s"] is None else f"{r['cluster_start_s']:.1f}"
        share = "" if r["map_share"] is None else f"{r['map_share']:.0%}"
        lines.append(
            f"| {r['stage']} | {r['executor']} | {r['round']} | {r['wall_s']:.1f} |"
            f" {r['map_jobs']} | {r['map_s'] if r['map_s'] is not None else ''} | {share} |"
            f" {start} | {r['cpu_s']} | {r['peak_mb']:.0f} |"
            f" {r['load_1min_before_after'][0]} / {r['load_1min_before_after'][1]} |"
            f" {'yes' if r['same_bytes'] else 'NO'} |"
        )
    lines += [
        "",
        "Per stage, medians over the rounds (overhead: Dask's wall time minus the local"
        " executor's):",
        "",
        "| stage | executor | wall s | map s | map share | CPU s | overhead s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for stage, per in result["summary"].items():
        base = per.get("local processes", {}).get("wall_s")
        for executor, s in per.items():
            over = "" if base is None or executor == "local processes" else s["wall_s"] - base
            lines.append(
                f"| {stage} | {executor} | {s['wall_s']:.1f} | {s['map_s']} |"
                f" {s['map_share']:.0%} | {s['cpu_s']:.1f} |"
                f" {'' if over == '' else f'{over:+.1f}'} |"
            )
    lines += ["", *result.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Median wall, map and CPU seconds per stage and executor."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in runs:
        out.setdefault(r["stage"], {}).setdefault(r["executor"], {})
    for stage, per in out.items():
        for executor in per:
            mine = [r for r in runs if r["stage"] == stage and r["executor"] == executor]
            wall = statistics.median(r["wall_s"] for r in mine)
            maps = [r["map_s"] for r in mine if r["map_s"] is not None]
            per[executor] = {
                "wall_s": round(wall, 1),
                "map_s": statistics.median(maps) if maps else 0.0,
                "map_share": (statistics.median(maps) / wall) if maps else 0.0,
                "cpu_s": statistics.median(r["cpu_s"] for r in mine),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the bench; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, default=PROJECT, help="scratch project with inputs")
    p.add_argument("--stages", nargs="+", default=["qc", "de"])
    p.add_argument(
        "--schedulers", nargs="+", default=["", "local:2"], help="'' for local processes"
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--note", action="append", default=[], help="a line added to the report")
    p.add_argument(
        "--append", action="store_true", help="add these rounds to the runs in executor.json"
    )
    args = p.parse_args(argv)
    args.project = args.project.resolve()  # the stages run inside it: no relative paths
    stages = yaml.safe_load((args.project / "dvc.yaml").read_text())["stages"]
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    runs: list[dict[str, Any]] = []
    first: dict[str, str] = {}
    earlier = args.results / "executor.json"
    if args.append and earlier.is_file():
        old = json.loads(earlier.read_text())
        runs, uptime = old["runs"], old["uptime_before"]
        args.note = [*old.get("notes", []), *args.note]
        for r in runs:
            first.setdefault(r["stage"], r["outputs_sha256"])
    done = max((r["round"] for r in runs), default=0)
    for round_ in range(done + 1, done + args.rounds + 1):
        for stage in args.stages:
            for scheduler in args.schedulers:
                r = run_stage(args.project, stage, stages[stage], scheduler)
                first.setdefault(stage, r["outputs_sha256"])
                r.update(round=round_, same_bytes=r["outputs_sha256"] == first[stage])
                runs.append(r)
                print(
                    f"{stage} on {r['executor']} (round {round_}): {r['wall_s']:.1f} s, map "
                    f"{r['map_s']} s, start {r['cluster_start_s']}, load "
                    f"{r['load_1min_before_after']}, same bytes {r['same_bytes']}",
                    flush=True,
                )
    summary_json = args.project / "metrics" / "filter.json"
    filt = json.loads(summary_json.read_text()) if summary_json.is_file() else {}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "project": str(args.project.relative_to(ROOT) if args.project.is_relative_to(ROOT)
                       else args.project),
        "cells": filt.get("cells_out", "?"),
        "donors": filt.get("donors_out", "?"),
        "machine": machine(),
        "uptime_before": uptime,
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "runs": runs,
        "summary": summarise(runs),
        "notes": args.note,
    }  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "executor.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / "executor.md").write_text(markdown(result))
    print(f"-> {args.results / 'executor.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
