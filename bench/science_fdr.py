"""Why DE at 981 donors calls false discoveries: every one decomposed by its cause.

Usage::

    python bench/science_fdr.py diagnose        # runs of bench/scratch/science/n981
    python bench/science_fdr.py diagnose --variants base null

For each seed, the simulation design is rebuilt from the run's params (it is a
pure function of them) and every donor's expected expression per cell type is
recomputed (:func:`immune_aging.synthetic.donor_profiles`, the same random
streams as the data stage). A false discovery (a (cell type, gene) called at
``padj < 0.05`` whose sign is not the planted one; every call of a null run) has an
estimated slope (log2 per decade); the slope of each part of the pseudobulk's
expected log expression on age over the same samples (weighted least squares with
sex, as DESeq2 weighs them) splits it:

``pool``
    the 10x pool's batch effect on the gene (a (pool, gene) draw shared by the
    pool's donors);
``donor``
    the donor-level biological noise (per cell type, shared across types, gene
    programmes), i.e. chance in the donors' expression;
``leak_composition``
    RNA of other cells in this type's samples (undetected doublets, the other
    half of intermediate cells): the log of (all bodies / own bodies), computed on
    the null twin's profiles, so its slope comes from the composition changing with
    age;
``leak_planted``
    the same on the planted profiles minus the composition part: an age effect
    planted in another cell type that reaches this type through its cells' RNA;
``planted``
    the planted effect of the gene in this type (non-zero only for a wrong sign);
``sampling``
    what is left: the estimate minus the parts above, i.e. cell-level counting
    noise (few cells per sample, bursty genes) and the gap between the fit and a
    least-squares slope.

A discovery's **cause** is the part contributing most to the estimate in its
direction (``cause_share``: that part over the estimate). ``z_cut`` is the Wald
statistic the cell type's BH cut asked for (its largest p-value called).

It also writes p-value calibration of every true null test (all tests of the null
and permuted runs, unplanted ones of the planted runs), by mean count and gene
category. Output: ``bench/results/science-fdr.json`` and the tables printed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "bench" / "scratch" / "science"
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "src"))

from immune_aging import io  # noqa: E402
from immune_aging.synthetic import design_simulation, donor_profiles  # noqa: E402

ALPHA = 0.05
#: Parts of a slope; a discovery's cause is the one contributing most in its direction.
CAUSES = ("leak_planted", "leak_composition", "pool", "planted", "donor", "sampling")
LN2 = math.log(2.0)


def _synthetic_args(params: dict[str, Any], scale: float) -> dict[str, Any]:
    s = dict(params["data"]["synthetic"])
    s.pop("chunk_cells", None)
    s["age_effect_scale"] = scale
    return s


class SeedModel:
    """One seed's design (planted and null twin) and each sample's expected expression."""

    def __init__(self, folder: Path) -> None:
        params = yaml.safe_load((folder / "params.yaml").read_text())
        self.planted = design_simulation(**_synthetic_args(params, 1.0))
        self.null = design_simulation(**_synthetic_args(params, 0.0))
        d = self.planted
        self.labels = [ct.label for ct in d.cell_types]
        self.n_types = len(self.labels)
        self.ids = d.var.index.astype(str).to_numpy()
        self.gene_index = {g: i for i, g in enumerate(self.ids)}
        self.category = d.category
        self.symbols = d.var["feature_name"].astype(str).to_numpy()
        n_donors = len(d.donors)
        self.pi_planted = np.stack([donor_profiles(d, i) for i in range(n_donors)])
        self.pi_null = np.stack([donor_profiles(self.null, i) for i in range(n_donors)])
        self.pools = sorted(set(d.donors["pool"]))
        self.donor_pool = np.array([self.pools.index(p) for p in d.donors["pool"]])
        self.donor_of = {str(x): i for i, x in enumerate(d.donors["donor_id"])}
        self._cache: dict[Path, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.use(folder)

    def use(self, folder: Path) -> None:
        """Take the cells kept by QC in ``folder`` (its own run, or the run it reuses)."""
        folder = folder.resolve()
        if folder not in self._cache:
            self._cache[folder] = self._weights(folder)
        self.own, self.foreign, self.n_cells = self._cache[folder]

    def _weights(self, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Library of each body per (donor, label type): own and foreign, by source type."""
        d = self.planted
        cells = pd.read_parquet(folder / "data/qc/cells.parquet", columns=["keep"])
        kept = pd.Series(False, index=d.obs.index)
        kept.loc[cells.index[cells["keep"].to_numpy()]] = True
        label = d.obs["cell_type"].cat.codes.to_numpy()
        donor = d.cell_donor
        n_donors, t = len(d.donors), self.n_types
        own = np.zeros((n_donors, t))
        foreign = np.zeros((n_donors, t, t))  # donor, label type, source type
        n_cells = np.zeros((n_donors, t), dtype=int)
        keep = kept.to_numpy()
        np.add.at(n_cells, (donor[keep], label[keep]), 1)
        body_cell = d.comp_cell
        ok = keep[body_cell]
        c, bt, lib = body_cell[ok], d.comp_type[ok], d.comp_library[ok]
        lab, don = label[c], donor[c]
        pure = bt < t
        same = pure & (bt == lab)
        np.add.at(own, (don[same], lab[same]), lib[same])
        other = pure & (bt != lab)
        np.add.at(foreign, (don[other], lab[other], bt[other]), lib[other])
        for i, (a, b, w) in enumerate(d.blends):
            m = bt == t + i
            # a blend body is annotated as a (its label); its other part is b
            np.add.at(own, (don[m], lab[m]), w * lib[m] * (lab[m] == a))
            np.add.at(foreign, (don[m], lab[m], np.full(m.sum(), a)), w * lib[m] * (lab[m] != a))
            np.add.at(foreign, (don[m], lab[m], np.full(m.sum(), b)), (1 - w) * lib[m])
        return own, foreign, n_cells

    def parts(self, ct: str, gene: str, donors: list[str]) -> dict[str, np.ndarray]:
        """Per sample (donors of ``ct``): log2 of each part of the expected expression."""
        t = self.labels.index(ct)
        g = self.gene_index[gene]
        di = np.array([self.donor_of[x] for x in donors])
        own = self.own[di, t]
        pp, pn = self.pi_planted[di][:, : self.n_types, g], self.pi_null[di][:, : self.n_types, g]
        e_own_p, e_own_n = own * pp[:, t], own * pn[:, t]
        e_for_p = (self.foreign[di, t, :] * pp).sum(axis=1)
        e_for_n = (self.foreign[di, t, :] * pn).sum(axis=1)
        d = self.planted
        age = d.donors["age"].to_numpy()[di]
        from immune_aging.synthetic.catalogue import REFERENCE_AGE

        beta = d.beta[t, g] * (age - REFERENCE_AGE) / 10.0
        pool = d.pool_effect[self.donor_pool[di], g] / LN2
        own_log = np.log2(pn[:, t] / d.profile[t, g])  # noise + pool (null profiles)
        with np.errstate(divide="ignore", invalid="ignore"):
            leak_n = np.log2((e_own_n + e_for_n) / e_own_n)
            leak_p = np.log2((e_own_p + e_for_p) / e_own_p)
        return {
            "planted": beta,
            "pool": pool,
            "donor": own_log - pool,
            "leak_composition": leak_n,
            "leak_planted": leak_p - leak_n,
            "expected_count": e_own_p + e_for_p,
            "foreign_share": e_for_p / (e_own_p + e_for_p),
        }


