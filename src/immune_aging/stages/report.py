"""Stage ``report``: one self-contained HTML page of the whole pipeline's results.

Reads every stage's metrics JSON, figures (PNG, embedded as data URIs) and CSV
series, the DE/GSEA/ORA tables, the provenance of the h5ad checkpoints and the
parameters (with their comments) from ``params.yaml``; writes ``--out``. A missing
input makes its section say "not run". No timestamps: reruns give the same bytes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from immune_aging import io, stage
from immune_aging.report import build_report, read_all

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the report's paths to the stage parser.

    Parameters
    ----------
    p
        The stage's argument parser.
    """
    p.add_argument(
        "--metrics", nargs="*", type=Path, default=[], help="metrics/<stage>.json files"
    )
    p.add_argument("--plots", nargs="*", type=Path, default=[], help="plots/<stage> folders")
    p.add_argument("--de", type=Path, required=True, help="DE results (parquet)")
    p.add_argument("--gsea", type=Path, required=True, help="GSEA results (parquet)")
    p.add_argument("--ora", type=Path, required=True, help="ORA results (parquet)")
    p.add_argument(
        "--provenance",
        nargs="*",
        type=Path,
        default=[],
        help="h5ad checkpoints whose uns['provenance'] is shown",
    )
    p.add_argument("--out", type=Path, required=True, help="the HTML page to write")


def body(args: argparse.Namespace, params) -> None:
    """Read every result, build the page and write it atomically.

    Parameters
    ----------
    args
        Parsed command line.
    params
        The ``report`` section (:class:`immune_aging.params.ReportParams`).
    """
    inputs = read_all(
        params_file=args.params,
        metrics=args.metrics,
        plots=args.plots,
        de=args.de,
        gsea=args.gsea,
        ora=args.ora,
        provenance=args.provenance,
    )
    page = build_report(inputs, title=params.title, top_n=params.top_n)
    with io.Outputs() as out:
        out.file(args.out).write_text(page, encoding="utf-8")
    log.info("wrote %s (%.1f MB)", args.out, len(page.encode("utf-8")) / 1e6)


main = stage.main_for(
    "report",
    "Build the self-contained HTML report of every stage's results.",
    add_arguments,
    body,
)

if __name__ == "__main__":
    sys.exit(main())
