"""The per-node table: what each candidate is, what the plan made of it, and what it saves.

"est. speedup" is the ratio of multiply-adds, an upper bound: the sketched layers are
memory-bound at small ranks, where the real gain follows bytes rather than FLOPs.
"""

from __future__ import annotations

from tabulate import tabulate

from ..plan import Plan
from .candidates import Candidate
from .planning import costs


def _decision(cand: Candidate, plan: Plan, rewritten: set) -> str:
    if not cand.eligible:
        return f"kept: {cand.reason}"
    spec = plan.get(cand.name)
    if spec is None:
        return "dense"
    if cand.node is not None and rewritten and cand.node not in rewritten:
        return "dense (rewrite failed)"
    if cand.kind == "attention":
        return f"FAVOR+ m={spec.low_rank}"
    return f"sketch L={spec.num_terms} k={spec.low_rank} {spec.init}"


def rows(candidates: list[Candidate], plan: Plan, rewritten=None) -> list[dict]:
    """One dict per candidate node (name, kind, shape, decision, params, reductions, est. speedup)."""
    done = set(rewritten or ())
    out = []
    for cand in candidates:
        spec = plan.get(cand.name) if cand.eligible else None
        c = costs(cand, spec) if cand.eligible else None
        row = {"node": cand.node.name if cand.node is not None else "", "layer": cand.name, "kind": cand.kind,
               "shape": cand.shape_text, "decision": _decision(cand, plan, done)}
        if c and c["params"]:
            row["params"] = f"{c['params']:,} -> {c['sketch_params']:,}"
            row["param red."] = f"{c['params'] / max(c['sketch_params'], 1):.2f}x"
        else:
            row["params"], row["param red."] = "", ""
        row["FLOP red. / est. speedup"] = f"{c['flops'] / max(c['sketch_flops'], 1):.2f}x" if c else ""
        out.append(row)
    return out


def format_table(table_rows: list[dict], title: str = "") -> str:
    body = tabulate(table_rows, headers="keys", tablefmt="github") if table_rows else "(no candidate nodes)"
    return f"{title}\n{body}" if title else body
