"""The bad-input catalogue: each case stops its stage with one line and writes nothing.

Every case runs a stage as a user would, ``python -m immune_aging.stages.<stage>``
in a fresh folder with the command line of ``dvc.yaml`` and a ``params.yaml`` on
the tiny preset, after corrupting one input. It must exit with status 2, print
exactly one ``error: `` line (the expected text below, where ``<*>`` stands for
any text and ``{server}`` for the local HTTPS server), no traceback, and leave
neither its outputs nor a temporary file behind. ``docs/bad-inputs.md`` lists
the cases with the lines printed.

The stage processes start in parallel (each one spends seconds importing the
scientific stack); a module fixture runs the selected cases, with
:func:`tests.builders.run_stage`, and each test checks one of them.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from tests.builders import (
    REPO,
    command_outputs,
    deep_merge,
    fork_stage,
    run_stage,
    tiny_dataset,
    tiny_params,
    warm_up,
    write_params,
    write_selected,
)

from immune_aging import io, runlog, validate

EXTERNAL = "data/external/dataset.h5ad"
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


# --------------------------------------------------------------------------- inputs


@dataclass
class Kit:
    """What case set-ups draw on: the tiny dataset, the HTTPS server, a closed port."""

    server: str
    cert: Path
    closed_port: int

    def data(self) -> ad.AnnData:
        """Return a fresh copy of the tiny simulated dataset (raw counts in X)."""
        return tiny_dataset()


def write_h5ad(adata: ad.AnnData, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_h5ad(adata, path)


def write_text(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def normalised(x: sp.csr_matrix) -> sp.csr_matrix:
    """Return log1p(counts per 10k), as CELLxGENE stores normalised values."""
    scale = 1e4 / np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1.0)
    return (sp.diags(scale) @ x).tocsr().log1p().astype(np.float32)


def with_counts(edit: Callable[[ad.AnnData], None]) -> Callable[[Path, Kit], None]:
    """Set-up writing the tiny dataset, edited in place, to data/raw/dataset.h5ad."""

    def setup(root: Path, kit: Kit) -> None:
        adata = kit.data()
        edit(adata)
        write_h5ad(adata, root / "data/raw/dataset.h5ad")

    return setup


def external(edit: Callable[[ad.AnnData], None]) -> Callable[[Path, Kit], None]:
    """Set-up placing the edited tiny dataset under data/external/ for the data stage."""

    def setup(root: Path, kit: Kit) -> None:
        adata = kit.data()
        edit(adata)
        write_h5ad(adata, root / EXTERNAL)

    return setup


def drop_donor_id(adata: ad.AnnData) -> None:
    del adata.obs["donor_id"]


def normalise_x(adata: ad.AnnData) -> None:
    adata.X = normalised(adata.X)


def normalise_x_and_raw(adata: ad.AnnData) -> None:
    per_10k = normalised(adata.X).expm1()
    adata.raw = ad.AnnData(X=per_10k, obs=adata.obs[[]], var=adata.var)
    adata.X = normalised(adata.X)


def set_value(value: float) -> Callable[[ad.AnnData], None]:
    def edit(adata: ad.AnnData) -> None:
        adata.X = adata.X.copy()
        adata.X.data[5] = value

    return edit


def fractions_outside_sample(adata: ad.AnnData) -> None:
    """Put 2.5 in every row the validator's sample skips (filter reads them all)."""
    sampled = np.zeros(adata.n_obs, dtype=bool)
    for a, b in validate._sample_starts(adata.n_obs):
        sampled[a:b] = True
    assert not sampled.all(), "the tiny dataset is too small to leave rows unsampled"
    x = adata.X.copy()
    for row in np.flatnonzero(~sampled):
        if x.indptr[row + 1] > x.indptr[row]:
            x.data[x.indptr[row]] = 2.5
    adata.X = x


def duplicate_cell(adata: ad.AnnData) -> None:
    names = adata.obs_names.to_list()
    names[1] = names[0]
    adata.obs_names = names


def duplicate_gene(adata: ad.AnnData) -> None:
    names = adata.var_names.to_list()
    names[1] = names[0]
    adata.var_names = names


