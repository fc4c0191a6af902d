"""``python -m benchmarks.report``: see :mod:`benchmarks.report`."""

from __future__ import annotations

import argparse
import sys

from . import __doc__ as DOC
from .build import build
from .results import ReportError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=DOC.splitlines()[0])
    p.add_argument("--results", default="benchmarks/results",
                   help="folder of machine folders of benchmark JSON, or one machine's folder (default %(default)s)")
    p.add_argument("--out", default="BENCHMARKS.md", help="the page to write (default %(default)s)")
    p.add_argument("--img", default=None, help="folder for the PNG plots (default: docs/img beside --out)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        build(args.results, args.out, args.img)
    except ReportError as err:
        p.error(str(err))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
