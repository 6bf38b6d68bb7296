"""Stage ``data``: obtain the input dataset (simulate, download or adopt).

``data.source`` says where it comes from (:mod:`immune_aging.sources`):

- ``synthetic``: simulate a OneK1K-like dataset (:mod:`immune_aging.synthetic`)
  into ``dataset.h5ad``, with its ground truth ``truth.json`` and gene-set
  library ``genesets.gmt``;
- ``https://...``: download it into the download cache, validate it, and link it
  into the output folder;
- a path under the ``--external`` folder: validate it and link it (a hard link,
  or a copy where the filesystem refuses) into the output folder.

Real data get no ``truth.json`` and no ``genesets.gmt``. The download cache
(``data/.download/``) lies outside the stage's outputs because DVC deletes
outputs before running a stage: a cut download resumes from its ``.part`` file
there, and a finished one is reused.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from immune_aging import io, provenance, sources, stage
from immune_aging.params import DataParams, as_dict
from immune_aging.threads import n_threads

NAME = "data"
PATHS = {
    "external": "folder of local inputs",
    "download_cache": "folder keeping partial and finished downloads across runs",
    "out": "output folder (dataset.h5ad, ...)",
    "metrics": "metrics JSON to write",
}
log = logging.getLogger(__name__)


def body(args, params: DataParams) -> None:
    """Simulate, download or adopt the dataset; write it with metrics."""
    where = f"{args.params}: data"
    kind, value = sources.classify_source(params.source, args.external, where=f"{where}.source")
    expected = sources.expected_sha256(params.sha256, where=f"{where}.sha256")
    if kind == "synthetic" and expected:
        log.warning("data.sha256 is ignored for synthetic data")
    with io.Outputs() as out:
        folder = out.dir(args.out)
        metrics_path = out.file(args.metrics)
        if kind == "synthetic":
            metrics = _simulate(folder, params)
        else:
            metrics = sources.adopt(
                kind, value, folder / "dataset.h5ad", cache=args.download_cache, expected=expected
            )
        metrics["file_mb"] = round((folder / "dataset.h5ad").stat().st_size / 2**20, 1)
        io.write_json(metrics, metrics_path)


def _simulate(folder: Path, params: DataParams) -> dict[str, Any]:
    from immune_aging import synthetic

    uns = {
        "title": "Simulated OneK1K-like PBMC dataset with planted age effects",
        "provenance": provenance.record(NAME, as_dict(params), []),
    }
    summary = synthetic.write_simulation(
        folder, **as_dict(params.synthetic), uns=uns, threads=n_threads()
    )
    return {"source": "synthetic", "counts": "X", **summary}


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
