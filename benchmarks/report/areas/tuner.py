"""Tuner on a pretrained model: ``benchmarks/bench_tuner.py`` (record ``tuner``)."""

from __future__ import annotations

from .. import fmt
from ..results import Machine
from ..rows import groups
from ..spec import Area, Bench, Need, any_field

COLUMNS = [(k, k) for k in ("model", "budget", "objective", "sketched", "inits", "cal_error", "heldout_error",
                            "cos_mean", "cos_min", "flop_reduction", "dense_ms", "tuned_ms", "speedup",
                            "dense_linears_floor_ms", "linears_floor_ms", "tune_s")]


def _rows(machine: Machine) -> list[dict]:
    return machine.rows("tuner")


def tables(machine: Machine) -> list[tuple[str, str]]:
    return fmt.single_table(_rows(machine), COLUMNS)


def _model_line(model: str, rows: list[dict]) -> str:
    speed = [r.get("speedup") for r in rows]
    line = (f"- {model}: {fmt.span(speed)} the dense model's speed at held-out errors "
            f"{fmt.span([r.get('heldout_error') for r in rows], '.2g', '')}, with "
            f"{fmt.span([r.get('flop_reduction') for r in rows])} fewer linear-layer FLOPs")
    known = [s for s in speed if s is not None]
    return line + (" — not faster than the dense model on this machine." if known and max(known) < 1 else ".")


def _large_note(rows: list[dict]) -> str:
    """On the synthetic MLP of ``--large``, whose tuning time is the SVDs; or how to get it."""
    if any(str(r.get("model", "")).startswith("MLP") for r in rows):
        return ("The large MLP's tuning time is dominated by the SVDs of its weights (computed once per weight "
                "and reused across ranks) and by evaluating candidate plans on the CPU.")
    return "This run has no `--large` rows (the synthetic MLP with layers large enough for sketching to pay)."


def facts(machine: Machine) -> dict[str, str]:
    rows = _rows(machine)
    return {"per_model": "\n".join(_model_line(m, same) for m, same in groups(rows, "model").items()) or fmt.MISSING,
            "large_note": _large_note(rows)}


AREA = Area(
    key="tuner", title="Tuner on a pretrained model",
    benches=(Bench("tuner",
                   baseline=Need("`dense_ms`: the dense model, timed alternately with the sketched one", "dense_ms",
                                 any_field("dense_ms")),
                   floor=Need("`linears_floor_ms`: the tuned model's linears at the measured bandwidth/GEMM rate",
                              "linears_floor_ms", any_field("linears_floor_ms"))),),
    tables=tables, facts=facts, devices=("cpu",))
