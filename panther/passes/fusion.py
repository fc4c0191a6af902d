"""Horizontal fusion: sketched linears that read the same tensor share one x·A product.

Attention's q/k/v projections and an MLP's gate/up projections read one input. Once each
is a low-rank product x·A_i·B_i, the n thin GEMMs x·A_i (each reading all of x, the big
operand) become one x·[A_1 … A_n], which reads x once; the small products ·B_i follow on
slices. Found by graph analysis: same input node, same dtype and device.
"""

from __future__ import annotations

from .candidates import Candidate


def shared_input_groups(linears: list[Candidate]) -> list[list[Candidate]]:
    """Groups (in graph order, two or more members) of linear candidates reading the same node."""
    by_input: dict = {}
    for cand in linears:
        x = cand.info.get("input")
        if x is None or cand.weight is None:
            continue
        key = (x, cand.weight.dtype, cand.weight.device)
        by_input.setdefault(key, []).append(cand)
    groups = [group for group in by_input.values() if len(group) > 1]
    order = {node: i for i, node in enumerate(groups[0][0].node.graph.nodes)} if groups else {}
    return [sorted(group, key=lambda c: order[c.node]) for group in groups]
