"""Plain-PyTorch references for the linear ops: the formulas as written, term by term.

Slow on purpose (4L products): tests compare the fused ops against these in float64.
"""

from __future__ import annotations



def sketched_linear_reference(x, S1s, S2s, U1s, U2s, bias=None):
    L = S1s.shape[0]
    y = sum(x @ S1s[i] @ U1s[i] + x @ U2s[i] @ S2s[i] for i in range(L)) / (2 * L)
    return y if bias is None else y + bias


def lowrank_linear_reference(x, A, B, bias=None):
    y = x @ A @ B
    return y if bias is None else y + bias