def _wls_slope(y: np.ndarray, age: np.ndarray, sex: np.ndarray, w: np.ndarray) -> float:
    """Slope on age (per decade) of weighted least squares with sex dummies."""
    levels = sorted(set(sex))
    x = np.column_stack([age / 10.0] + [(sex == s).astype(float) for s in levels])
    ok = np.isfinite(y)
    sw = np.sqrt(w[ok])
    coef, *_ = np.linalg.lstsq(x[ok] * sw[:, None], y[ok] * sw, rcond=None)
    return float(coef[0])


def diagnose_run(model: SeedModel, folder: Path, variant: str) -> list[dict[str, Any]]:
    """Decompose every false discovery of one run."""
    from scipy.stats import t as student

    truth = json.loads((folder / "data/raw/truth.json").read_text())
    null = variant.startswith(("null", "permuted"))
    effects = {} if null else truth["log2fc_per_decade_by_cell_type"]
    de = io.read_parquet(folder / "data/de/results.parquet")
    pb = io.read_h5ad(folder / "data/pseudobulk/pseudobulk.h5ad")
    params = yaml.safe_load((folder / "params.yaml").read_text())
    n_coef = {"sex": 1, "pool": 0}
    out = []
    for ct, rows in de.groupby("cell_type", sort=True):
        sig = rows[rows["padj"] < ALPHA]
        if sig.empty:
            continue
        cut = float(sig["pvalue"].max())
        samples = pb.obs[(pb.obs["cell_type"] == ct) & pb.obs["age"].notna()]
        donors = samples["donor_id"].astype(str).tolist()
        age = samples["age"].to_numpy(float)
        sex = samples["sex"].astype(str).to_numpy()
        p = 2 + (len(set(sex)) - 1) * n_coef["sex"]
        if "pool" in params["de"]["covariates"]:
            p += samples["pool"].nunique() - 1
        df = len(samples) - p
        z_cut = float(student.isf(cut / 2.0, df))
        sd = float(np.std(age, ddof=1))
        for r in sig.itertuples():
            planted = effects.get(ct, {}).get(r.gene_id, 0.0)
            if np.sign(planted) == np.sign(r.log2FoldChange):
                continue
            parts = model.parts(ct, r.gene_id, donors)
            mu = parts["expected_count"] / np.mean(parts["expected_count"]) * r.baseMean
            w = mu / (1.0 + 0.1 * mu)
            slopes = {
                k: _wls_slope(parts[k], age, sex, w)
                for k in ("planted", "pool", "donor", "leak_composition", "leak_planted")
            }
            if null:  # null runs: the truth has no effect; the data stage used none
                slopes["planted"] = 0.0
                if variant.startswith("null"):
                    slopes["leak_planted"] = 0.0
            est = float(r.log2fc_per_decade)
            se = float(r.lfcSE) * 10.0 / sd
            slopes["sampling"] = est - sum(slopes.values())
            share = {k: v * np.sign(est) / abs(est) for k, v in slopes.items()}
            cause = max(CAUSES, key=lambda k: share[k])
            g = model.gene_index[r.gene_id]
            elsewhere = {
                c: v
                for c, genes in truth["log2fc_per_decade_by_cell_type"].items()
                for gg, v in genes.items()
                if gg == r.gene_id and c != ct
            }
            out.append(
                {
                    "variant": variant,
                    "cell_type": ct,
                    "gene_id": r.gene_id,
                    "gene": r.gene,
                    "category": str(model.category[g]),
                    "base_mean": round(float(r.baseMean), 2),
                    "estimate": round(est, 4),
                    "se": round(se, 4),
                    "z": round(est / se, 2),
                    "z_cut": round(z_cut, 2),
                    "planted_here": planted,
                    "planted_elsewhere": elsewhere,
                    "foreign_share": round(float(np.nanmean(parts["foreign_share"])), 4),
                    **{f"slope_{k}": round(v, 4) for k, v in slopes.items()},
                    "theta": round(float(model.planted.theta[g]), 3),
                    "pool_sd": round(float(model.planted.pool_effect[:, g].std()), 3),
                    "cause": cause,
                    "cause_share": round(float(share[cause]), 2),
                }
            )
    return out


