"""Fused low-rank MLP middle: ``benchmarks/bench_mlp.py`` (record ``mlp``)."""

from __future__ import annotations

from .. import fmt
from ..results import Machine
from ..spec import Area, Bench, Need, any_field

# panther.ops.linear.mlp_kernels.EAGER_MIN_HIDDEN_BYTES (no torch import here)
EAGER_MIN_HIDDEN_BYTES = 1 << 28
ELEMENT_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2}

COLUMNS = [(k, k) for k in ("form", "M", "hidden", "r", "dtype", "unfused_ms", "inductor_ms", "fused_ms", "speedup",
                            "vs_inductor", "floor_ms", "x_floor", "rel_err")]


def _rows(machine: Machine) -> list[dict]:
    """The rows, ``form`` gelu where a record predates the swiglu rows."""
    return [{"form": "gelu", **r} for r in machine.rows("mlp")]


def tables(machine: Machine) -> list[tuple[str, str]]:
    return fmt.single_table(_rows(machine), COLUMNS)


def _shape(row: dict) -> str:
    return f"{row['form']} {row.get('M', fmt.MISSING)}×{row.get('hidden', fmt.MISSING)} r={row.get('r', fmt.MISSING)}"


def _eager_kernel(row: dict) -> bool:
    """Whether the op takes the kernel eagerly too (on CUDA): a hidden activation of ≥ 256 MiB."""
    size = ELEMENT_SIZE.get(str(row.get("dtype")), 4)
    return (row.get("M") or 0) * (row.get("hidden") or 0) * size >= EAGER_MIN_HIDDEN_BYTES


def facts(machine: Machine) -> dict[str, str]:
    rows = _rows(machine)
    eager = [_shape(r) for r in rows if _eager_kernel(r)]
    errors = [r.get("rel_err") for r in rows if r.get("rel_err") is not None]
    return {
        "speedup": fmt.span([r.get("speedup") for r in rows]),
        "vs_inductor": fmt.span([r.get("vs_inductor") for r in rows]),
        "x_floor": fmt.span([r.get("x_floor") for r in rows]),
        "rel_err": fmt.num(max(errors)) if errors else fmt.MISSING,
        "eager_rows": ", ".join(eager) or "none",
    }


AREA = Area(
    key="mlp", title="Fused low-rank MLP",
    benches=(Bench("mlp",
                   baseline=Need("`unfused_ms`: the unfused ops eagerly; `inductor_ms`: them under torch.compile, "
                                 "same run", "unfused_ms", any_field("unfused_ms")),
                   floor=Need("`floor_ms`: h, factors and u at measured bandwidth, or FLOPs at measured GEMM rate",
                              "floor_ms", any_field("floor_ms"))),),
    tables=tables, facts=facts)
