"""Typed, validated parameters: one dataclass per ``params.yaml`` section.

Every key of a section must be present in ``params.yaml`` (the file is the single
source of defaults, so what DVC hashes is what ran), and every key present must be
known. A misspelt key, a wrong type or an out-of-range value raises
:class:`~immune_aging.errors.ParamsError` naming the key, e.g.::

    params.yaml: qc.max_genes: expected an integer >= 1, got 'many'

Constraints live in field metadata: ``ge``/``gt``/``le``/``lt`` bounds and
``choices``; a constraint across keys is a ``problem()`` method of the section.
The checks are :func:`immune_aging.schema.build`'s (its docstring lists the types).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from immune_aging.errors import ParamsError
from immune_aging.schema import build, suggest

DEFAULT_PARAMS = Path("params.yaml")
#: Sample annotations of pseudobulk.h5ad the de stage can adjust for (``de.covariates``).
DE_COVARIATES = ("sex", "pool")


def _f(*, ge=None, gt=None, le=None, lt=None, choices=None) -> Any:
    """Declare a required field with optional bounds (no code-side default)."""
    meta = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}.items()}
    return field(metadata={k: v for k, v in meta.items() if v is not None})


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class SyntheticParams:
    """Size and seed of the simulated dataset (``data.synthetic``)."""

    seed: int = _f(ge=0)
    n_donors: int = _f(ge=2)
    n_cell_types: int = _f(ge=1, le=12)
    cells_per_donor: int = _f(ge=10)
    n_genes: int = _f(ge=500)
    doublet_rate: float = _f(ge=0.0, lt=0.5)
    dying_rate: float = _f(ge=0.0, lt=0.5)
    rbc_rate: float = _f(ge=0.0, lt=0.5)
    chunk_cells: int = _f(ge=1000)
    preset: Literal["default", "realistic"]
    age_effect_scale: float = _f(ge=0.0)


@dataclass(frozen=True)
class DataParams:
    """Where the input comes from (``data``)."""

    source: str
    sha256: str | None
    synthetic: SyntheticParams


@dataclass(frozen=True)
class FilterParams:
    """Donor and cell-type prevalence filter (``filter``)."""

    cutoff_percentile: float = _f(ge=0.0, lt=100.0)
    min_cells_per_celltype: int = _f(ge=1)
    percent_donors: float = _f(gt=0.0, le=1.0)
    keep_obs: list[str]
    prevalence: Literal["cell_types", "samples"]


@dataclass(frozen=True)
class QcParams:
    """Cell quality control and doublet detection (``qc``)."""

    thresholds: Literal["fixed", "mad"]
    min_genes: int = _f(ge=0)
    max_genes: int = _f(ge=1)
    min_counts: int = _f(ge=0)
    max_counts: int = _f(ge=1)
    max_pct_mt: float = _f(ge=0.0, le=100.0)
    max_pct_hb: float = _f(ge=0.0, le=100.0)
    n_mads: float = _f(gt=0.0)
    expected_doublet_rate: float = _f(gt=0.0, lt=1.0)
    min_cells_scrublet: int = _f(ge=2)
    pool_key: str | None = _f()
    seed: int = _f(ge=0)


@dataclass(frozen=True)
class PreprocessParams:
    """Normalisation, highly variable genes and PCA (``preprocess``)."""

    target_sum: float = _f(gt=0.0)
    n_top_genes: int = _f(ge=10)
    hvg_span: float = _f(gt=0.0, le=1.0)
    blocklist_regex: str = _f()
    n_comps: int = _f(ge=2)
    pca_solver: Literal["covariance", "arpack"]
    seed: int = _f(ge=0)


@dataclass(frozen=True)
class DimredParams:
    """Harmony integration, neighbour graph and UMAP (``dimred``)."""

    harmony_max_iter: int = _f(ge=1)
    n_neighbors: int = _f(ge=2)
    n_pcs: int = _f(ge=2)
    exact_knn_max_cells: int = _f(ge=0)
    umap_min_dist: float = _f(ge=0.0)
    umap_max_cells: int = _f(ge=0)
    seed: int = _f(ge=0)


@dataclass(frozen=True)
class ClusterParams:
    """Leiden clustering (``cluster``)."""

    resolution: float = _f(gt=0.0)
    n_iterations: int = _f(ge=-1)
    seed: int = _f(ge=0)


@dataclass(frozen=True)
class PseudobulkParams:
    """Pseudobulk aggregation per (cell type, donor) (``pseudobulk``)."""

    min_cells: int = _f(ge=1)
    min_samples_per_cell_type: int = _f(ge=2)
    censored_age: Literal["assign", "drop"]
    age_80_and_over: float = _f(ge=80.0, le=120.0)
    pool_key: str | None = _f()


@dataclass(frozen=True)
class DeParams:
    """Differential expression with age per cell type (``de``)."""

    alpha: float = _f(gt=0.0, lt=1.0)
    min_total_count: int = _f(ge=0)
    min_donors: int = _f(ge=3)
    covariates: list[str]
    min_expression_ratio: float = _f(ge=0.0, lt=1.0)
    min_mu: float = _f(gt=0.0)
    wald_distribution: Literal["t", "normal"]
    min_mean_count: float = _f(ge=0.0)
    cell_types: list[str]
    solver: Literal["batched", "pydeseq2"]
    null_distribution: Literal["theoretical", "empirical"] = "theoretical"

    def problem(self) -> tuple[str, str] | None:
        """Return ``(key, what is wrong)`` across keys, or None."""
        bad = [c for c in self.covariates if c not in DE_COVARIATES]
        if bad:
            return "covariates", (
                f"unknown covariate {bad[0]!r} (expected some of {', '.join(DE_COVARIATES)})"
            )
        if len(set(self.covariates)) != len(self.covariates):
            return "covariates", "a covariate is listed twice"
        if len(set(self.cell_types)) != len(self.cell_types):
            return "cell_types", "a cell type is listed twice"
        return None


@dataclass(frozen=True)
class GenesetsParams:
    """Gene-set libraries: GMT paths or Enrichr library names (``genesets``)."""

    sources: list[str]


def _size_bounds(params: Any) -> tuple[str, str] | None:
    """Return the fault of a gene-set size window whose minimum exceeds its maximum."""
    if params.min_size > params.max_size:
        return "min_size", f"{params.min_size} is larger than max_size ({params.max_size})"
    return None


@dataclass(frozen=True)
class GseaParams:
    """Preranked GSEA on the DE Wald statistic (``gsea``)."""

    min_size: int = _f(ge=1)
    max_size: int = _f(ge=1)
    permutations: int = _f(ge=10)
    seed: int = _f(ge=0)
    fdr: float = _f(gt=0.0, le=1.0)

    def problem(self) -> tuple[str, str] | None:
        """Return ``(key, what is wrong)`` across keys, or None."""
        return _size_bounds(self)


@dataclass(frozen=True)
class OraParams:
    """Over-representation of significant genes (``ora``)."""

    padj: float = _f(gt=0.0, lt=1.0)
    min_size: int = _f(ge=1)
    max_size: int = _f(ge=1)
    backend: Literal["local", "enrichr"]
    enrichr_libraries: list[str]

    def problem(self) -> tuple[str, str] | None:
        """Return ``(key, what is wrong)`` across keys, or None."""
        if self.backend == "enrichr" and not self.enrichr_libraries:
            return "enrichr_libraries", "expected at least one library name with backend enrichr"
        return _size_bounds(self)


@dataclass(frozen=True)
class PredictParams:
    """Age prediction from pseudobulk expression (``predict``)."""

    C: float = _f(gt=0.0)
    n_splits: int = _f(ge=2)
    test_size: float = _f(gt=0.0, lt=1.0)
    seed: int = _f(ge=0)
    n_top_genes: int = _f(ge=1)


@dataclass(frozen=True)
class EvaluateParams:
    """Thresholds used when comparing results with the simulation truth (``evaluate``)."""

    alpha: float = _f(gt=0.0, lt=1.0)


@dataclass(frozen=True)
class ReportParams:
    """The HTML report (``report``)."""

    title: str
    top_n: int = _f(ge=1)


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "filter": FilterParams,
    "qc": QcParams,
    "preprocess": PreprocessParams,
    "dimred": DimredParams,
    "cluster": ClusterParams,
    "pseudobulk": PseudobulkParams,
    "de": DeParams,
    "genesets": GenesetsParams,
    "gsea": GseaParams,
    "ora": OraParams,
    "predict": PredictParams,
    "evaluate": EvaluateParams,
    "report": ReportParams,
}


# --------------------------------------------------------------------------- loading


def read_params_file(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read a params YAML file into a mapping.

    Parameters
    ----------
    path
        The YAML file.

    Returns
    -------
    dict
        The top-level mapping.

    Raises
    ------
    ParamsError
        If the file is missing, is not YAML, or is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read parameters ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(
            f"{path}: not a UTF-8 text file (byte offset {exc.start}); binary or damaged"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}:{where} is not valid YAML") from None
    except RecursionError:
        raise ParamsError(f"{path}: not valid parameters (YAML nested too deeply)") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_section(name: str, path: str | Path = DEFAULT_PARAMS) -> Any:
    """Load and validate one section of ``params.yaml``.

    Parameters
    ----------
    name
        Section name, equal to the stage name (``"filter"``, ``"qc"``, ...).
    path
        The params file.

    Returns
    -------
    dataclass instance
        The frozen, typed parameters of that section.

    Raises
    ------
    ParamsError
        For a missing section, a missing/unknown key, a wrong type or an
        out-of-range value; the message names ``section.key``.
    """
    if name not in SECTIONS:
        raise ParamsError(f"{path}: unknown section {name!r}")
    data = read_params_file(path)
    if name not in data:
        raise ParamsError(f"{path}: section {name!r} is missing")
    return parse_section(name, data[name], source=str(path))


def load_all(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Validate every section of a params file, and refuse unknown sections.

    Parameters
    ----------
    path
        The params file.

    Returns
    -------
    dict
        Section name to typed parameters.
    """
    data = read_params_file(path)
    for key in data:
        if key not in SECTIONS:
            raise ParamsError(f"{path}: {key}: unknown section{suggest(key, SECTIONS)}")
    return {name: load_section(name, path) for name in SECTIONS}


def parse_section(name: str, raw: Any, *, source: str = "params.yaml") -> Any:
    """Validate a raw mapping against the dataclass of section ``name``.

    Parameters
    ----------
    name
        Section name.
    raw
        The mapping read from YAML.
    source
        File name used in error messages.

    Returns
    -------
    dataclass instance
        The typed parameters.
    """
    return build(SECTIONS[name], raw, f"{source}: {name}")


def as_dict(params: Any) -> dict[str, Any]:
    """Return a plain, JSON-serialisable dict of a parameters dataclass.

    Parameters
    ----------
    params
        A section dataclass instance.

    Returns
    -------
    dict
        Nested plain values.
    """
    return dataclasses.asdict(params)
