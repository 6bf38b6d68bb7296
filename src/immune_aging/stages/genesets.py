"""Stage ``genesets``: resolve the gene-set sources into one GMT library.

Sources are GMT files under the allowed folders or Enrichr library names, cached
for offline use (:mod:`immune_aging.genesets`).
"""

from __future__ import annotations

import sys

from immune_aging import genesets, io, stage
from immune_aging.params import GenesetsParams

NAME = "genesets"
PATHS = {
    "allowed": stage.Many("folders GMT sources must lie under (the stage's DVC dependencies)"),
    "cache": "Enrichr library cache folder",
    "out": "merged GMT",
    "metrics": "metrics JSON",
}


def body(args, params: GenesetsParams) -> None:
    """Resolve every source, merge them and write the GMT and its metrics."""
    libraries = genesets.resolve_sources(params.sources, allowed=args.allowed, cache=args.cache)
    sets, descriptions, renamed = genesets.merge(libraries)
    with io.Outputs() as out:
        io.write_gmt(sets, out.file(args.out), descriptions=descriptions)
        io.write_json(genesets.summary(libraries, sets, renamed), out.file(args.metrics))


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