def single_donor(adata: ad.AnnData) -> None:
    adata.obs["donor_id"] = pd.Categorical(["D001"] * adata.n_obs)


def one_type_per_donor(adata: ad.AnnData) -> None:
    """Give each donor a single cell type, so no donor has every kept type."""
    types = np.array(sorted(adata.obs["cell_type"].astype(str).unique()))
    donors = adata.obs["donor_id"].astype(str)
    index = pd.Series(range(donors.nunique()), index=sorted(donors.unique()))
    adata.obs["cell_type"] = pd.Categorical(types[index[donors].to_numpy() % len(types)])


RAW = "data/raw/dataset.h5ad"
SELECTION = "data/filter/selection.h5ad"


def write_cells(root: Path, cell_ids: pd.Index) -> None:
    """Write data/qc/cells.parquet keeping every cell."""
    cells = pd.DataFrame({"keep": np.ones(len(cell_ids), dtype=bool)}, index=cell_ids)
    cells.index.name = "cell_id"
    (root / "data/qc").mkdir(parents=True, exist_ok=True)
    io.write_parquet(cells, root / "data/qc/cells.parquet")


def selection_and_cells(*stage_labels: str) -> Callable[[Path, Kit], None]:
    """Set-up writing the input, a selection of all of it and cells.parquet (all kept).

    Given ``stage_labels``, donors get them in turn as their development stage.
    """

    def setup(root: Path, kit: Kit) -> None:
        adata = kit.data()
        obs = adata.obs[["donor_id", "cell_type", "development_stage", "sex"]].copy()
        if stage_labels:
            donors = obs["donor_id"].astype(str)
            order = {d: i for i, d in enumerate(sorted(donors.unique()))}
            labels = [stage_labels[order[d] % len(stage_labels)] for d in donors]
            obs["development_stage"] = pd.Categorical(labels)
        kept = ad.AnnData(X=adata.X, obs=obs, var=adata.var[["feature_name"]].copy())
        write_selected(kept, root, raw=RAW, selection=SELECTION)
        write_cells(root, adata.obs_names)

    return setup


def selection_of_another_input(
    edit: Callable[[ad.AnnData], ad.AnnData], *, cells: bool = False
) -> Callable[[Path, Kit], None]:
    """Set-up writing a selection of the tiny dataset, then ``edit(dataset)`` as the input.

    With ``cells``, cells.parquet too (for the stages after qc).
    """

    def setup(root: Path, kit: Kit) -> None:
        adata = kit.data()
        write_selected(adata, root, raw=RAW, selection=SELECTION)
        write_h5ad(edit(adata), root / RAW)
        if cells:
            write_cells(root, adata.obs_names)

    return setup


def fewer_cells(adata: ad.AnnData) -> ad.AnnData:
    return adata[1:].copy()


def renamed_cell(adata: ad.AnnData) -> ad.AnnData:
    names = adata.obs_names.to_list()
    names[3] = "AAAAAAAAAAAAAAAA-9"
    adata.obs_names = names
    return adata


def renamed_gene(adata: ad.AnnData) -> ad.AnnData:
    names = adata.var_names.to_list()
    names[1] = "ENSG00000000000"
    adata.var_names = names
    return adata


def not_a_selection(root: Path, kit: Kit) -> None:
    """Set-up placing a copy of the counts (no selection) where the selection belongs."""
    adata = kit.data()
    write_h5ad(adata, root / RAW)
    write_h5ad(adata, root / SELECTION)
    write_cells(root, adata.obs_names)


