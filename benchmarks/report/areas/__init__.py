"""The areas of BENCHMARKS.md, in the order of the page (the ``python -m panther bench`` areas)."""

from . import attention, compile_e2e, conv, export, linalg, linear, mlp, sketch, tuner

AREAS = tuple(m.AREA for m in (linear, mlp, conv, attention, sketch, linalg, compile_e2e, tuner, export))

