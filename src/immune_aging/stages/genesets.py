"""Stage ``genesets``: resolve the gene-set sources into one GMT library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from immune_aging import genesets, io, stage

NAME = "genesets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the stage's paths."""
    p.add_argument(
        "--allowed",
        type=Path,
        nargs="+",
        required=True,
        help="folders GMT sources must lie under (the stage's DVC dependencies)",
    )
    p.add_argument("--cache", type=Path, required=True, help="Enrichr library cache folder")
    p.add_argument("--out", type=Path, required=True, help="merged GMT")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON")


def _sizes(sets: dict[str, list[str]]) -> dict[str, int | None]:
    sizes = [len(g) for g in sets.values()]
    return {
        "n_sets": len(sizes),
        "min_size": min(sizes) if sizes else None,
        "max_size": max(sizes) if sizes else None,
    }


def body(args: argparse.Namespace, params: Any) -> None:
    """Resolve every source, merge them and write the GMT and its metrics."""
    libraries = genesets.resolve_sources(params.sources, allowed=args.allowed, cache=args.cache)
    sets, descriptions, renamed = genesets.merge(libraries)
    metrics = {
        "sources": {
            lib.source: {"kind": lib.kind, "path": lib.path.as_posix(), **_sizes(lib.sets)}
            for lib in libraries
        },
        **_sizes(sets),
        "n_genes": len({g for genes in sets.values() for g in genes}),
        "n_renamed": renamed,
    }
    with io.Outputs() as out:
        io.write_gmt(sets, out.file(args.out), descriptions=descriptions)
        io.write_json(metrics, out.file(args.metrics))


main = stage.main_for(NAME, __doc__.splitlines()[0], add_arguments, body)

if __name__ == "__main__":
    sys.exit(main())