def pseudobulk(groups: list[tuple[str, list[float]]]) -> Callable[[Path, Kit], None]:
    """Set-up writing a literal pseudobulk.h5ad: per cell type, one sample per given age."""

    def setup(root: Path, kit: Kit) -> None:
        rng = np.random.default_rng(0)
        rows = [
            (cell_type, f"D{i:02d}", age, "male" if i % 2 else "female")
            for cell_type, ages in groups
            for i, age in enumerate(ages)
        ]
        obs = pd.DataFrame(rows, columns=["cell_type", "donor_id", "age", "sex"])
        obs.index = [f"{ct}|{donor}" for ct, donor, _, _ in rows]
        for col in ("cell_type", "donor_id", "sex"):
            obs[col] = pd.Categorical(obs[col])
        obs["n_cells"] = 20
        n_genes = 30
        var = pd.DataFrame(
            {"feature_name": [f"GENE{i}" for i in range(n_genes)]},
            index=[f"ENSG{i:011d}" for i in range(n_genes)],
        )
        x = rng.poisson(50, size=(len(obs), n_genes)).astype(np.float32)
        write_h5ad(ad.AnnData(X=x, obs=obs, var=var), root / "data/pseudobulk/pseudobulk.h5ad")

    return setup


def de_results_and_gmt(gmt: str) -> Callable[[Path, Kit], None]:
    """Set-up writing a small DE results table and the given GMT text for gsea."""

    def setup(root: Path, kit: Kit) -> None:
        genes = [f"GENE{i}" for i in range(20)]
        table = pd.DataFrame(
            {
                "cell_type": "natural killer cell",
                "gene_id": [f"ENSG{i:011d}" for i in range(20)],
                "gene": genes,
                "log2FoldChange": np.linspace(-1, 1, 20),
                "stat": np.linspace(-3, 3, 20),
                "padj": np.linspace(0.001, 0.9, 20),
            }
        )
        (root / "data/de").mkdir(parents=True)
        io.write_parquet(table, root / "data/de/results.parquet")
        write_text(root / "data/genesets/genesets.gmt", gmt)

    return setup


def gmt(text: str) -> Callable[[Path, Kit], None]:
    def setup(root: Path, kit: Kit) -> None:
        write_text(root / "data/raw/genesets.gmt", text)

    return setup


