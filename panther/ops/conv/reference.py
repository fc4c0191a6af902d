"""Plain-PyTorch reference for sketched_conv2d: the sum of per-term convolutions.

Slow on purpose: one F.conv2d per sketch term j, with the term's effective kernel
W_j[o] = sum_r U1s[j, r, o] S1s[g(o)*2Lk + j*k + r] (block-diagonal over groups), padded
with F.pad in the requested mode. Tests compare the op against it in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def sketched_conv2d_reference(x, S1s, U1s, bias, stride, padding, dilation, groups, padding_mode):
    two_L, k, C_out = U1s.shape
    C_og = C_out // groups
    xp = F.pad(x, list(padding), mode=_PAD_MODE[padding_mode])
    S = S1s.reshape(groups, two_L, k, *S1s.shape[1:])  # [G, 2L, k, C_in/G, kh, kw]
    y = 0
    for j in range(two_L):
        # per group g: W_j[g, c] = sum_r U1s[j, r, g*C_og + c] * S[g, j, r]
        U = U1s[j].reshape(k, groups, C_og)  # [k, G, C_og]
        W_j = torch.einsum("rgc,grihw->gcihw", U, S[:, j]).reshape(C_out, *S1s.shape[1:])
        y = y + F.conv2d(xp, W_j, None, stride, 0, dilation, groups)
    y = y / two_L
    return y if bias is None else y + bias[:, None, None]
