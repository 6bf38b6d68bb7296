"""The params loader: every section of params.yaml validates; bad entries give one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.builders import REPO, tiny_params, write_params

from immune_aging.errors import ParamsError
from immune_aging.params import SECTIONS, as_dict, load_all, load_section, parse_section


def test_repository_params_are_valid():
    loaded = load_all(REPO / "params.yaml")
    assert set(loaded) == set(SECTIONS)
    assert loaded["filter"].cutoff_percentile == 1.0
    assert loaded["data"].synthetic.n_donors >= 40


def test_tiny_preset_is_valid(tmp_path):
    load_all(write_params(tmp_path / "params.yaml", tiny_params()))


def test_every_key_in_params_yaml_is_commented():
    """Each key line of params.yaml carries a comment, on the line or just above it."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        key, _, value = stripped.partition(":")
        if not value.strip() or value.strip().startswith("#"):
            continue  # a section header
        above = lines[i - 1].strip() if i else ""
        assert "#" in value or above.startswith("#"), (
            f"params.yaml line {i + 1}: {key} has no comment"
        )


def _params_with(tmp_path: Path, section: str, **changes) -> Path:
    params = tiny_params()
    params[section] = {**params[section], **changes}
    return write_params(tmp_path / "params.yaml", params)


@pytest.mark.parametrize(
    ("section", "changes", "message"),
    [
        (
            "filter",
            {"cutoff_percentil": 1.0},
            "filter.cutoff_percentil: unknown key (did you mean 'cutoff_percentile'?)",
        ),
        ("qc", {"max_genes": "many"}, "qc.max_genes: expected an integer >= 1, got 'many'"),
        ("qc", {"max_genes": 2.5}, "qc.max_genes: expected an integer >= 1, got 2.5"),
        (
            "filter",
            {"percent_donors": 1.5},
            "filter.percent_donors: expected a number > 0.0 and <= 1.0, got 1.5",
        ),
        (
            "qc",
            {"thresholds": "median"},
            "qc.thresholds: expected one of 'fixed', 'mad', got 'median'",
        ),
        ("cluster", {"resolution": True}, "cluster.resolution: expected a number > 0.0, got True"),
        (
            "genesets",
            {"sources": "data/raw/genesets.gmt"},
            "genesets.sources: expected a list, got 'data/raw/genesets.gmt'",
        ),
        (
            "de",
            {"covariates": ["sex", "batch"]},
            "de.covariates: unknown covariate 'batch' (expected some of sex, pool)",
        ),
        ("de", {"covariates": ["sex", "sex"]}, "de.covariates: a covariate is listed twice"),
        (
            "pseudobulk",
            {"censored_age": "bound"},
            "pseudobulk.censored_age: expected one of 'assign', 'drop', got 'bound'",
        ),
        (
            "filter",
            {"prevalence": "donors"},
            "filter.prevalence: expected one of 'cell_types', 'samples', got 'donors'",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path, section, changes, message):
    path = _params_with(tmp_path, section, **changes)
    with pytest.raises(ParamsError) as err:
        load_section(section, path)
    assert str(err.value) == f"{path}: {message}"


def test_missing_key_is_named(tmp_path):
    params = tiny_params()
    del params["qc"]["max_pct_hb"]
    path = write_params(tmp_path / "params.yaml", params)
    with pytest.raises(ParamsError, match=r"qc\.max_pct_hb: missing key$"):
        load_section("qc", path)


def test_nested_section_is_checked(tmp_path):
    params = tiny_params()
    params["data"]["synthetic"]["n_donors"] = 1
    path = write_params(tmp_path / "params.yaml", params)
    with pytest.raises(
        ParamsError, match=r"data\.synthetic\.n_donors: expected an integer >= 2, got 1$"
    ):
        load_section("data", path)


def test_unknown_section_is_named(tmp_path):
    path = write_params(tmp_path / "params.yaml", {**tiny_params(), "qcc": {}})
    with pytest.raises(ParamsError, match=r"qcc: unknown section \(did you mean 'qc'\?\)"):
        load_all(path)


def test_missing_section_and_file(tmp_path):
    path = write_params(tmp_path / "params.yaml", {"data": tiny_params()["data"]})
    with pytest.raises(ParamsError, match="section 'qc' is missing"):
        load_section("qc", path)
    with pytest.raises(ParamsError, match="cannot read parameters"):
        load_section("qc", tmp_path / "absent.yaml")


def test_not_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("qc: [unclosed\n")
    with pytest.raises(ParamsError, match="is not valid YAML"):
        load_section("qc", path)


def test_int_accepted_for_float_and_roundtrip():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["preprocess"]
    raw["target_sum"] = 10000
    parsed = parse_section("preprocess", raw)
    assert parsed.target_sum == 10000.0
    assert isinstance(parsed.target_sum, float)
    assert as_dict(parsed)["n_top_genes"] == raw["n_top_genes"]


def test_nullable_field(tmp_path):
    path = _params_with(tmp_path, "qc", pool_key="pool")
    assert load_section("qc", path).pool_key == "pool"
    path = _params_with(tmp_path, "qc", pool_key=None)
    assert load_section("qc", path).pool_key is None
