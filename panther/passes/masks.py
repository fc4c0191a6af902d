"""Proving that an SDPA ``attn_mask`` is a key-padding mask, and recovering it as [B, S].

FAVOR+ can drop keys (``key_padding_mask`` [B, S]) and apply the causal triangle, nothing
else: a mask whose value at [b, h, n, s] depends on h or n (other than the exact causal
triangle) must stay dense. The pattern is data, unknown when compiling, so it is proved from
the graph: each producer of the mask gets a fact (``mask_facts.py``: along which dims the
value is constant, which values it can hold, whether it is an ``arange`` index or holds a
causal triangle), derived from its inputs' facts by rules per op. An op without a rule is a
leaf: constant only along its size-1 dims, any value of its dtype. Every rule may only lose
precision, never claim more, so a proof stands whatever the data.

Once proved, the [B, S] mask is read off the attn_mask tensor itself (one query row of it,
which is the whole pattern) — nothing is rebuilt, so no rule has to reproduce an op.

Values: a bool mask is always readable (True = attend, SDPA's convention, negated for
``key_padding_mask``). An additive float mask is accepted only when every value it can hold
is 0 or at most :data:`MASKED_AT_MOST` — provable when it is built from a bool tensor (or by
``x.masked_fill(x.bool(), big_negative)``) with constants; a float mask from data (a user's
float tensor, ``(1 - long_mask) * min``) might hold anything and stays dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from .mask_facts import Analysis, Unproven, same, value_of

aten = torch.ops.aten

# An additive value v <= -1e4 counts as "masked": exp(v + score) is 0 in every float dtype unless
# the score exceeds all unmasked scores by ~1e4, so dense SDPA gives such a key no weight.
# HF's sentinels (finfo.min, -1e4 in older models, -inf) all qualify; 0 means "attend".
MASKED_AT_MOST = -1e4


@dataclass(frozen=True)
class KeyPadding:
    """A proved key-padding ``mask`` node: bool (True = attend) or additive; with the causal triangle."""

    mask: fx.Node
    additive: bool
    causal: bool
    rank: int


def key_padding(mask: fx.Node, q: torch.Tensor, k: torch.Tensor) -> KeyPadding:
    """Proves ``mask`` (SDPA's attn_mask for q [B, H, N, D], k [B, H, S, D]) a key-padding mask,
    possibly with the causal triangle; raises :class:`Unproven` with the reason otherwise."""
    m = value_of(mask)
    if not isinstance(m, torch.Tensor):
        raise Unproven("has no recorded value")
    if m.dtype != torch.bool and not m.is_floating_point():
        raise Unproven(f"is {m.dtype}, neither bool nor floating")
    r = m.dim()
    if not 1 <= r <= 4:
        raise Unproven(f"has {r} dims (expected 1 to 4, broadcast to [B, H, N, S])")
    try:
        fact = Analysis().fact(mask)
    except Unproven:
        raise
    except Exception as err:  # noqa: BLE001 — a graph shape no rule foresaw: not proved, so dense
        raise Unproven(f"could not be analysed ({type(err).__name__}: {err})") from err
    causal = False
    if fact.causal is not None:
        if fact.causal != (r - 2, r - 1) or not same(q.shape[2], k.shape[2]):
            raise Unproven("holds a triangle other than the causal mask of equal query and key lengths")
        causal = True
    axes = {r - 3: "head", r - 2: "query"}
    for dim, axis in axes.items():
        if dim >= 0 and not fact.inv[dim]:
            raise Unproven(f"may vary along the {axis} axis, so it is not a key-padding mask (FAVOR+ applies "
                           "only key padding and the causal triangle)")
    additive = m.dtype != torch.bool
    if additive:
        if fact.values is None:
            raise Unproven("is an additive float mask whose values come from data: not provably 0 (attend) or "
                           f"<= {MASKED_AT_MOST:g} (masked)")
        odd = sorted(v for v in fact.values if not (v == 0 or v <= MASKED_AT_MOST))
        if odd:
            raise Unproven(f"is an additive float mask that can hold {odd[:3]}: neither 0 (attend) nor "
                           f"<= {MASKED_AT_MOST:g} (masked)")
    return KeyPadding(mask, additive, causal, r)


def emit_key_padding(emit, kp: KeyPadding, key: fx.Node, like: fx.Node) -> fx.Node:
    """The [B, S] bool ``key_padding_mask`` (True = masked out) read off the proved mask.

    One query row of the (broadcast) mask is the whole pattern: any row of a padding mask;
    the last row of a causal one, where every key is causally visible (N = S).
    """
    x, r = kp.mask, kp.rank
    if r >= 2:
        x = emit.call(aten.select.int, (x, r - 2, -1 if kp.causal else 0), like)
    if r >= 3:
        x = emit.call(aten.select.int, (x, r - 3, 0), like)
    x = emit.call(aten.ne.Scalar, (x, 0), like) if kp.additive else emit.call(aten.logical_not.default, (x,), like)
    if r < 4:
        x = emit.call(aten.unsqueeze.default, (x, 0), like)
    k = value_of(key)
    have = value_of(x).shape
    if not (same(have[0], k.shape[0]) and same(have[1], k.shape[2])):
        sizes = [k.shape[d] if isinstance(k.shape[d], int) else emit.call(aten.sym_size.int, (key, d), like)
                 for d in (0, 2)]
        x = emit.call(aten.expand.default, (x, sizes), like)
    return x


def emit_empty_rows_zero(emit, out: fx.Node, padding: fx.Node, causal: bool, like: fx.Node) -> fx.Node:
    """``out`` with 0 for queries that see no key, as SDPA returns there; FAVOR+ gives 0/0.

    Such rows are padding (a sample of padding only; with causal masks, queries before the
    first kept key, i.e. left padding), but a NaN there would reach every query of the
    sample in the next layer, through keys that are masked yet still multiplied by 0.
    """
    if causal:  # query n sees keys s <= n: empty while no kept key has come yet (N = S)
        kept = emit.call(aten.cumsum.default, (emit.call(aten.logical_not.default, (padding,), like), -1), like)
        empty = emit.call(aten.eq.Scalar, (kept, 0), like)  # [B, N]
        empty = emit.call(aten.unsqueeze.default, (emit.call(aten.unsqueeze.default, (empty, 1), like), -1), like)
    else:
        empty = emit.call(aten.all.dim, (padding, -1, True), like)  # [B, 1]
        empty = emit.call(aten.unsqueeze.default, (emit.call(aten.unsqueeze.default, (empty, -1), like), -1), like)
    return emit.call(aten.masked_fill.Scalar, (out, empty, 0.0), like)
