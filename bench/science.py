"""Power and calibration of the pipeline on the realistic simulation preset.

Usage::

    python bench/science.py run n981 --seed 1            # one scenario, one seed
    python bench/science.py run n981 --seed 1 --variant pool
    python bench/science.py study                        # the committed study (hours)
    python bench/science.py summarise                    # results -> bench/results/

``make science`` runs ``study`` then ``summarise``.

Each run simulates a dataset with ``data.synthetic.preset: realistic`` (the settings
of ``bench/presets/realistic.yaml`` merged over ``params.yaml``, then the scenario's
sizes and seed) and runs the stages the question needs, in order, with their
``dvc.yaml`` command lines, in ``bench/scratch/science/<scenario>/seed<k>/<variant>``
(git-ignored): data, filter, qc, pseudobulk, genesets, de, gsea, ora, predict.
Embedding and clustering are skipped (they do not feed the age analyses). The
scores of :mod:`immune_aging.analysis.evaluate` and a few more (FDR per cell type,
gene-set recall by kind, predict R^2 per cell type) go to ``scores.json`` there.

Variants of a seed reuse its base run's upstream outputs:

``base``
    ``de.covariates: [sex]``, censored ages assigned 80 (the lower bound).
``pool``
    ``de.covariates: [sex, pool]``.
``censor_drop`` / ``censor_85``
    ``pseudobulk.censored_age: drop``, or ``assign`` with ``age_80_and_over: 85``.
``permuted``
    The base pseudobulk with ages permuted across donors (a null with every
    other structure kept), DE only.
``null``
    The null twin: the same design with ``age_effect_scale: 0`` (no change of
    expression with age; the composition still changes).
``permuted_pool`` / ``null_pool``
    DE alone on the ``permuted`` or ``null`` run's pseudobulk with
    ``de.covariates: [sex, pool]``: the nulls of the ``pool`` variant.
``empirical`` / ``pool_empirical``
    DE (then GSEA, ORA) on the base run's pseudobulk with ``de.null_distribution:
    empirical``, covariates ``[sex]`` or ``[sex, pool]``.
``null_empirical`` / ``null_pool_empirical``
    Their nulls: DE alone on the ``null`` run's pseudobulk.
``seed_filter``
    The filter stage alone with the seed's rules (``filter.prevalence:
    cell_types``): which cell types and donors its rules remove, and at what ages.

``summarise`` aggregates every ``scores.json`` into ``bench/results/science.json``,
``science.md`` and ``science.png``. Threads: ``IMMUNE_AGING_THREADS`` (default 2 here);
seeds run one after another.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "bench" / "scratch" / "science"
RESULTS = ROOT / "bench" / "results"
PRESET = ROOT / "bench" / "presets" / "realistic.yaml"
#: The code the stages run (a frozen copy may be named while the tree is edited).
SRC = Path(os.environ.get("SCIENCE_SRC", ROOT / "src")).resolve()

#: Scenario sizes: donors and mean droplets per donor. OneK1K has ~1,270 cells per
#: donor; 981 donors run here with 50 each (minutes, not hours, on two cores).
SCENARIOS = {
    "smoke": {"n_donors": 60, "cells_per_donor": 120},
    "n48": {"n_donors": 48, "cells_per_donor": 520},
    "n200": {"n_donors": 200, "cells_per_donor": 250},
    "n981": {"n_donors": 981, "cells_per_donor": 50},
}
VARIANTS = (
    "base",
    "pool",
    "censor_drop",
    "censor_85",
    "permuted",
    "null",
    "permuted_pool",
    "null_pool",
    "seed_filter",
    "empirical",
    "pool_empirical",
    "null_empirical",
    "null_pool_empirical",
)
#: Variants that are nulls (nothing planted in expression), and the pool-adjusted ones.
NULL_VARIANTS = (
    "permuted",
    "null",
    "permuted_pool",
    "null_pool",
    "null_empirical",
    "null_pool_empirical",
)
#: The DE settings with their null twins: covariates [sex] or [sex, pool], theoretical
#: or empirical null.
_DE_GRID = (
    "base",
    "null",
    "pool",
    "null_pool",
    "empirical",
    "null_empirical",
    "pool_empirical",
    "null_pool_empirical",
)
#: The study: (scenario, seeds, variants).
STUDY = (
    ("n981", (1, 2, 3, 4, 5), ("base", "permuted", "null")),
    ("n981", (1, 2), ("pool", "censor_drop", "censor_85")),
    ("n981", (3, 4, 5), ("pool",)),
    ("n981", (1, 2, 3, 4, 5), ("null_pool",)),
    ("n981", (1, 2, 3, 4, 5), ("pool_empirical", "null_pool_empirical")),
    ("n981", (1, 2, 3, 4, 5), ("empirical", "null_empirical")),
    ("n200", (1, 2, 3, 4, 5), _DE_GRID),
    ("n200", (1, 2, 3), ("censor_drop", "censor_85", "seed_filter")),
    ("n48", (1, 2, 3, 4, 5), _DE_GRID),
    ("n48", (1, 2, 3), ("seed_filter",)),
)
#: Stages run by a variant, and the upstream folders it takes from the base run.
STAGES = {
    "base": ("data", "filter", "qc", "pseudobulk", "genesets", "de", "gsea", "ora", "predict"),
    "null": ("data", "filter", "qc", "pseudobulk", "genesets", "de", "gsea", "ora", "predict"),
    "pool": ("de", "gsea", "ora"),
    "censor_drop": ("pseudobulk", "de", "gsea", "ora", "predict"),
    "censor_85": ("pseudobulk", "de", "gsea", "ora", "predict"),
    "permuted": ("de",),
    "permuted_pool": ("de",),
    "null_pool": ("de",),
    "seed_filter": ("filter",),
    "empirical": ("de", "gsea", "ora"),
    "pool_empirical": ("de", "gsea", "ora"),
    "null_empirical": ("de",),
    "null_pool_empirical": ("de",),
}
#: The run whose outputs a variant reuses (``base`` unless named here).
PARENT = {
    "permuted_pool": "permuted",
    "null_pool": "null",
    "null_empirical": "null",
    "null_pool_empirical": "null",
}
#: The upstream outputs of a DE-only variant on a base or null run (its metrics own).
_UPSTREAM = (
    "data/raw",
    "data/filter",
    "data/qc",
    "data/pseudobulk",
    "data/genesets",
    "metrics/pseudobulk.json",
    "metrics/predict.json",
)
SHARED = {
    "pool": ("data/raw", "data/filter", "data/qc", "data/pseudobulk", "data/genesets", "metrics"),
    "censor_drop": ("data/raw", "data/filter", "data/qc", "data/genesets"),
    "censor_85": ("data/raw", "data/filter", "data/qc", "data/genesets"),
    "permuted": ("data/raw", "data/genesets"),
    "seed_filter": ("data/raw",),
    "permuted_pool": ("data/raw", "data/genesets", "data/pseudobulk"),
    "null_pool": ("data/raw", "data/genesets", "data/pseudobulk"),
    "empirical": _UPSTREAM,
    "pool_empirical": _UPSTREAM,
    "null_empirical": ("data/raw", "data/genesets", "data/pseudobulk"),
    "null_pool_empirical": ("data/raw", "data/genesets", "data/pseudobulk"),
}
ALPHA = 0.05


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``over`` merged in, recursively."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def params_for(scenario: str, seed: int, variant: str) -> dict[str, Any]:
    """The params of one run: params.yaml, the preset, the scenario, the variant."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = deep_merge(params, yaml.safe_load(PRESET.read_text()))
    sizes = {**SCENARIOS[scenario], "seed": seed}
    params = deep_merge(params, {"data": {"synthetic": sizes}})
    over: dict[str, Any] = {
        "pool": {"de": {"covariates": ["sex", "pool"]}},
        "permuted_pool": {"de": {"covariates": ["sex", "pool"]}},
        "null_pool": {
            "de": {"covariates": ["sex", "pool"]},
            "data": {"synthetic": {"age_effect_scale": 0.0}},
        },
        "censor_drop": {"pseudobulk": {"censored_age": "drop"}},
        "censor_85": {"pseudobulk": {"censored_age": "assign", "age_80_and_over": 85.0}},
        "null": {"data": {"synthetic": {"age_effect_scale": 0.0}}},
        "seed_filter": {"filter": {"prevalence": "cell_types"}},
        "empirical": {"de": {"null_distribution": "empirical"}},
        "pool_empirical": {
            "de": {"covariates": ["sex", "pool"], "null_distribution": "empirical"}
        },
        "null_empirical": {
            "de": {"null_distribution": "empirical"},
            "data": {"synthetic": {"age_effect_scale": 0.0}},
        },
        "null_pool_empirical": {
            "de": {"covariates": ["sex", "pool"], "null_distribution": "empirical"},
            "data": {"synthetic": {"age_effect_scale": 0.0}},
        },
    }.get(variant, {})
    return deep_merge(params, over)


