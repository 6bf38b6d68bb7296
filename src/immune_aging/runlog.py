"""The run log: one JSON line per stage execution under ``logs/``.

``logs/`` is not a DVC output (it is git-ignored): it records what ran, when, for
how long and with how much memory. ``make summary`` (``python -m
immune_aging.runlog``) prints an execution summary: every stage of ``dvc.yaml``
with the duration of its last run and whether it ran in the last ``dvc repro``
or was up to date.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

LOG_DIR_ENV = "IMMUNE_AGING_LOG_DIR"


def log_path() -> Path:
    """Return the run-log file (``$IMMUNE_AGING_LOG_DIR/runs.jsonl``, default ``logs/``).

    Returns
    -------
    Path
        The JSON-lines file.
    """
    return Path(os.environ.get(LOG_DIR_ENV, "logs")) / "runs.jsonl"


def append(
    stage: str,
    *,
    started: float,
    seconds: float,
    peak_mb: float,
    status: str,
    cpu_s: float | None = None,
) -> None:
    """Append one timing record; never fails the stage because of logging.

    Parameters
    ----------
    stage
        Stage name.
    started
        Start time, seconds since the epoch.
    seconds
        Wall-clock duration.
    peak_mb
        Peak resident memory in MiB.
    status
        ``ok``, ``input error`` or ``failed``.
    cpu_s
        CPU seconds (user + system, all threads and finished child processes).
    """
    record = {
        "stage": stage,
        "start": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "start_epoch": round(started, 3),
        "seconds": round(seconds, 2),
        "cpu_s": cpu_s,
        "peak_mb": peak_mb,
        "status": status,
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }
    path = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
    except OSError as exc:  # pragma: no cover - read-only checkout
        print(f"warning: cannot write run log {path}: {exc.strerror}", file=sys.stderr)


def read_records(path: Path | None = None) -> list[dict[str, Any]]:
    """Return every record of the run log, oldest first (empty when none).

    Parameters
    ----------
    path
        The log file (default :func:`log_path`).

    Returns
    -------
    list of dict
        The records.
    """
    path = path or log_path()
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    return out


def stage_order(dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """Return the stage names of ``dvc.yaml`` in file order.

    Parameters
    ----------
    dvc_yaml
        The pipeline file.

    Returns
    -------
    list of str
        Stage names.
    """
    import yaml

    if not dvc_yaml.is_file():
        return []
    return list((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}))


def summary(records: list[dict[str, Any]], stages: list[str]) -> str:
    """Format an execution summary of the last ``dvc repro``.

    A run is the set of records after the last gap of more than 10 minutes with
    no stage running, or after the last record of the first stage; a stage with
    no record in that run is shown as up to date with its last duration.

    Parameters
    ----------
    records
        Run-log records, oldest first.
    stages
        Stage names in pipeline order.

    Returns
    -------
    str
        The table.
    """
    last: dict[str, dict[str, Any]] = {}
    for rec in records:
        last[rec["stage"]] = rec
    # the latest repro: records whose start follows the end of the previous record closely
    run_start = None
    prev_end = None
    for rec in records:
        start = rec.get("start_epoch", 0.0)
        if prev_end is None or start - prev_end > 600:
            run_start = start
        prev_end = start + rec.get("seconds", 0.0)
    lines = [
        "=" * 64,
        "EXECUTION SUMMARY",
        "=" * 64,
    ]
    total = 0.0
    for i, name in enumerate(stages + sorted(set(last) - set(stages)), start=1):
        rec = last.get(name)
        if rec is None:
            lines.append(f"  - Step {i:>2}: {name:<12} {'':>9}  never run")
            continue
        ran = run_start is not None and rec.get("start_epoch", 0.0) >= run_start
        mark = "✓" if rec.get("status") == "ok" else "✗"
        state = "ran" if ran else "up to date"
        if rec.get("status") != "ok":
            state = rec.get("status", "failed")
        if ran:
            total += rec.get("seconds", 0.0)
        lines.append(
            f"  {mark} Step {i:>2}: {name:<12} {rec['seconds']:>8.1f}s  {state:<10}"
            f" peak {rec.get('peak_mb', 0):>7.0f} MiB"
        )
    lines += ["-" * 64, f"  Duration of the last run: {total:.1f} s", "-" * 64]
    return "\n".join(lines)


def main() -> int:
    """Print the execution summary of the last run.

    Returns
    -------
    int
        Exit status.
    """
    print(summary(read_records(), stage_order()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
