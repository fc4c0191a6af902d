"""Randomized linear algebra: ``benchmarks/bench_linalg.py`` (records ``cqrrpt`` and ``rsvd``)."""

from __future__ import annotations

from .. import fmt
from ..results import Machine
from ..rows import groups, ratio, value
from ..spec import Area, Bench, Need, any_field, row_with

QR_COLUMNS = [(k, k) for k in ("op", "dtype", "m", "n", "ms", "cqrrpt speedup", "rel recon err", "orth err")]
SVD_COLUMNS = [(k, k) for k in ("op", "dtype", "m", "n", "k", "p", "iters", "ms", "err / optimal")]
OURS, PEER = "panther randomized_svd", "torch.svd_lowrank"


def tables(machine: Machine) -> list[tuple[str, str]]:
    out = []
    if machine.rows("cqrrpt"):
        out.append(("CQRRPT (pivoted QR of a tall matrix)", fmt.table(machine.rows("cqrrpt"), QR_COLUMNS)))
    if machine.rows("rsvd"):
        out.append(("randomized SVD", fmt.table(machine.rows("rsvd"), SVD_COLUMNS)))
    return out


def _qr_speedups(rows: list[dict]) -> str:
    peers = groups([r for r in rows if r.get("op") != "cqrrpt"], "op")
    return "; ".join(f"{op} {fmt.span([r.get('cqrrpt speedup') for r in peer], '.3g')}"
                     for op, peer in peers.items()) or fmt.MISSING


def _svd_time_ratio(rows: list[dict]) -> str:
    shapes = groups(rows, "dtype")
    parts = []
    for dtype, same in shapes.items():
        for m, n in dict.fromkeys((r.get("m"), r.get("n")) for r in same):
            t = ratio(value(same, "ms", op=OURS, m=m, n=n), value(same, "ms", op=PEER, m=m, n=n))
            parts.append(f"{m}×{n} {dtype} {fmt.times(t)}")
    return ", ".join(parts) or fmt.MISSING


def _svd(rows: list[dict]) -> str:
    if not rows:
        return "No randomized-SVD results from this machine."
    return (f"Randomized SVD, time of panther's over `torch.svd_lowrank`'s: {_svd_time_ratio(rows)} (errors "
            f"{fmt.span([r.get('err / optimal') for r in rows], '.4g', '')} × the optimal rank-k error).")


def _qr(rows: list[dict]) -> str:
    if not rows:
        return "No CQRRPT results from this machine."
    return f"CQRRPT's speed-up over each peer: {_qr_speedups(rows)}."


def facts(machine: Machine) -> dict[str, str]:
    return {"qr": _qr(machine.rows("cqrrpt")), "svd": _svd(machine.rows("rsvd"))}


_FLOOR = Need("`floor ms`: two GEMMs of 2mn² FLOPs at the measured rate", "floor ms", any_field("floor ms", "floor_ms", "x floor", "x_floor"))
AREA = Area(
    key="linalg", title="Randomized linear algebra",
    benches=(Bench("cqrrpt", baseline=Need("`cqrrpt speedup`: peer QR time / CQRRPT time, same run", "cqrrpt speedup",
                                           any_field("cqrrpt speedup")), floor=_FLOOR),
             Bench("rsvd", baseline=Need("`torch.svd_lowrank` rows, same run", "a torch.svd_lowrank row",
                                         row_with("op", PEER)), floor=_FLOOR)),
    tables=tables, facts=facts)