def calibration(variants: tuple[str, ...], seeds: tuple[int, ...]) -> pd.DataFrame:
    """Observed over nominal rate of true null p-values below cuts, by mean count."""
    frames = []
    for s in seeds:
        for v in variants:
            folder = SCRATCH / "n981" / f"seed{s}" / v
            path = folder / "data/de/results.parquet"
            if not path.exists():
                continue
            de = io.read_parquet(path)
            if v in ("base", "pool"):
                truth = json.loads((folder / "data/raw/truth.json").read_text())
                eff = {
                    (c, g)
                    for c, genes in truth["log2fc_per_decade_by_cell_type"].items()
                    for g in genes
                }
                de = de[
                    [
                        (c, g) not in eff
                        for c, g in zip(de["cell_type"], de["gene_id"], strict=True)
                    ]
                ]
            frames.append(de.assign(variant=v, seed=s))
    d = pd.concat(frames, ignore_index=True)
    d = d[d["pvalue"].notna()]
    d["base_mean"] = pd.cut(d["baseMean"], [0, 1, 5, 20, 100, np.inf], right=False)
    rows = []
    for (v, b), grp in d.groupby(["variant", "base_mean"], observed=True, sort=True):
        row = {"variant": v, "base_mean": str(b), "tests": len(grp)}
        for cut in (0.05, 0.01, 1e-3, 1e-4):
            row[f"p<{cut:g}"] = round(float((grp["pvalue"] < cut).mean() / cut), 2)
        rows.append(row)
    for v, grp in d.groupby("variant", sort=True):
        row = {"variant": v, "base_mean": "all", "tests": len(grp)}
        for cut in (0.05, 0.01, 1e-3, 1e-4):
            row[f"p<{cut:g}"] = round(float((grp["pvalue"] < cut).mean() / cut), 2)
        rows.append(row)
    return pd.DataFrame(rows)


