"""RandMultiHeadAttention (FAVOR+ / Performer) and make_performer, over panther's attention op."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import one_of, positive_int
from ..ops.attention import orthogonal_random_features, triton_available
from ..ops.attention.checks import KERNEL_FNS


def _check_bool_mask(mask, name: str) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{name} must be a bool tensor (True = masked out, as in nn.MultiheadAttention), got {got}")


def split_attention_mask(mask: torch.Tensor, batch: int, L: int, S: int):
    """(causal, key_padding_mask or None) equal to a boolean ``mask`` [L, S] or [B, L, S].

    Random-feature attention never forms the L×S weights, so it can apply only masks that
    are a key-padding mask (every query row the same), the causal mask (``s > l`` masked),
    or the union of both. Anything else raises ValueError instead of being ignored.
    This inspects the mask's values: under torch.compile pass ``key_padding_mask`` and
    ``iscausal`` instead.
    """
    if mask.dim() not in (2, 3) or tuple(mask.shape[-2:]) != (L, S) or (mask.dim() == 3 and mask.shape[0] != batch):
        raise ValueError(f"attention_mask must have shape (L, S) = ({L}, {S}) or (B, L, S) = ({batch}, {L}, {S}), "
                         f"got {tuple(mask.shape)}")
    m = mask.expand(batch, L, S)
    padding = m[:, 0, :]
    if torch.equal(m, padding[:, None, :].expand(batch, L, S)):
        return False, (padding if bool(padding.any()) else None)
    if L == S:
        upper = torch.ones(L, S, dtype=torch.bool, device=mask.device).triu(1)
        padding = m[:, -1, :]  # the last query sees every key the causal mask allows
        if torch.equal(m, upper[None] | padding[:, None, :]):
            return True, (padding if bool(padding.any()) else None)
    raise ValueError(
        "attention_mask has a pattern random-feature attention cannot apply: supported are key-padding masks "
        "(the same masked keys for every query), the causal mask (True above the diagonal) and their union. "
        "Use nn.MultiheadAttention for arbitrary masks.")


class RandMultiHeadAttention(nn.Module):
    r"""Multi-head attention with FAVOR+ random features (Performer; Choromanski et al. 2021).

    softmax(q kᵀ/√d) is replaced by φ(q)·φ(k)ᵀ with m positive orthogonal random features
    (``kernel_fn="softmax"``) or ReLU features (``"relu"``), so attention costs
    O(N·m·d) instead of O(N²·d); causal attention runs by chunks.

    Args:
        embed_dim, num_heads: as in nn.MultiheadAttention (embed_dim divisible by num_heads).
        num_random_features: m, the number of random features per head (``sketch_dim`` is
            accepted as another name for it).
        dropout: probability of dropping attention weights in training. The L×S weights are
            never formed, so a dropped weight (l, s) is dropped for every query l of a head:
            the value row s is zeroed (and survivors scaled by 1/(1-p)), which is
            nn.MultiheadAttention's dropout with one mask per key.
        bias: learn biases of the input and output projections.
        kernel_fn: ``"softmax"`` (unbiased softmax estimate) or ``"relu"``.
        iscausal: causal self-attention (query l sees keys s <= l).
        kdim, vdim: feature sizes of key and value (default embed_dim).
        batch_first: inputs (B, L, E) (default, as the earlier Panther) or (L, B, E).
        generator: torch.Generator for the random features and weight init.
        chunk_size: tokens per chunk of the causal algorithm (0 = the kernel's default).

    Parameters ``Wq [E, E]``, ``Wk [E, kdim]``, ``Wv [E, vdim]``, ``W0 [E, E]`` and biases
    ``bq, bk, bv, b0``; buffer ``projection_matrix [m, E/num_heads]``, drawn once (call
    :meth:`redraw_projection` to redraw, e.g. every few hundred training steps).

    Masks use nn.MultiheadAttention's boolean convention: True = masked out.
    ``key_padding_mask [B, S]`` masks keys; ``attention_mask`` ([L, S] or [B, L, S]) may be
    a key-padding pattern, the causal pattern or their union, anything else raises
    ValueError. A query whose keys are all masked gets NaN, as in nn.MultiheadAttention.

    forward returns ``(output, None)``: attention weights are never formed.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_random_features: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        kernel_fn: str = "softmax",
        iscausal: bool = False,
        device=None,
        dtype=None,
        *,
        sketch_dim: int | None = None,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = True,
        generator: torch.Generator | None = None,
        chunk_size: int = 0,
    ) -> None:
        super().__init__()
        if num_random_features is None and sketch_dim is None:
            raise TypeError("RandMultiHeadAttention needs num_random_features (or its other name, sketch_dim)")
        if num_random_features is not None and sketch_dim is not None and num_random_features != sketch_dim:
            raise ValueError(f"num_random_features={num_random_features} and sketch_dim={sketch_dim} name the same "
                             "number: give one of them")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.num_heads = positive_int(num_heads, "num_heads")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.num_random_features = positive_int(
            num_random_features if num_random_features is not None else sketch_dim, "num_random_features")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        for flag, name in ((bias, "bias"), (iscausal, "iscausal"), (batch_first, "batch_first")):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        self.kernel_fn = one_of(kernel_fn, "kernel_fn", set(KERNEL_FNS))
        self.kdim = positive_int(kdim if kdim is not None else embed_dim, "kdim")
        self.vdim = positive_int(vdim if vdim is not None else embed_dim, "vdim")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 0:
            raise ValueError(f"chunk_size must be an int >= 0 (0 = default), got {chunk_size!r}")
        self.dropout = float(dropout)
        self.bias = bias
        self.causal = iscausal
        self.batch_first = batch_first
        self.chunk_size = int(chunk_size)
        self.head_dim = embed_dim // num_heads
        factory = {"device": device, "dtype": dtype}
        E = embed_dim
        self.Wq = nn.Parameter(torch.empty(E, E, **factory))
        self.Wk = nn.Parameter(torch.empty(E, self.kdim, **factory))
        self.Wv = nn.Parameter(torch.empty(E, self.vdim, **factory))
        self.W0 = nn.Parameter(torch.empty(E, E, **factory))
        for name in ("bq", "bk", "bv", "b0"):
            self.register_parameter(name, nn.Parameter(torch.empty(E, **factory)) if bias else None)
        self.register_buffer("projection_matrix", torch.empty(self.num_random_features, self.head_dim, **factory))
        self.reset_parameters(generator=generator)

    @property
    def iscausal(self) -> bool:
        return self.causal

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier-uniform projections, zero biases, fresh random features."""
        if self.Wq.device.type == "meta":
            return
        for w in (self.Wq, self.Wk, self.Wv, self.W0):
            bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
            w.uniform_(-bound, bound, generator=generator)
        for b in (self.bq, self.bk, self.bv, self.b0):
            if b is not None:
                b.zero_()
        self.redraw_projection(generator)

    @torch.no_grad()
    def redraw_projection(self, generator: torch.Generator | None = None) -> None:
        """Draws new orthogonal random features (Performer's feature redraw)."""
        P = self.projection_matrix
        P.copy_(orthogonal_random_features(self.num_random_features, self.head_dim, generator=generator,
                                           device=P.device, dtype=P.dtype))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, E] -> [B, H, L, d]
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, -1).transpose(1, 2)

    def forward(self, query, key, value, attention_mask=None, key_padding_mask=None):
        """(output, None) for query [B, L, E], key [B, S, kdim], value [B, S, vdim] (batch_first)."""
        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
            raise ValueError(f"query, key and value must be 3-D, got shapes {tuple(query.shape)}, "
                             f"{tuple(key.shape)}, {tuple(value.shape)}")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        B, L, _ = query.shape
        S = key.shape[1]
        if query.shape[2] != self.embed_dim or key.shape[2] != self.kdim or value.shape[2] != self.vdim:
            raise ValueError(f"query, key, value must end in (embed_dim, kdim, vdim) = ({self.embed_dim}, {self.kdim}, "
                             f"{self.vdim}), got {query.shape[2]}, {key.shape[2]}, {value.shape[2]}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != B:
            raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must share batch and length "
                             f"with each other and the batch of query {tuple(query.shape)}")
        causal = self.causal
        if key_padding_mask is not None:
            _check_bool_mask(key_padding_mask, "key_padding_mask")
            if tuple(key_padding_mask.shape) != (B, S):
                raise ValueError(f"key_padding_mask must have shape (B, S) = ({B}, {S}), "
                                 f"got {tuple(key_padding_mask.shape)}")
        if attention_mask is not None:
            _check_bool_mask(attention_mask, "attention_mask")
            mask_causal, padding = split_attention_mask(attention_mask, B, L, S)
            causal = causal or mask_causal
            if padding is not None:
                key_padding_mask = padding if key_padding_mask is None else key_padding_mask | padding
        if causal and L != S:
            raise ValueError(f"causal attention needs as many queries as keys, got L={L} and S={S}")

        q = self._heads(F.linear(query, self.Wq, self.bq))
        k = self._heads(F.linear(key, self.Wk, self.bk))
        v = self._heads(F.linear(value, self.Wv, self.bv))
        if self.training and self.dropout > 0:
            keep = torch.empty(B, self.num_heads, S, 1, device=v.device, dtype=v.dtype).bernoulli_(1 - self.dropout)
            v = v * keep / (1 - self.dropout)
        op = (torch.ops.panther.favor_attention_triton if q.is_cuda and triton_available
              else torch.ops.panther.favor_attention)
        # projections may run in another dtype (autocast); the features follow q's dtype
        P = self.projection_matrix.to(q.dtype)
        out = op(q, k, v.to(q.dtype), P, self.kernel_fn, causal, key_padding_mask, self.chunk_size)
        out = F.linear(out.transpose(1, 2).reshape(B, L, self.embed_dim), self.W0, self.b0)
        return (out if self.batch_first else out.transpose(0, 1)), None

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"num_random_features={self.num_random_features}, dropout={self.dropout}, bias={self.bias}, "
                f"kernel_fn={self.kernel_fn!r}, iscausal={self.causal}, batch_first={self.batch_first}")


