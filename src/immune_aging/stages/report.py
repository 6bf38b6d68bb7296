"""Stage ``report``: one self-contained HTML page of the whole pipeline's results.

Reads every stage's metrics JSON, figures (PNG, embedded as data URIs) and CSV
series, the DE/GSEA/ORA tables, the provenance of the h5ad checkpoints and the
parameters (with their comments) from ``params.yaml``; writes ``--out``. A missing
input makes its section say "not run". No timestamps: reruns give the same bytes.
"""

from __future__ import annotations

import logging
import sys

from immune_aging import io, stage
from immune_aging.params import ReportParams
from immune_aging.report import build_report, read_all

NAME = "report"
PATHS = {
    "metrics": stage.Many("metrics/<stage>.json files", optional=True),
    "plots": stage.Many("plots/<stage> folders", optional=True),
    "de": "DE results (parquet)",
    "gsea": "GSEA results (parquet)",
    "ora": "ORA results (parquet)",
    "provenance": stage.Many("h5ad checkpoints whose uns['provenance'] is shown", optional=True),
    "out": "the HTML page to write",
}
log = logging.getLogger(__name__)


def body(args, params: ReportParams) -> None:
    """Read every result, build the page and write it atomically."""
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


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
