"""BENCHMARKS.md, generated end to end from the benchmarks' JSON results.

    python -m benchmarks.report [--results benchmarks/results] [--out BENCHMARKS.md] [--img docs/img]

``--results`` holds one folder per machine (``cpu/``, ``h200/``: what ``python -m panther bench``
and ``benchmarks/gpu_all.sh`` write), or is one machine's folder. The prose around the numbers
lives in ``templates/<area>.md``; every number in it is computed from the JSON by the area's
module in ``areas/``; targets are in ``targets.py``.
"""

from .build import build, render

__all__ = ["build", "render"]
