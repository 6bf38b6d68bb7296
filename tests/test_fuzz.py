"""Fuzzing: seeded damage to small valid inputs never hangs, crashes or leaks a stage.

The harness is ``tests/fuzz_harness.py``: each seed damages a copy of a small h5ad
(both CELLxGENE layouts) or GMT file (zeroed, random and duplicated blocks, bit
flips in the first MiB, truncation, an HDF5 file that is not AnnData, binary
junk) and runs the stages that read it (data then filter; genesets then ora) as
``main(argv)`` in forked children with a time limit. Every case must end ``ok``
(exit 0, output validates) or ``error`` (exit 2, exactly one ``error:`` line, no
traceback, nothing written). ``bench/fuzz.py`` runs thousands of seeds.

The structural check's base CPU limit is lowered to 1 s here so that a damage
that makes HDF5 loop costs 1 s instead of 5 s (a valid walk of these files takes
a few milliseconds); ``tests/test_guard.py`` checks the default. The data stage's
validation sample is scaled down with the inputs (60 of ~400 rows), so that
damage outside it reaches filter's own checks, as on a full-size file.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from tests import fuzz_harness as fh
from tests.builders import run_stage

from immune_aging import guard, validate

#: The limits the command line runs with (the fixtures below change them).
DEFAULTS = {
    (guard, "CPU_BASE_S"): guard.CPU_BASE_S,
    **{(validate, name): getattr(validate, name) for name in fh.SAMPLE},
}
#: Seeds run in CI (bench/fuzz.py runs more).
N_CASES = int(os.environ.get("IMMUNE_AGING_FUZZ_CASES", "210"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(guard, "CPU_BASE_S", 1.0)
        fh.sample_like_a_large_file(mp.setattr)
        yield fh.make_inputs(tmp_path_factory.mktemp("fuzz-inputs"))


@pytest.fixture(scope="module")
def results(inputs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    workdir = tmp_path_factory.mktemp("fuzz")
    t0 = time.monotonic()
    done = fh.run_cases(range(N_CASES), workdir, inputs, workers=min(2, os.cpu_count() or 1))
    return {"results": done, "seconds": time.monotonic() - t0, "workdir": workdir}


@pytest.mark.parametrize(
    "plan", [("none", "counts-x"), ("none", "cellxgene-raw"), ("none", "gmt")]
)
def test_undamaged_inputs_pass_every_stage(inputs, tmp_path, plan):
    result = fh.run_case(0, tmp_path, inputs, plan=plan)
    assert result.outcome == "ok", result.as_dict()
    assert [code for _, code, _ in result.stages] == [0, 0]


def test_damage_never_hangs_crashes_or_writes(results):
    done = results["results"]
    assert len(done) == N_CASES
    other = [r.as_dict() for r in done if r.outcome == "other"]
    assert other == [], f"{len(other)} of {len(done)} cases ended otherwise: {other[:5]}"
    counts = fh.tally(done)
    print(f"\nfuzz: {N_CASES} cases in {results['seconds']:.0f} s: {counts}")
    assert counts["ok"] > 0 and counts["error"] > 0


def test_every_kind_of_damage_is_exercised(results):
    kinds = {(r.kind, r.layout) for r in results["results"]}
    for kind in fh.H5AD_KINDS[:-1]:
        assert {(kind, layout) for layout in fh.LAYOUTS} <= kinds
    assert ("not-anndata", "counts-x") in kinds or ("not-anndata", "cellxgene-raw") in kinds
    assert {(kind, "gmt") for kind in fh.GMT_KINDS} <= kinds
    errors = {r.kind for r in results["results"] if r.outcome == "error"}
    assert set(fh.H5AD_KINDS) <= errors


def test_filter_meets_damage_the_data_stage_did_not_see(results):
    """As on a full-size file, some damage lies outside the validation sample."""
    stopped = [
        r for r in results["results"] if r.outcome == "error" and r.stages[-1][0] == "filter"
    ]
    assert stopped, "no case reached filter with damage it had to stop"


def test_error_lines_name_the_stage_and_the_file(results):
    for r in results["results"]:
        if r.outcome != "error" or r.layout == "gmt":
            continue
        stage = r.detail.split(":")[1].strip()
        assert stage in ("data", "filter"), r.detail
        if "filter." in r.detail:  # a rule of the filter that the damaged data fails
            continue
        path = "data/external/dataset.h5ad" if stage == "data" else "data/raw/dataset.h5ad"
        assert r.detail.startswith(f"error: {stage}: {path}: "), r.detail


def _end_to_end(root: Path, stage: str) -> subprocess.CompletedProcess:
    return run_stage(stage, root, params=False, timeout=300)


def test_forked_stages_behave_as_the_command_line(results, inputs, tmp_path, monkeypatch):
    """Rerun cases as `python -m` processes: the same exit statuses and error lines.

    Both runs use the command line's limits and validation sample here.
    """
    for (module, name), value in DEFAULTS.items():
        monkeypatch.setattr(module, name, value)
    done = [r for r in results["results"] if r.layout != "gmt" and r.kind != "truncate"]
    picked = [
        next(r for r in done if r.outcome == "ok"),
        next(r for r in done if r.outcome == "error" and r.stages[-1][0] == "data"),
        next(r for r in done if r.outcome == "error" and r.stages[-1][0] == "filter"),
    ]
    for r in picked:
        forked = fh.run_case(r.seed, tmp_path / "forked", inputs)
        assert forked.outcome != "other", forked.as_dict()
        root = tmp_path / f"seed-{r.seed}"
        fh.prepare(r.seed, root, inputs)
        for stage, code, _ in forked.stages:
            proc = _end_to_end(root, stage)
            assert proc.returncode == code, proc.stderr
            if code == 2:
                errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
                assert errors == [forked.detail], proc.stderr