def folder_of(scenario: str, seed: int, variant: str) -> Path:
    """Where a run lives."""
    return SCRATCH / scenario / f"seed{seed}" / variant


def run_stages(folder: Path, stages: tuple[str, ...]) -> dict[str, float]:
    """Run stages with their dvc.yaml command lines in ``folder``; return seconds each."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    env = dict(os.environ)
    env.setdefault("IMMUNE_AGING_THREADS", "2")
    env["IMMUNE_AGING_LOG_DIR"] = str(folder / "logs")
    env["PYTHONPATH"] = str(SRC)
    (folder / "data" / "external").mkdir(parents=True, exist_ok=True)
    seconds = {}
    for stage in stages:
        argv = shlex.split(spec[stage]["cmd"])
        argv[0] = sys.executable
        start = time.perf_counter()
        with open(folder / f"{stage}.log", "w") as log:
            code = subprocess.call(argv, cwd=folder, env=env, stdout=log, stderr=log)
        seconds[stage] = round(time.perf_counter() - start, 1)
        print(f"  {folder.relative_to(SCRATCH)}: {stage} {seconds[stage]:.0f} s", flush=True)
        if code:
            tail = (folder / f"{stage}.log").read_text()[-2000:]
            raise SystemExit(f"{stage} failed in {folder} (exit {code}):\n{tail}")
    return seconds


def link_shared(folder: Path, base: Path, paths: tuple[str, ...]) -> None:
    """Make ``folder`` see the base run's upstream outputs (symbolic links)."""
    for rel in paths:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            continue
        target.symlink_to(base / rel, target_is_directory=(base / rel).is_dir())


