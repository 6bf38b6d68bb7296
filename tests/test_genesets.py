"""Resolving gene-set sources (GMT paths, cached Enrichr libraries), and the stage."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest

from immune_aging import genesets, io
from immune_aging.errors import InputError
from immune_aging.stages import genesets as genesets_stage

ALLOWED = [Path("data/raw"), Path("data/external")]
CACHE = Path("data/external/genesets")
ENRICHR_TEXT = "HALLMARK_A\t\tGENE1,1.0\tGENE2,1.0\tGENE1,1.0\nHALLMARK_B\t\tGENE3\n\t\tORPHAN\n"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with data/raw and data/external, like the repository root."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", str(tmp_path / "logs"))
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "external").mkdir(parents=True)
    io.write_gmt({"SET_A": ["A1", "A2"], "SHARED": ["S1"]}, tmp_path / "data/raw/genesets.gmt")
    io.write_gmt({"SET_B": ["B1"], "SHARED": ["S2", "S3"]}, tmp_path / "data/external/mine.gmt")
    return tmp_path


def offline(name):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def resolve(sources, fetch=offline):
    return genesets.resolve_sources(sources, allowed=ALLOWED, cache=CACHE, fetch=fetch)


def test_library_names_and_paths_are_told_apart():
    assert genesets.is_library_name("MSigDB_Hallmark_2020")
    assert genesets.is_library_name("GO_Biological_Process_2023")
    assert not genesets.is_library_name("data/raw/genesets.gmt")
    assert not genesets.is_library_name("hallmark.gmt")
    assert not genesets.is_library_name("two words")


def test_gmt_paths_are_read_and_merged_with_clashes_prefixed(project):
    libs = resolve(["data/raw/genesets.gmt", "data/external/mine.gmt"])
    assert [(lib.label, lib.kind) for lib in libs] == [("genesets", "gmt"), ("mine", "gmt")]
    sets, descriptions, renamed = genesets.merge(libs)
    assert sets == {
        "SET_A": ["A1", "A2"],
        "genesets:SHARED": ["S1"],
        "SET_B": ["B1"],
        "mine:SHARED": ["S2", "S3"],
    }
    assert descriptions["mine:SHARED"] == "mine" and renamed == 2


def test_path_outside_allowed_folders_is_refused(project):
    io.write_gmt({"X": ["G"]}, project / "elsewhere.gmt")
    with pytest.raises(InputError) as err:
        resolve(["data/raw/genesets.gmt", "elsewhere.gmt"])
    assert str(err.value) == (
        "genesets.sources[1]: elsewhere.gmt is outside data/raw/ or data/external/; put the"
        " GMT file under one of them so that DVC tracks it"
    )


def test_path_escaping_with_dotdot_is_refused(project):
    with pytest.raises(InputError, match=r"^genesets.sources\[0\]: data/raw/../x.gmt is outside"):
        resolve(["data/raw/../x.gmt"])


def test_missing_gmt_is_named(project):
    with pytest.raises(InputError) as err:
        resolve(["data/external/nope.gmt"])
    assert str(err.value) == (
        "genesets.sources[0]: data/external/nope.gmt: gene-set file not found"
    )


def test_empty_gmt_is_refused(project):
    (project / "data/external/empty.gmt").write_text("")
    with pytest.raises(InputError) as err:
        resolve(["data/external/empty.gmt"])
    assert str(err.value) == (
        "genesets.sources[0]: data/external/empty.gmt: gene-set file holds no gene set"
    )


def test_no_source_is_refused(project):
    with pytest.raises(InputError) as err:
        resolve([])
    assert str(err.value) == "genesets.sources: expected at least one GMT path or library name"


def test_unknown_library_offline_is_one_clear_error(project):
    with pytest.raises(InputError) as err:
        resolve(["data/raw/genesets.gmt", "MSigDB_Hallmark_2020"])
    assert str(err.value) == (
        "genesets.sources[1]: Enrichr library 'MSigDB_Hallmark_2020' is not cached in"
        " data/external/genesets/MSigDB_Hallmark_2020.gmt and cannot be downloaded offline"
        " ([Errno -2] Name or service not known); run once with network access or put the"
        " GMT file there"
    )
    assert not (project / CACHE).exists()


def test_real_download_offline_fails_cleanly(project, monkeypatch):
    monkeypatch.setattr(genesets, "ENRICHR_LIBRARY_URL", "http://127.0.0.1:9/?libraryName=")
    with pytest.raises(InputError, match="cannot be downloaded offline"):
        genesets.resolve_sources(["KEGG_2021_Human"], allowed=ALLOWED, cache=CACHE)


def test_library_is_downloaded_once_then_read_offline(project):
    calls = []

    def online(name):
        calls.append(name)
        return ENRICHR_TEXT

    (lib,) = resolve(["MSigDB_Hallmark_2020"], fetch=online)
    assert lib.path == CACHE / "MSigDB_Hallmark_2020.gmt" and lib.kind == "enrichr"
    assert lib.sets == {"HALLMARK_A": ["GENE1", "GENE2"], "HALLMARK_B": ["GENE3"]}
    (again,) = resolve(["MSigDB_Hallmark_2020"], fetch=offline)
    assert again.sets == lib.sets and calls == ["MSigDB_Hallmark_2020"]
    assert [p.name for p in (project / CACHE).iterdir()] == ["MSigDB_Hallmark_2020.gmt"]


def test_library_without_sets_is_refused(project):
    with pytest.raises(InputError, match="Enrichr returned no gene set for library 'Nope_2020'"):
        resolve(["Nope_2020"], fetch=lambda name: "")


def test_parse_enrichr_text_drops_weights_and_empty_lines():
    assert genesets.parse_enrichr_text(ENRICHR_TEXT) == {
        "HALLMARK_A": ["GENE1", "GENE2"],
        "HALLMARK_B": ["GENE3"],
    }


def stage_args(root):
    return [
        "--params", str(root / "params.yaml"),
        "--allowed", "data/raw", "data/external",
        "--cache", "data/external/genesets",
        "--out", "data/genesets/genesets.gmt",
        "--metrics", "metrics/genesets.json",
    ]  # fmt: skip


def test_stage_writes_merged_gmt_and_metrics(project):
    (project / "params.yaml").write_text(
        "genesets:\n  sources: [data/raw/genesets.gmt, data/external/mine.gmt]\n"
    )
    assert genesets_stage.main(stage_args(project)) == 0
    merged = io.read_gmt(project / "data/genesets/genesets.gmt")
    assert list(merged) == ["SET_A", "genesets:SHARED", "SET_B", "mine:SHARED"]
    metrics = json.loads((project / "metrics/genesets.json").read_text())
    assert metrics["n_sets"] == 4 and metrics["n_renamed"] == 2
    assert (metrics["min_size"], metrics["max_size"], metrics["n_genes"]) == (1, 2, 6)
    assert metrics["sources"]["data/external/mine.gmt"] == {
        "kind": "gmt",
        "path": "data/external/mine.gmt",
        "n_sets": 2,
        "min_size": 1,
        "max_size": 2,
    }


def test_stage_bad_source_writes_nothing(project, capsys):
    (project / "params.yaml").write_text("genesets:\n  sources: [/etc/hosts.gmt]\n")
    assert genesets_stage.main(stage_args(project)) == 2
    assert "error: genesets: genesets.sources[0]: /etc/hosts.gmt is outside" in (
        capsys.readouterr().err
    )
    assert not (project / "data/genesets").exists() and not (project / "metrics").exists()