def posthoc(seeds: tuple[int, ...]) -> pd.DataFrame:
    """FDR and null trials of the recorded DE runs, with the empirical null applied after.

    The statistics of each (run, cell type) are divided by
    :func:`immune_aging.analysis.deseq.empirical_null_scale` and BH rerun on the genes
    that kept an adjusted p-value (DESeq2's independent filtering as recorded).
    """
    from scipy.stats import t as student
    from statsmodels.stats.multitest import multipletests

    from immune_aging.analysis.deseq import empirical_null_scale

    rows = []
    for s in seeds:
        for v in ("base", "pool", "null", "null_pool", "permuted"):
            folder = SCRATCH / "n981" / f"seed{s}" / v
            de = io.read_parquet(folder / "data/de/results.parquet")
            truth = json.loads((folder / "data/raw/truth.json").read_text())
            eff = {}
            if v in ("base", "pool"):
                eff = {
                    (c, g): x
                    for c, genes in truth["log2fc_per_decade_by_cell_type"].items()
                    for g, x in genes.items()
                }
            for null in ("theoretical", "empirical"):
                disc = false = trials = 0
                for ct, g in de.groupby("cell_type", sort=True):
                    stat, p = g["stat"].to_numpy(float), g["pvalue"].to_numpy(float)
                    if null == "empirical":
                        scale = empirical_null_scale(stat, g["baseMean"].to_numpy(float))
                        p = np.where(
                            np.isnan(p), np.nan, 2 * student.sf(np.abs(stat / scale), 800)
                        )
                    keep = g["padj"].notna().to_numpy() & np.isfinite(p)
                    q = np.ones(len(g))
                    if keep.any():
                        q[keep] = multipletests(p[keep], method="fdr_bh")[1]
                    planted = np.array([eff.get((ct, x), 0.0) for x in g["gene_id"]])
                    sig = q < ALPHA
                    wrong = sig & (np.sign(planted) != np.sign(g["log2FoldChange"].to_numpy()))
                    disc, false, trials = disc + sig.sum(), false + wrong.sum(), trials + sig.any()
                rows.append(
                    {
                        "seed": s,
                        "variant": v,
                        "null": null,
                        "discoveries": int(disc),
                        "false": int(false),
                        "fdp": false / max(disc, 1),
                        "trials_called": int(trials),
                    }
                )
    return pd.DataFrame(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("diagnose")
    d.add_argument("--scenario", default="n981")
    d.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    d.add_argument("--variants", nargs="+", default=["base", "pool", "null", "null_pool"])
    d.add_argument("--out", default=str(RESULTS / "science-fdr.json"))
    h = sub.add_parser("posthoc", help="the empirical null applied to the recorded runs")
    h.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = p.parse_args()
    if args.command == "posthoc":
        table = posthoc(tuple(args.seeds))
        print(table.to_string())
        agg = table.groupby(["variant", "null"]).agg(
            runs=("seed", "count"),
            discoveries=("discoveries", "mean"),
            false=("false", "sum"),
            fdr=("fdp", "mean"),
            fdr_sd=("fdp", "std"),
            trials_called=("trials_called", "sum"),
        )
        print(agg.round(3).to_string())
        return 0
    rows = []
    for s in args.seeds:
        base = SCRATCH / args.scenario / f"seed{s}" / "base"
        model = SeedModel(base)
        for v in args.variants:
            folder = SCRATCH / args.scenario / f"seed{s}" / v
            if (folder / "data/de/results.parquet").exists():
                model.use(
                    SCRATCH / args.scenario / f"seed{s}" / ("null" if "null" in v else "base")
                )
                for row in diagnose_run(model, folder, v):
                    rows.append({"seed": s, **row})
        print(f"seed {s}: {sum(r['seed'] == s for r in rows)} false discoveries", flush=True)
    table = pd.DataFrame(rows)
    cal = calibration(
        ("base", "pool", "null", "null_pool", "permuted", "permuted_pool"), tuple(args.seeds)
    )
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 500)
    cols = ["seed", "variant", "cell_type", "gene", "category", "base_mean", "z", "z_cut"]
    cols += [c for c in table.columns if c.startswith("slope_")] + ["foreign_share", "cause"]
    print(table[cols].to_string())
    print(pd.crosstab(table["cause"], table["variant"], margins=True).to_string())
    print(cal.to_string())
    Path(args.out).write_text(
        json.dumps(
            {"discoveries": table.to_dict("records"), "calibration": cal.to_dict("records")},
            indent=1,
            default=float,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