def permute_ages(base: Path, folder: Path, seed: int) -> None:
    """Write the base pseudobulk with donor ages permuted across donors."""
    sys.path.insert(0, str(SRC))
    from immune_aging import io

    pb = io.read_h5ad(base / "data/pseudobulk/pseudobulk.h5ad")
    donors = pb.obs[["donor_id", "age"]].drop_duplicates("donor_id").set_index("donor_id")
    rng = np.random.default_rng([seed, 99])
    shuffled = pd.Series(rng.permutation(donors["age"].to_numpy()), index=donors.index)
    pb.obs["age"] = shuffled.loc[pb.obs["donor_id"].astype(str)].to_numpy()
    out = folder / "data/pseudobulk/pseudobulk.h5ad"
    out.parent.mkdir(parents=True, exist_ok=True)
    io.write_h5ad(pb, out)


def run(scenario: str, seed: int, variant: str, *, force: bool = False) -> dict[str, Any]:
    """Run one variant of one seed of one scenario (its base first when needed)."""
    folder = folder_of(scenario, seed, variant)
    done = folder / "scores.json"
    if done.exists() and not force:
        return json.loads(done.read_text())
    parent = PARENT.get(variant, "base")
    base = folder_of(scenario, seed, parent)
    if variant in SHARED and not (base / "scores.json").exists():
        run(scenario, seed, parent)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    params = params_for(scenario, seed, variant)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if variant in SHARED:
        link_shared(folder, base, SHARED[variant])
    if variant == "permuted":
        permute_ages(base, folder, seed)
    seconds = run_stages(folder, STAGES[variant])
    scores = score(folder, params)
    scores |= {"scenario": scenario, "seed": seed, "variant": variant, "seconds": seconds}
    done.write_text(json.dumps(scores, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return scores


# --------------------------------------------------------------------------- scores


def _finite(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def score(folder: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Score one run against its truth (the evaluate scores and a few more)."""
    sys.path.insert(0, str(SRC))
    from immune_aging import io
    from immune_aging.analysis import evaluate

    if STAGES.get(folder.name) == ("filter",):
        metrics = json.loads((folder / "metrics/filter.json").read_text())
        keys = ("cell_types_kept", "ages_removed", "warnings", "donors_in", "donors_out")
        return _clean({k: metrics.get(k) for k in keys})
    truth = json.loads((folder / "data/raw/truth.json").read_text())
    de = io.read_parquet(folder / "data/de/results.parquet")
    gsea_path, ora_path = folder / "data/gsea/results.parquet", folder / "data/ora/results.parquet"
    gsea = io.read_parquet(gsea_path) if gsea_path.exists() else None
    ora = io.read_parquet(ora_path) if ora_path.exists() else None
    predict_path = folder / "metrics/predict.json"
    predict = json.loads(predict_path.read_text()) if predict_path.exists() else {}
    if STAGES.get(folder.name) == ("de",):  # permuted: a null, nothing is planted
        truth = {**truth, **evaluate.NO_TRUTH, "cell_types": truth["cell_types"]}
        truth["log2fc_per_decade_by_cell_type"] = {}
        truth["null_cell_types"] = list(truth["cell_types"])
        truth["decoy_sets"] = []
    empty_sets = pd.DataFrame(
        {c: pd.Series([], dtype=object) for c in ("cell_type", "term", "direction")}
        | {c: pd.Series([], dtype=float) for c in ("nes", "fdr", "padj")}
    )
    out: dict[str, Any] = {}
    if any(k in truth for k in ("gene_sets",)):
        cells = pd.DataFrame({"predicted_doublet": pd.Series([], dtype=bool)})
        clusters = pd.DataFrame({"leiden": [], "cell_type": []})
        out = evaluate.evaluate(
            truth,
            de_results=de,
            gsea_results=gsea if gsea is not None else empty_sets,
            ora_results=ora if ora is not None else empty_sets,
            predict_metrics=predict,
            clusters=clusters,
            cells=cells,
            alpha=ALPHA,
        )
        for key in ("cluster.ari", "cluster.purity", "qc.doublet_recall", "qc.doublet_precision"):
            out.pop(key, None)
    effects = evaluate.planted_effects(truth)
    sig = de["padj"].to_numpy(dtype=float) < ALPHA
    per_type = {}
    for ct, rows in de.groupby("cell_type", sort=True):
        s = rows["padj"].to_numpy(dtype=float) < ALPHA
        signs = np.sign(rows["log2FoldChange"].to_numpy(dtype=float))
        planted = np.array(
            [np.sign(effects.get((ct, g), 0.0)) for g in rows["gene_id"].astype(str)]
        )
        false = s & (planted != signs)
        n_planted = sum(1 for k in effects if k[0] == ct)
        per_type[str(ct)] = {
            "tested": len(rows),
            "discoveries": int(s.sum()),
            "false": int(false.sum()),
            "fdp": (float(false.sum() / s.sum()) if s.sum() else 0.0),
            "planted": n_planted,
            "null_type": n_planted == 0,
        }
    out["per_cell_type"] = per_type
    out["de.false_discoveries"] = int(sum(v["false"] for v in per_type.values()))
    out["de.fdp"] = out["de.false_discoveries"] / max(int(sig.sum()), 1)
    out["recall_by_effect"] = evaluate.recall_by_effect(de, truth, alpha=ALPHA).to_dict("records")
    if gsea is not None and truth.get("gene_sets"):
        out["gsea_by_set"] = _gsea_by_set(gsea, de, truth, set(per_type), effects)
    out["predict"] = {
        ct: {k: _finite(m.get(k)) for k in ("r2_mean", "baseline_r2_mean", "n_donors")}
        for ct, m in predict.items()
    }
    pb_metrics = folder / "metrics/pseudobulk.json"
    if pb_metrics.exists():
        pb = json.loads(pb_metrics.read_text())
        out["pseudobulk"] = {
            k: pb.get(k) for k in ("samples", "donors", "samples_per_cell_type", "censored_age")
        }
    out["params"] = {
        "data.synthetic": params["data"]["synthetic"],
        "de.covariates": params["de"]["covariates"],
        "pseudobulk.censored_age": params["pseudobulk"]["censored_age"],
        "pseudobulk.age_80_and_over": params["pseudobulk"]["age_80_and_over"],
    }
    return _clean(out)


def _clean(value: Any) -> Any:
    """Plain JSON values: numpy scalars as Python ones, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _finite(value)
    return value


def _gsea_by_set(
    gsea: pd.DataFrame,
    de: pd.DataFrame,
    truth: dict[str, Any],
    tested: set[str],
    effects: dict[tuple[str, str], float],
) -> list[dict[str, Any]]:
    """Per planted (set, cell type): its genes' mean planted effect and whether GSEA found it."""
    import re

    gene_id = dict(zip(de["gene"].astype(str), de["gene_id"].astype(str), strict=False))
    rows = []
    for name, info in truth["gene_sets"].items():
        sign = 1.0 if info["direction"] == "up" else -1.0
        ids = [gene_id[g] for g in info["genes"] if g in gene_id]
        for ct in info["cell_types"]:
            if ct not in tested:
                continue
            hit = gsea[
                (gsea["cell_type"].astype(str) == ct)
                & gsea["term"].astype(str).str.fullmatch(rf"(.*:)?{re.escape(name)}")
            ]
            found = bool(
                ((hit["fdr"].to_numpy(float) < ALPHA) & (np.sign(hit["nes"]) == sign)).any()
            )
            mean = float(np.mean([effects.get((ct, g), 0.0) for g in ids])) if ids else 0.0
            rows.append(
                {
                    "set": name,
                    "kind": "program" if name.startswith("SIM_PROGRAM_AGE") else "mixed",
                    "cell_type": ct,
                    "found": found,
                    "n_genes": len(info["genes"]),
                    "mean_effect": round(mean, 5),
                }
            )
    return rows


def load_scores(scratch: Path) -> list[dict[str, Any]]:
    """Every ``scores.json`` under ``scratch``, sorted by scenario, seed and variant."""
    runs = [json.loads(f.read_text()) for f in sorted(scratch.glob("*/seed*/*/scores.json"))]
    return [r for r in runs if r.get("scenario") in SCENARIOS and r["scenario"] != "smoke"]


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95 % interval of a proportion k / n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _pooled_recall(runs: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in runs:
        for b in r["recall_by_effect"]:
            rows.append({"bin": b["bin"], "planted": b["planted"], "found": b["found"]})
    if not rows:
        return pd.DataFrame(columns=["bin", "planted", "found", "recall"])
    table = pd.DataFrame(rows).groupby("bin", sort=False)[["planted", "found"]].sum()
    table["recall"] = table["found"] / table["planted"].where(table["planted"] > 0)
    return table.reset_index()


def _null_calls(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """(run, cell type) trials of a null and how many had any discovery."""
    trials = [
        (r["seed"], ct, v["discoveries"]) for r in runs for ct, v in r["per_cell_type"].items()
    ]
    k = sum(d > 0 for *_, d in trials)
    low, high = _wilson(k, len(trials))
    return {
        "runs": len(runs),
        "trials": len(trials),
        "with_discovery": k,
        "rate": k / len(trials) if trials else None,
        "ci95": [low, high],
        "discoveries": sum(d for *_, d in trials),
    }


def _mean_sd(values: list[float]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {
        "n": len(v),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "values": [float(x) for x in v],
    }


def summarise(scratch: Path, results: Path, *, machine: str) -> dict[str, Any]:
    """Aggregate the runs into ``science.json``, ``science.md`` and ``science.png``."""
    runs = load_scores(scratch)
    by = {}
    for r in runs:
        by.setdefault((r["scenario"], r["variant"]), []).append(r)
    summary: dict[str, Any] = {"alpha": ALPHA, "machine": machine, "scenarios": {}}
    order = list(SCENARIOS)
    for (scenario, variant), rs in sorted(
        by.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])
    ):
        entry: dict[str, Any] = {
            "seeds": [r["seed"] for r in rs],
            "sizes": SCENARIOS[scenario],
            "seconds_per_run": _mean_sd([sum(r["seconds"].values()) for r in rs])["mean"],
        }
        if variant == "seed_filter":
            entry["filter"] = [
                {"seed": r["seed"], "ages_removed": r["ages_removed"], "warnings": r["warnings"]}
                for r in rs
            ]
        elif variant in NULL_VARIANTS:
            entry["null"] = _null_calls(rs)
            if variant == "null":
                entry["decoys"] = {
                    f"{m}.decoy_rate": _mean_sd([r.get(f"{m}.decoy_rate") for r in rs])["mean"]
                    for m in ("gsea", "ora")
                }
                entry["predict_r2"] = _predict_summary(rs)
        else:
            entry["fdr"] = _mean_sd([r["de.fdr"] for r in rs])
            entry["discoveries"] = _mean_sd([r["de.discoveries"] for r in rs])
            entry["recall"] = _mean_sd([r["de.recall"] for r in rs])
            entry["effect_scale"] = _mean_sd([r["de.effect_scale"] for r in rs])
            entry["recall_by_effect"] = _pooled_recall(rs).to_dict("records")
            entry["null_cell_type_discoveries"] = [r["de.null_discoveries"] for r in rs]
            entry["decoys"] = {
                key: _mean_sd([r.get(key) for r in rs])["mean"]
                for key in ("gsea.decoy_rate", "ora.decoy_rate")
            }
            entry["decoy_rate_by_kind"] = {
                m: {
                    kind: _mean_sd([r[f"{m}.decoy_rate_by_kind"].get(kind) for r in rs])["mean"]
                    for kind in sorted({k for r in rs for k in r[f"{m}.decoy_rate_by_kind"]})
                }
                for m in ("gsea", "ora")
            }
            sets = [row for r in rs for row in r.get("gsea_by_set", [])]
            entry["gsea"] = {
                kind: {
                    "found": sum(x["found"] for x in sets if x["kind"] == kind),
                    "total": sum(1 for x in sets if x["kind"] == kind),
                }
                for kind in ("mixed", "program")
            }
            entry["predict_r2"] = _predict_summary(rs)
        summary["scenarios"].setdefault(scenario, {})[variant] = entry
    results.mkdir(parents=True, exist_ok=True)
    (results / "science.json").write_text(
        json.dumps(summary, indent=1, sort_keys=True, default=_finite) + "\n"
    )
    (results / "science.md").write_text(render_markdown(summary))
    plot(summary, results / "science.png")
    return summary


def _predict_summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
    aged, null = [], []
    for r in rs:
        nulls = {ct for ct, v in r["per_cell_type"].items() if v["null_type"]}
        for ct, m in r["predict"].items():
            if m["r2_mean"] is None:
                continue
            diff = m["r2_mean"] - m["baseline_r2_mean"]
            (null if ct in nulls else aged).append(diff)
    return {
        "aged_minus_baseline": _mean_sd(aged)["mean"],
        "null_minus_baseline": _mean_sd(null)["mean"],
        "aged_r2": _mean_sd(
            [
                m["r2_mean"]
                for r in rs
                for ct, m in r["predict"].items()
                if m["r2_mean"] is not None and not r["per_cell_type"].get(ct, {}).get("null_type")
            ]
        )["mean"],
    }


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def render_markdown(summary: dict[str, Any]) -> str:
    """The study as a Markdown page."""
    sc = summary["scenarios"]
    lines = [
        "# Power and calibration on the realistic preset",
        "",
        "Written by `python bench/science.py summarise` (`make science` runs the study first);",
        "every number comes from `bench/results/science.json`. Nominal alpha "
        f"{summary['alpha']}. Machine: {summary['machine']}.",
        "",
        "Settings: `bench/presets/realistic.yaml` over `params.yaml` (realistic preset, 7 cell",
        "types of which NK cells carry no age effect, 2,000 genes, 2 % doublets, Scrublet per",
        "pool, `filter.prevalence: samples`, `pseudobulk.min_cells: 5`), then per scenario:",
        "",
        "| scenario | donors | cells per donor (mean) |",
        "| --- | --- | --- |",
    ]
    for name, sizes in SCENARIOS.items():
        if name in sc:
            lines.append(f"| {name} | {sizes['n_donors']} | {sizes['cells_per_donor']} |")
    lines += ["", "## Calibration: observed FDR of DE at nominal alpha", ""]
    lines += [
        "| scenario | variant | seeds | FDR mean | FDR sd | FDR min-max | discoveries (mean) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario, variants in sc.items():
        for variant, e in variants.items():
            if "fdr" in e:
                f = e["fdr"]
                lines.append(
                    f"| {scenario} | {variant} | {len(e['seeds'])} | {_fmt(f['mean'])} | "
                    f"{_fmt(f['sd'])} | {_fmt(f['min'])}-{_fmt(f['max'])} | "
                    f"{_fmt(e['discoveries']['mean'], 0)} |"
                )
    lines += [
        "",
        "## Calibration: null runs",
        "",
        "A trial is one (run, tested cell type); under the null the chance that BH at alpha",
        "calls anything in a trial is at most alpha. `permuted`: the base pseudobulk with",
        "ages permuted across donors; `null`: the same design simulated with",
        "`age_effect_scale: 0`; `*_pool`: the same with `de.covariates: [sex, pool]`;",
        "`*_empirical`: the same with `de.null_distribution: empirical`.",
        "",
        "| scenario | variant | runs | trials | trials with a discovery | rate (95 % CI) |"
        " discoveries |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario, variants in sc.items():
        for variant, e in variants.items():
            if "null" in e:
                n = e["null"]
                lines.append(
                    f"| {scenario} | {variant} | {n['runs']} | {n['trials']} | "
                    f"{n['with_discovery']} | {_fmt(n['rate'])} ({_fmt(n['ci95'][0])}-"
                    f"{_fmt(n['ci95'][1])}) | {n['discoveries']} |"
                )
    lines += ["", "## Power: DE recall by planted |log2 fold change per decade|", ""]
    bins = [b for b in ("<0.05", "0.05-0.1", "0.1-0.2", ">=0.2")]
    lines += [
        "Pooled over seeds: found / planted (recall). Planted pairs in tested cell types only.",
        "",
        "| scenario | variant | " + " | ".join(bins) + " | overall recall (mean) |",
        "| --- | --- | " + " | ".join("---" for _ in bins) + " | --- |",
    ]
    for scenario, variants in sc.items():
        for variant, e in variants.items():
            if "recall_by_effect" in e:
                cells = {b["bin"]: b for b in e["recall_by_effect"]}
                row = [
                    f"{cells[b]['found']}/{cells[b]['planted']} ({_fmt(cells[b]['recall'], 2)})"
                    if b in cells
                    else "-"
                    for b in bins
                ]
                lines.append(
                    f"| {scenario} | {variant} | " + " | ".join(row) + f" | "
                    f"{_fmt(e['recall']['mean'])} |"
                )
    lines += [
        "",
        "## Power and specificity: gene sets and age prediction",
        "",
        "GSEA: planted (set, cell type) pairs found at FDR < alpha with the planted sign;",
        "`mixed` sets hold planted age genes among genes without effect, `program` sets are",
        "gene programs drifting with age. Decoys: (decoy, tested cell type) pairs called at",
        "alpha in either direction; `random` decoys are random expressed genes (overlapping",
        "planted ones at their background rate), `program` decoys co-varying modules without",
        "age effect. Predict: R^2 minus the sex-only baseline's, mean over cell types.",
        "",
        "| scenario | variant | GSEA mixed | GSEA program | GSEA decoys (random / program)"
        " | ORA decoys (random / program) | predict R^2 - baseline: aged | ... null type |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario, variants in sc.items():
        for variant, e in variants.items():
            if "gsea" in e:
                g = e["gsea"]
                kinds = e["decoy_rate_by_kind"]
                lines.append(
                    f"| {scenario} | {variant} | {g['mixed']['found']}/{g['mixed']['total']} | "
                    f"{g['program']['found']}/{g['program']['total']} | "
                    f"{_fmt(kinds['gsea'].get('random'))} / "
                    f"{_fmt(kinds['gsea'].get('program'))} | "
                    f"{_fmt(kinds['ora'].get('random'))} / {_fmt(kinds['ora'].get('program'))} | "
                    f"{_fmt(e['predict_r2']['aged_minus_baseline'])} | "
                    f"{_fmt(e['predict_r2']['null_minus_baseline'])} |"
                )
            elif variant == "null":
                d = e["decoys"]
                lines.append(
                    f"| {scenario} | null | - | - | {_fmt(d['gsea.decoy_rate'])} (all sets) | "
                    f"{_fmt(d['ora.decoy_rate'])} (all sets) | "
                    f"{_fmt(e['predict_r2']['aged_minus_baseline'])} | "
                    f"{_fmt(e['predict_r2']['null_minus_baseline'])} |"
                )
    lines += [
        "",
        "## Covariates and the censored age group",
        "",
        "`effect scale`: slope through the origin of the estimated log2 fold change per",
        "decade on the planted one, over every planted pair tested (1 = unbiased).",
        "",
        "| scenario | variant | seeds | FDR mean | recall mean | effect scale mean |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for scenario, variants in sc.items():
        for variant in ("base", "pool", "empirical", "pool_empirical", "censor_drop", "censor_85"):
            e = variants.get(variant)
            if e and "fdr" in e:
                lines.append(
                    f"| {scenario} | {variant} | {len(e['seeds'])} | {_fmt(e['fdr']['mean'])} | "
                    f"{_fmt(e['recall']['mean'])} | {_fmt(e['effect_scale']['mean'])} |"
                )
    lines += [
        "",
        "## The filter's rules remove by age",
        "",
        "The seed's filter (`filter.prevalence: cell_types`) on the same data: rule 2 drops",
        "a cell type lacking 10 cells in 5 % of donors, rule 3 the donors lacking a kept",
        "type. Mean age of the donors below the minimum (rule 2) or removed (rule 3) against",
        "the rest, and the Mann-Whitney p-value; the bench's own runs use",
        "`filter.prevalence: samples`.",
        "",
        "| scenario | seed | rule | what | donors | mean age | rest | p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario, variants in sc.items():
        for item in variants.get("seed_filter", {}).get("filter", []):
            ages = item["ages_removed"]
            for ct, e in ages.get("cell_type_prevalence", {}).items():
                lines.append(
                    f"| {scenario} | {item['seed']} | 2 | {ct} | {e['donors']} | "
                    f"{_fmt(e['mean_age'], 1)} | {_fmt(e['mean_age_rest'], 1)} | "
                    f"{_fmt(e['p_value'], 4)} |"
                )
            e = ages.get("donor_completeness")
            if e:
                lines.append(
                    f"| {scenario} | {item['seed']} | 3 | donors | {e['donors']} | "
                    f"{_fmt(e['mean_age'], 1)} | {_fmt(e['mean_age_rest'], 1)} | "
                    f"{_fmt(e['p_value'], 4)} |"
                )
    lines.append("")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Recall by effect size per scenario, FDR per seed and null-trial rates."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 5))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    sc = summary["scenarios"]
    for i, (scenario, variants) in enumerate(sc.items()):
        for variant, style in (("base", "-"), ("pool_empirical", "--")):
            e = variants.get(variant)
            if not e:
                continue
            table = pd.DataFrame(e["recall_by_effect"])
            donors = SCENARIOS[scenario]["n_donors"]
            ax1.plot(
                table["bin"],
                table["recall"],
                marker="o",
                linestyle=style,
                color=f"C{i}",
                label=f"{donors} donors, {variant} ({len(e['seeds'])} seeds)",
            )
    ax1.set_xlabel("planted |log2 FC per decade|")
    ax1.set_ylabel("DE recall (padj < alpha, right sign)")
    ax1.set_ylim(0, 1)
    ax1.legend(fontsize=7)
    ax1.set_title("Power by effect size (dashed: pool covariate, empirical null)", fontsize=9)
    labels, values = [], []
    for scenario, variants in sc.items():
        for variant in ("base", "pool", "empirical", "pool_empirical", "censor_drop", "censor_85"):
            e = variants.get(variant)
            if e and "fdr" in e:
                for v in e["fdr"].get("values", []):
                    labels.append(f"{scenario} {variant}")
                    values.append(v)
    if values:
        names = list(dict.fromkeys(labels))
        xs = [names.index(lbl) for lbl in labels]
        ax2.scatter(xs, values, color="tab:blue")
        ax2.set_xticks(range(len(names)), names, fontsize=6, rotation=45, ha="right")
    ax2.axhline(summary["alpha"], color="tab:red", linestyle="--", label="nominal alpha")
    ax2.set_ylabel("observed FDR (per seed)")
    ax2.legend(fontsize=8)
    ax2.set_title("Calibration: planted runs")
    names, rates, lows, highs = [], [], [], []
    for scenario, variants in sc.items():
        for variant in NULL_VARIANTS:
            e = variants.get(variant)
            if e and "null" in e and e["null"]["trials"]:
                names.append(f"{scenario} {variant}")
                rates.append(e["null"]["rate"])
                lows.append(e["null"]["rate"] - e["null"]["ci95"][0])
                highs.append(e["null"]["ci95"][1] - e["null"]["rate"])
    if names:
        ax3.errorbar(range(len(names)), rates, yerr=[lows, highs], fmt="o")
        ax3.set_xticks(range(len(names)), names, fontsize=6, rotation=45, ha="right")
    ax3.axhline(summary["alpha"], color="tab:red", linestyle="--")
    ax3.set_ylabel("share of (run, cell type) with any discovery")
    ax3.set_title("Calibration: null runs (95 % CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def study(*, force: bool = False) -> None:
    """Run every (scenario, seed, variant) of :data:`STUDY`, seeds one after another."""
    for scenario, seeds, variants in STUDY:
        for seed in seeds:
            for variant in variants:
                start = time.perf_counter()
                run(scenario, seed, variant, force=force)
                print(
                    f"{scenario} seed {seed} {variant}: {time.perf_counter() - start:.0f} s",
                    flush=True,
                )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="one scenario, seed and variant")
    r.add_argument("scenario", choices=sorted(SCENARIOS))
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--variant", choices=VARIANTS, default="base")
    r.add_argument("--force", action="store_true", help="rerun even if scores exist")
    s = sub.add_parser("study", help="the whole study (hours)")
    s.add_argument("--force", action="store_true")
    sub.add_parser("summarise", help="aggregate scores into bench/results/")
    args = p.parse_args()
    if args.command == "run":
        scores = run(args.scenario, args.seed, args.variant, force=args.force)
        keys = ("de.recall", "de.fdr", "de.discoveries", "de.null_discoveries", "seconds")
        print(json.dumps({k: scores.get(k) for k in keys}, indent=1))
    elif args.command == "study":
        study(force=args.force)
    else:
        summarise(SCRATCH, RESULTS, machine=platform.platform())
    return 0


if __name__ == "__main__":
    sys.exit(main())