def truncated_h5ad(root: Path, kit: Kit) -> None:
    whole = root / "whole.h5ad"
    write_h5ad(kit.data(), whole)
    data = whole.read_bytes()
    whole.unlink()
    write_text(root / "data/raw/dataset.h5ad", data[: len(data) // 2])


def not_yaml(root: Path, kit: Kit) -> None:
    (root / "params.yaml").write_text("genesets:\n  sources: [data/raw/genesets.gmt\n")


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One bad input: the stage it is given to and the line the stage must print."""

    id: str
    stage: str
    message: str
    params: dict[str, Any] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    setup: Callable[[Path, Kit], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    exit_status: int = 2


NOT_A_COUNT = "error: filter: data/raw/dataset.h5ad: X holds {} and there is no raw.X: "
SOURCE = {"data": {"source": EXTERNAL}}

CASES = [
    # parameters (checked before any input is read)
    Case(
        "params-unknown-key",
        "data",
        "error: data: params.yaml: data.sourc: unknown key (did you mean 'source'?)",
        params={"data": {"sourc": "synthetic"}},
    ),
    Case(
        "params-wrong-type",
        "data",
        "error: data: params.yaml: data.synthetic.n_donors: expected an integer >= 2, got 'many'",
        params={"data": {"synthetic": {"n_donors": "many"}}},
    ),
    Case(
        "params-out-of-range",
        "filter",
        "error: filter: params.yaml: filter.percent_donors: expected a number > 0.0 and "
        "<= 1.0, got 1.5",
        params={"filter": {"percent_donors": 1.5}},
    ),
    Case(
        "params-missing-key",
        "de",
        "error: de: params.yaml: de.alpha: missing key",
        drop=("de", "alpha"),
    ),
    Case(
        "params-not-yaml",
        "genesets",
        "error: genesets: params.yaml: line 3 is not valid YAML",
        setup=not_yaml,
    ),
    # the environment (checked by every stage before any input is read)
    Case(
        "env-threads-invalid",
        "qc",
        "error: qc: IMMUNE_AGING_THREADS='zero': expected a positive integer number of threads",
        env={"IMMUNE_AGING_THREADS": "zero"},
    ),
    Case(
        "env-scheduler-invalid",
        "de",
        "error: de: IMMUNE_AGING_SCHEDULER='tcp://scheduler': expected 'tcp://HOST:PORT' (a "
        "running Dask scheduler) or 'local:N' (a Dask cluster of N worker processes on this "
        "machine)",
        env={"IMMUNE_AGING_SCHEDULER": "tcp://scheduler"},
    ),
    # data.source and downloads
    Case(
        "source-plain-http",
        "data",
        "error: data: params.yaml: data.source: 'http://example.org/onek1k.h5ad': plain http "
        "is not accepted, use an https:// URL",
        params={"data": {"source": "http://example.org/onek1k.h5ad"}},
    ),
    Case(
        "source-outside-external",
        "data",
        "error: data: params.yaml: data.source: '../elsewhere/dataset.h5ad' is outside "
        "data/external/: put the file there (the folder is a declared dependency of the stage)",
        params={"data": {"source": "../elsewhere/dataset.h5ad"}},
    ),
    Case(
        "source-missing-file",
        "data",
        "error: data: params.yaml: data.source: data/external/dataset.h5ad: file not found",
        params=SOURCE,
    ),
    Case(
        "download-http-404",
        "data",
        "error: data: {server}/missing.h5ad: HTTP 404 Not Found",
        params={"data": {"source": "{server}/missing.h5ad"}},
    ),
    Case(
        "download-sha256-mismatch",
        "data",
        "error: data: {server}/dataset.h5ad: SHA-256 mismatch: expected "
        + "0" * 64
        + ", got <*> (download removed)",
        params={"data": {"source": "{server}/dataset.h5ad", "sha256": "0" * 64}},
    ),
    Case(
        "external-sha256-mismatch",
        "data",
        f"error: data: {EXTERNAL}: SHA-256 mismatch: expected "
        + "0" * 64
        + " (data.sha256), got <*>",
        params={"data": {"source": EXTERNAL, "sha256": "0" * 64}},
        setup=external(lambda a: None),
    ),
    # the input file
    Case(
        "input-missing",
        "filter",
        "error: filter: data/raw/dataset.h5ad: file not found",
    ),
    Case(
        "h5ad-random-bytes",
        "filter",
        "error: filter: data/raw/dataset.h5ad: not an h5ad file (no HDF5 signature)",
        setup=lambda root, kit: write_text(
            root / "data/raw/dataset.h5ad", np.random.default_rng(0).bytes(4096)
        ),
    ),
    Case(
        "h5ad-text-file",
        "filter",
        "error: filter: data/raw/dataset.h5ad: not an h5ad file (no HDF5 signature)",
        setup=lambda root, kit: write_text(
            root / "data/raw/dataset.h5ad", "cell_id,donor_id,CD3E\nAAAC-1,D001,3\n"
        ),
    ),
    Case(
        "h5ad-truncated",
        "filter",
        "error: filter: data/raw/dataset.h5ad: not a readable h5ad file (OSError)",
        setup=truncated_h5ad,
    ),
    # the dataset's schema and counts
    Case(
        "obs-donor-id-missing",
        "data",
        f"error: data: {EXTERNAL}: obs column 'donor_id' missing (required: donor_id, "
        "cell_type, development_stage, sex)",
        params=SOURCE,
        setup=external(drop_donor_id),
    ),
    Case(
        "counts-normalised-no-raw",
        "data",
        f"error: data: {EXTERNAL}: X holds non-integer values (e.g. <*>) and there is no "
        "raw.X: raw counts are required",
        params=SOURCE,
        setup=external(normalise_x),
    ),
    Case(
        "counts-nowhere",
        "filter",
        "error: filter: data/raw/dataset.h5ad: neither X nor raw.X holds raw counts "
        "(X: non-integer values (e.g. <*>); raw.X: non-integer values (e.g. <*>)): "
        "raw counts are required",
        setup=with_counts(normalise_x_and_raw),
    ),
    Case(
        "counts-negative",
        "data",
        f"error: data: {EXTERNAL}: X holds negative values (e.g. -1) and there is no raw.X: "
        "raw counts are required",
        params=SOURCE,
        setup=external(set_value(-1.0)),
    ),
    Case(
        "counts-non-integer",
        "filter",
        NOT_A_COUNT.format("non-integer values (e.g. 2.5)") + "raw counts are required",
        setup=with_counts(set_value(2.5)),
    ),
    Case(
        "counts-non-integer-unsampled",
        "filter",
        "error: filter: data/raw/dataset.h5ad: X holds non-integer values (e.g. 2.5): "
        "raw counts are required",
        setup=with_counts(fractions_outside_sample),
    ),
    Case(
        "cells-duplicate",
        "data",
        f"error: data: {EXTERNAL}: obs names (cell IDs) are not unique: '<*>' occurs 2 times",
        params=SOURCE,
        setup=external(duplicate_cell),
    ),
    Case(
        "genes-duplicate",
        "filter",
        "error: filter: data/raw/dataset.h5ad: var names (gene IDs) are not unique: "
        "'<*>' occurs 2 times",
        setup=with_counts(duplicate_gene),
    ),
    Case(
        "donor-single",
        "data",
        f"error: data: {EXTERNAL}: obs column 'donor_id' holds 1 donor ('D001'); at least 2 "
        "are required",
        params=SOURCE,
        setup=external(single_donor),
    ),
    # filters that leave nothing
    Case(
        "filter-no-cell-type",
        "filter",
        "error: filter: filter.min_cells_per_celltype=100000 and filter.percent_donors=0.95 "
        "keep no cell type: none has >= 100000 cells in >= 13.3 of 14 donors",
        params={"filter": {"min_cells_per_celltype": 100000}},
        setup=with_counts(lambda a: None),
    ),
    Case(
        "filter-no-cell",
        "filter",
        "error: filter: filter.min_cells_per_celltype=10 leaves no cell: no donor has >= 10 "
        "cells of every kept cell type (4 types)",
        params={"filter": {"percent_donors": 0.2}},
        setup=with_counts(one_type_per_donor),
    ),
    # the filter's selection read against the input (qc is its first reader)
    Case(
        "selection-other-shape",
        "qc",
        "error: qc: data/filter/selection.h5ad: made from an input of 2462 cells x 700 genes, "
        "but data/raw/dataset.h5ad has 2461 x 700: rerun the filter stage",
        setup=selection_of_another_input(fewer_cells),
    ),
    Case(
        "selection-other-cells",
        "qc",
        "error: qc: data/filter/selection.h5ad: cell 'CGAAAACCCAATATCT-1' is 'AAAAAAAAAAAAAAAA-9' in "
        "data/raw/dataset.h5ad (position 3): made from another input, rerun the filter stage",
        setup=selection_of_another_input(renamed_cell),
    ),
    Case(
        "selection-other-genes",
        "preprocess",
        "error: preprocess: data/filter/selection.h5ad: gene 'ENSG00000100581' is "
        "'ENSG00000000000' in data/raw/dataset.h5ad (position 1): made from another input, "
        "rerun the filter stage",
        setup=selection_of_another_input(renamed_gene, cells=True),
    ),
    Case(
        "selection-not-a-selection",
        "pseudobulk",
        "error: pseudobulk: data/filter/selection.h5ad: uns 'selection' (location, n_obs, "
        "n_vars) missing: not a selection of the filter stage",
        setup=not_a_selection,
    ),
    Case(
        "pseudobulk-no-cell-type",
        "pseudobulk",
        "error: pseudobulk: data/filter/selection.h5ad: no cell type has 1000 samples of >= 5 "
        "cells (pseudobulk.min_samples_per_cell_type, pseudobulk.min_cells)",
        params={"pseudobulk": {"min_samples_per_cell_type": 1000}},
        setup=selection_and_cells(),
    ),
    # ages and differential expression
    Case(
        "ages-all-unknown",
        "pseudobulk",
        "error: pseudobulk: data/filter/selection.h5ad: obs column 'development_stage' gives "
        "no donor a known age (all 14 donors unknown); the de and predict stages need donor "
        "ages",
        setup=selection_and_cells("unknown", "adult stage", ""),
    ),
    Case(
        "de-every-cell-type-skipped",
        "de",
        "error: de: data/pseudobulk/pseudobulk.h5ad: no cell type can be tested for age "
        "effects: all 2 skipped (e.g. 'B cell': 3 donor(s) of known age, fewer than "
        "de.min_donors=6)",
        setup=pseudobulk(
            [("B cell", [30.0, 50.0, 70.0]), ("T cell", [30.0, 40.0, np.nan, np.nan, 80.0])]
        ),
    ),
    Case(
        "de-pool-covariate-missing",
        "de",
        "error: de: data/pseudobulk/pseudobulk.h5ad: obs column 'pool' missing: de.covariates "
        "needs it (set pseudobulk.pool_key to the pool column)",
        params={"de": {"covariates": ["sex", "pool"]}},
        setup=pseudobulk([("T cell", [30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 35.0, 45.0])]),
    ),
    # gene sets
    Case(
        "gmt-empty",
        "genesets",
        "error: genesets: genesets.sources[0]: data/raw/genesets.gmt: gene-set file holds no "
        "gene set",
        setup=gmt(""),
    ),
    Case(
        "gmt-malformed-line",
        "genesets",
        "error: genesets: genesets.sources[0]: data/raw/genesets.gmt: line 2: expected "
        "'name<TAB>description<TAB>gene...'",
        setup=gmt("AGE_UP\tsimulated\tCD3E\tCD8A\nAGE_DOWN CD4 CD8B\n"),
    ),
    Case(
        "gmt-empty-given-to-gsea",
        "gsea",
        "error: gsea: data/genesets/genesets.gmt: gene-set file holds no gene set",
        setup=de_results_and_gmt("\n"),
    ),
    Case(
        "gmt-outside-tracked-folders",
        "genesets",
        "error: genesets: genesets.sources[0]: /tmp/hallmark.gmt is outside data/raw/ or "
        "data/external/; put the GMT file under one of them so that DVC tracks it",
        params={"genesets": {"sources": ["/tmp/hallmark.gmt"]}},
    ),
    Case(
        "geneset-library-offline",
        "genesets",
        "error: genesets: genesets.sources[0]: Enrichr library 'MSigDB_Hallmark_2020' is not "
        "cached in data/external/genesets/MSigDB_Hallmark_2020.gmt and cannot be downloaded "
        "offline (<*>); run once with network access or put the GMT file there",
        params={"genesets": {"sources": ["MSigDB_Hallmark_2020"]}},
        env={"https_proxy": "http://127.0.0.1:{closed_port}", "no_proxy": ""},
    ),
]

#: Not an error: a cell type with too few donors is skipped with its reason.
SKIPPED_BUT_RUNS = Case(
    "de-one-cell-type-skipped",
    "de",
    "",
    setup=pseudobulk(
        [("B cell", [30.0, 50.0, 70.0]), ("T cell", [20, 30, 40, 50, 60, 70, 80, 90])]
    ),
    exit_status=0,
)


def expected_line(case: Case, kit: Kit) -> re.Pattern[str]:
    """The case's message as a regular expression (``<*>``: any text)."""
    text = case.message.replace("{server}", kit.server)
    return re.compile(".+?".join(re.escape(part) for part in text.split("<*>")))


# --------------------------------------------------------------------------- running


def _certificate(folder: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves a few bytes at /dataset.h5ad and 404 elsewhere."""

    body = b"these bytes do not match the expected checksum\n"

    def do_GET(self) -> None:
        if self.path == "/dataset.h5ad":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)
        else:
            self.send_error(404, "Not Found")

    def log_message(self, *args: Any) -> None:
        pass


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    """A local HTTPS server trusted via SSL_CERT_FILE, and a closed port."""
    cert, key = _certificate(tmp_path_factory.mktemp("tls"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Kit(
            server=f"https://127.0.0.1:{server.server_address[1]}",
            cert=cert,
            closed_port=_closed_port(),
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _substitute(value: Any, kit: Kit) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, kit) for k, v in value.items()}
    if isinstance(value, str):
        return value.replace("{server}", kit.server).replace("{closed_port}", str(kit.closed_port))
    return value


def prepare(case: Case, root: Path, kit: Kit) -> None:
    """Create the case's folder: params.yaml and inputs."""
    (root / "data/external").mkdir(parents=True)
    params = deep_merge(tiny_params(), _substitute(case.params, kit))
    if case.drop:
        section, key = case.drop
        del params[section][key]
    write_params(root / "params.yaml", params)
    if case.setup is not None:
        case.setup(root, kit)


def environment(case: Case, kit: Kit) -> dict[str, str | None]:
    """What the case's stage process gets on top of the project environment."""
    env: dict[str, str | None] = dict.fromkeys(PROXY_VARS)
    env.update(
        IMMUNE_AGING_THREADS="1",
        SSL_CERT_FILE=str(kit.cert),
        no_proxy="127.0.0.1,localhost",
    )
    env.update(_substitute(case.env, kit))
    return env


@dataclass
class Outcome:
    root: Path
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, kit: Kit, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Outcome]:
    """Run the cases selected in this session, a few stage processes at a time."""
    selected = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec is not None and "case" in callspec.params:
            selected.add(callspec.params["case"].id)
    cases = [c for c in [*CASES, SKIPPED_BUT_RUNS] if c.id in selected]
    jobs = []
    for case in cases:  # inputs are written one at a time (h5py is not thread-safe)
        root = tmp_path_factory.mktemp(case.id)
        prepare(case, root, kit)
        jobs.append((case, root))

    # the first case of each stage runs as a user runs it, `python -m ...`; the others
    # run the same main() in a forked child of this process, which has imported the
    # scientific stack once (seconds of imports saved per case)
    cli = {}
    for case, _ in jobs:
        cli.setdefault(case.stage, case.id)
    cli_ids = set(cli.values())

    def run(job: tuple[Case, Path]) -> Outcome:
        case, root = job
        env = environment(case, kit)
        return Outcome(root, run_stage(case.stage, root, params=False, env=env, timeout=300))

    warm_up()
    results: dict[str, Outcome] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {c.id: pool.submit(run, (c, r)) for c, r in jobs if c.id in cli_ids}
        for case, root in jobs:
            if case.id not in cli_ids:
                env = environment(case, kit)
                results[case.id] = Outcome(
                    root, fork_stage(case.stage, root, env=env, timeout=300)
                )
        results.update({case_id: future.result() for case_id, future in futures.items()})
    return results


def stray_temporaries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp-*")) + sorted(
        str(p.relative_to(root)) for p in root.rglob("*.part")
    )


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_stops_with_one_line_and_writes_nothing(
    case: Case, outcomes: dict[str, Outcome], kit: Kit
):
    out = outcomes[case.id]
    stderr = out.proc.stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert expected_line(case, kit).fullmatch(errors[0]), errors[0]
    assert out.proc.returncode == case.exit_status, stderr
    for path in command_outputs(out.proc.args):
        assert not (out.root / path).exists(), f"{path} written"
    assert stray_temporaries(out.root) == []
    (record,) = runlog.read_records(out.root / "logs" / "runs.jsonl")
    assert (record["stage"], record["status"]) == (case.stage, "input error")


@pytest.mark.parametrize("case", [SKIPPED_BUT_RUNS], ids=lambda c: c.id)
def test_cell_type_with_too_few_donors_is_skipped_with_its_reason(
    case: Case, outcomes: dict[str, Outcome]
):
    out = outcomes[case.id]
    assert out.proc.returncode == 0, out.proc.stderr
    assert "Traceback" not in out.proc.stderr
    metrics = json.loads((out.root / "metrics/de.json").read_text())
    assert metrics["n_cell_types_tested"] == 1
    assert metrics["cell_types"]["B cell"]["skipped"] == (
        "3 donor(s) of known age, fewer than de.min_donors=6"
    )
    assert metrics["cell_types"]["T cell"]["skipped"] is None
    results = pd.read_parquet(out.root / "data/de/results.parquet")
    assert set(results["cell_type"]) == {"T cell"}


def test_catalogue_lists_every_case():
    text = (REPO / "docs" / "bad-inputs.md").read_text()
    rows = set(re.findall(r"^\| `([\w-]+)` \|", text, flags=re.MULTILINE))
    assert rows == {c.id for c in [*CASES, SKIPPED_BUT_RUNS]}
