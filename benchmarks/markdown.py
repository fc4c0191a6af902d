"""Markdown tables from benchmark JSON files (as written by ``harness.report``), for BENCHMARKS.md.

    python -m benchmarks.markdown OUT/linear_cuda.json [--columns tokens,in,out,...] [--where mode=fwd]
"""

from __future__ import annotations

import argparse
import json

from tabulate import tabulate


def render(record: dict, columns: list[str] | None = None, where: dict[str, str] | None = None) -> str:
    rows = [r for r in record["rows"] if all(str(r.get(k)) == v for k, v in (where or {}).items())]
    if columns:
        rows = [{c: r.get(c) for c in columns} for r in rows]
    head = (f"{record['device_name']}, torch {record['torch']}"
            + (f", Triton {record['triton']}" if "triton" in record else "")
            + f", measured {record['when']}: `{record['command'].split(' --out')[0]}`")
    return head + "\n\n" + tabulate(rows, headers="keys", floatfmt=".4g", tablefmt="github") + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--columns", default=None, help="comma-separated columns to keep, in order")
    p.add_argument("--where", action="append", default=[], help="keep rows with column=value (repeatable)")
    args = p.parse_args(argv)
    where = dict(w.split("=", 1) for w in args.where)
    columns = args.columns.split(",") if args.columns else None
    for path in args.files:
        with open(path) as f:
            print(render(json.load(f), columns, where))


if __name__ == "__main__":
    main()