def make_performer(mha: nn.MultiheadAttention, num_random_features: int, kernel_fn: str = "softmax",
                   iscausal: bool = False, generator: torch.Generator | None = None) -> RandMultiHeadAttention:
    """A RandMultiHeadAttention with ``mha``'s projections (copied), layout and dropout.

    Handles packed and separate (kdim/vdim) input projections and ``batch_first`` either
    way. ``add_bias_kv`` and ``add_zero_attn`` have no random-feature equivalent and raise.
    The attention itself becomes the FAVOR+ estimate, which is close to softmax attention
    only for many features: fine-tune after converting.
    """
    if not isinstance(mha, nn.MultiheadAttention):
        raise TypeError(f"mha must be a torch.nn.MultiheadAttention, got {type(mha).__name__}")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError("make_performer cannot convert an nn.MultiheadAttention with add_bias_kv=True or "
                         "add_zero_attn=True")
    weight = mha.out_proj.weight
    has_bias = mha.in_proj_bias is not None
    layer = RandMultiHeadAttention(
        mha.embed_dim, mha.num_heads, num_random_features, dropout=mha.dropout, bias=has_bias,
        kernel_fn=kernel_fn, iscausal=iscausal, device=weight.device, dtype=weight.dtype,
        kdim=mha.kdim, vdim=mha.vdim, batch_first=mha.batch_first, generator=generator)
    E = mha.embed_dim
    with torch.no_grad():
        if mha._qkv_same_embed_dim:
            wq, wk, wv = mha.in_proj_weight.split(E, dim=0)
        else:
            wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        for dst, src in ((layer.Wq, wq), (layer.Wk, wk), (layer.Wv, wv), (layer.W0, mha.out_proj.weight)):
            dst.copy_(src)
        if has_bias:
            for dst, src in zip((layer.bq, layer.bk, layer.bv), mha.in_proj_bias.split(E)):
                dst.copy_(src)
            if mha.out_proj.bias is not None:
                layer.b0.copy_(mha.out_proj.bias)
            else:
                layer.b0.zero_()
    layer.train(mha.training)
    return layer
