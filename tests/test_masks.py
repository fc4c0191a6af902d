"""panther.passes.masks: SDPA attn_mask tensors proved key-padding (and causal) masks from the
graph that builds them, rewritten into favor_attention's key_padding_mask; every other mask
left dense with its reason.

Graphs run eagerly after the passes (tests/test_passes.py's capture backend); the HF BERT
model through Inductor is in tests/test_backend.py.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import panther as pr
from panther.passes.masks import MASKED_AT_MOST

from .test_passes import Capture, run, targets_of

B, N, D, HEADS = 2, 64, 64, 2  # 64 tokens: 16 features per head cost less than the scores
OPTS = {"num_terms": 1, "low_rank": 16, "kinds": ["attention"], "seed": 5}
MIN = torch.finfo(torch.float32).min


class Masked(nn.Module):
    """q/k/v projections and SDPA with the mask ``make(keep)`` builds from a [B, S] input."""

    def __init__(self, make):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(D, D) for _ in range(3))
        self.make = make

    def heads(self, x):
        return [p(x).view(x.shape[0], x.shape[1], HEADS, -1).transpose(1, 2) for p in (self.q, self.k, self.v)]

    def forward(self, x, keep):
        q, k, v = self.heads(x)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.make(keep, q, k))


def hf_padding(keep, q, k):
    """HF's bidirectional padding mask (BERT): ``q_idx >= 0`` AND ``padding[b, kv_idx]``."""
    b_idx = torch.arange(keep.shape[0])[:, None, None, None]
    q_idx = (torch.arange(q.shape[2]) + 0)[None, None, :, None]
    kv_idx = (torch.arange(k.shape[2]) + 0)[None, None, None, :]
    both = q_idx.new_ones((), dtype=torch.bool) & (q_idx >= 0) & keep.to(torch.bool)[b_idx, kv_idx]
    return both.expand(keep.shape[0], -1, q.shape[2], k.shape[2])


def arange_causal(keep, q, k):
    """HF's construction (masking_utils.sdpa_mask): index arithmetic on aranges, padding by gather."""
    n, s = q.shape[2], k.shape[2]
    b_idx = torch.arange(keep.shape[0])[:, None, None, None]
    q_idx = (torch.arange(n) + 0)[None, None, :, None]
    kv_idx = (torch.arange(s) + 0)[None, None, None, :]
    return ((kv_idx <= q_idx) & keep[b_idx, kv_idx]).expand(keep.shape[0], -1, n, s)


def hf_legacy(keep, q, k):
    """transformers 4.x ``_prepare_4d_attention_mask_for_sdpa`` from a 0/1 long mask."""
    expanded = keep[:, None, None, :].expand(keep.shape[0], 1, q.shape[2], k.shape[2]).to(q.dtype)
    inverted = torch.tensor(1.0, dtype=q.dtype) - expanded
    return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(q.dtype).min)


PROVED = {  # name: (mask builder, input dtype of keep, causal)
    "bool-indexing": (lambda keep, q, k: keep[:, None, None, :], torch.bool, False),
    "bool-view-expand": (lambda keep, q, k: keep.view(B, 1, 1, -1).expand(-1, HEADS, q.shape[2], -1), torch.bool,
                         False),
    "bool-from-long": (lambda keep, q, k: keep.to(torch.bool).unsqueeze(1).unsqueeze(1), torch.long, False),
    "hf-gather": (hf_padding, torch.long, False),
    "hf-causal-gather": (arange_causal, torch.bool, True),
    "additive-masked-fill": (lambda keep, q, k: torch.zeros(B, 1, 1, k.shape[2]).masked_fill(
        ~keep[:, None, None, :], float("-inf")), torch.bool, False),
    "additive-1-minus-min": (lambda keep, q, k: (1.0 - keep[:, None, None, :].float()) * MIN, torch.bool, False),
    "additive-where": (lambda keep, q, k: torch.where(keep, 0.0, -1e9)[:, None, None, :], torch.bool, False),
    "additive-hf-legacy": (hf_legacy, torch.long, False),
}




def inputs(dtype):
    x = torch.randn(B, N, D, generator=torch.Generator().manual_seed(0))
    keep = torch.ones(B, N, dtype=torch.bool)
    keep[1, 40:] = False  # right padding
    keep[0, :5] = False  # left padding: with a causal mask, queries 0..4 of sample 0 see no key
    return x, keep.to(dtype)


def favor_reference(model, x, keep, causal, name=""):
    """The FAVOR+ op with the layer's features and the mask known from the test (not the graph);
    0 for queries that see no key, as SDPA gives."""
    P = pr.passes.attention_projection(pr.SketchSpec(1, 16), D // HEADS, name, OPTS["seed"], device="cpu",
                                       dtype=torch.float32)
    keep = keep.bool()
    with torch.no_grad():
        q, k, v = model.heads(x)
        out = torch.ops.panther.favor_attention(q, k, v, P, "softmax", causal, ~keep, 0)
    sees = keep.cumsum(-1) > 0 if causal else keep.any(-1, keepdim=True).expand_as(keep)  # [B, N]
    return torch.where(sees[:, None, :, None], out, 0.0)


def attention_candidate(cap):
    (att,) = [c for c in cap.candidates[0] if c.kind == "attention"]
    return att


@pytest.mark.parametrize("name", sorted(PROVED))
def test_key_padding_masks_are_rewritten_and_equal_favor_with_that_mask(name):
    make, dtype, causal = PROVED[name]
    torch.manual_seed(0)
    model = Masked(make).eval()
    x, keep = inputs(dtype)
    out, cap = run(model, x, keep, options=OPTS)
    att = attention_candidate(cap)
    assert att.eligible, att.reason
    assert att.info["causal"] is causal
    (favor,) = [n for n in cap.graphs[0].graph.nodes if n.target is torch.ops.panther.favor_attention.default]
    assert favor.args[5] is causal and favor.args[6] is not None  # causal flag, key_padding_mask
    assert torch.ops.aten.scaled_dot_product_attention.default not in targets_of(cap.graphs[0])
    assert F.scaled_dot_product_attention not in targets_of(cap.graphs[0])
    ref = favor_reference(model, x, keep, causal, att.name)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # the mask does something: without it the result differs (catches a mask silently dropped)
    unmasked = favor_reference(model, x, torch.ones_like(keep), causal, att.name)
    assert (out - unmasked).abs().max() > 1e-2


def test_queries_that_see_no_key_get_zero_as_from_sdpa():
    """FAVOR+ alone gives 0/0 there, which a next layer would spread through its masked keys."""
    torch.manual_seed(0)
    x, keep = inputs(torch.bool)
    keep[1] = False  # a sample of padding only
    for make, causal in ((arange_causal, True), (PROVED["bool-indexing"][0], False)):
        torch.compiler.reset()
        model = Masked(make).eval()
        out, _ = run(model, x, keep, options=OPTS)
        with torch.no_grad():
            dense = model(x, keep)
        empty = (dense == 0).all(-1)  # [B, H, N]: SDPA's rows with no key
        assert empty[1].all() and (empty[0, :, :5].all() if causal else not empty[0].any())
        assert torch.isfinite(out).all()
        assert (out[empty] == 0).all() and (out[~empty].abs().sum(-1) > 0).all()


def test_masked_keys_do_not_reach_unmasked_queries():
    torch.manual_seed(0)
    model = Masked(hf_padding).eval()
    x, keep = inputs(torch.long)
    out, _ = run(model, x, keep, options=OPTS)
    x2 = x.clone()
    x2[keep == 0] = torch.randn(int((keep == 0).sum()), D)  # new tokens at masked positions only
    torch.compiler.reset()
    out2, _ = run(model, x2, keep, options=OPTS)
    rows = keep.bool()[:, None, :, None].expand_as(out)  # queries at unmasked positions
    torch.testing.assert_close(out2[rows], out[rows], rtol=1e-5, atol=1e-6)


REFUSED = {  # name: (mask builder, input dtype, words of the reason)
    "float-from-data": (lambda keep, q, k: keep[:, None, None, :], torch.float32, "values come from data"),
    "additive-from-long-data": (lambda keep, q, k: (1.0 - keep[:, None, None, :].float()) * MIN, torch.long,
                                "values come from data"),
    "additive-small-negative": (lambda keep, q, k: (1.0 - keep[:, None, None, :].float()) * -1.0, torch.bool,
                                "neither 0"),
    "additive-nan": (lambda keep, q, k: (1.0 - keep[:, None, None, :].float()) * float("-inf"), torch.bool,
                     "neither 0"),  # 0 * -inf is NaN where kept: not a mask at all
    "query-varying": (lambda keep, q, k: keep[:, None, :, None] & keep[:, None, None, :], torch.bool, "query axis"),
    "head-varying": (lambda keep, q, k: keep[:, None, None, :] & (torch.arange(HEADS) > 0)[None, :, None, None],
                     torch.bool, "head axis"),
    "tril-tensor": (lambda keep, q, k: torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
                    & keep[:, None, None, :], torch.bool, "query axis"),
    "strict-triangle": (lambda keep, q, k: torch.arange(k.shape[2])[None, :] < torch.arange(q.shape[2])[:, None],
                        torch.bool, "query axis"),
    "shifted-triangle": (lambda keep, q, k: (torch.arange(k.shape[2]) + 1)[None, :]
                         <= torch.arange(q.shape[2])[:, None], torch.bool, "query axis"),
    "transposed-triangle": (lambda keep, q, k: torch.arange(k.shape[2])[:, None]
                            <= torch.arange(q.shape[2])[None, :], torch.bool, "triangle other than the causal"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_other_masks_stay_dense_with_the_reason(name):
    make, dtype, words = REFUSED[name]
    torch.manual_seed(0)
    model = Masked(make).eval()
    x, keep = inputs(dtype)
    out, cap = run(model, x, keep, options=OPTS)
    att = attention_candidate(cap)
    assert not att.eligible and att.reason.startswith("attn_mask") and words in att.reason, att.reason
    assert torch.ops.panther.favor_attention.default not in targets_of(cap.graphs[0])
    with torch.no_grad():
        torch.testing.assert_close(out, model(x, keep), equal_nan=True)  # exactly the dense model
    rows = pr.report(model, x, keep, options=OPTS).rows
    assert any(r["kind"] == "attention" and words in r["decision"] for r in rows)


@pytest.mark.parametrize("sentinel", [-1e4, -9999.0])
def test_threshold_is_the_documented_one(sentinel):
    assert MASKED_AT_MOST == -1e4
    make = lambda keep, q, k: (1.0 - keep[:, None, None, :].float()) * sentinel  # noqa: E731
    _, cap = run(Masked(make).eval(), *inputs(torch.bool), options=OPTS)
    att = attention_candidate(cap)
    assert att.eligible is (sentinel <= MASKED_AT_MOST), att.reason


def test_mask_broadcast_over_the_batch_with_dynamic_shapes():
    """A [S] mask shared by the batch: the key_padding_mask is expanded to the symbolic batch."""
    torch.manual_seed(0)
    model = Masked(lambda keep, q, k: keep[0][None, None, None, :]).eval()
    cap = Capture(OPTS)
    fn = torch.compile(model, backend=cap, fullgraph=True, dynamic=True)
    for batch in (2, 3):
        x = torch.randn(batch, N, D)
        keep = torch.ones(batch, N, dtype=torch.bool)
        keep[:, 50:] = False
        with torch.no_grad():
            out = fn(x, keep)
        att = [c for c in cap.candidates[0] if c.kind == "attention"][0]
        torch.testing.assert_close(out, favor_reference(model, x, keep, False, att.name), rtol=1e-5, atol=1e-6)
    assert len(cap.graphs) == 1
    assert torch.ops.aten.expand.default in targets_of(cap.graphs[0])


def test_hf_gpt2_causal_padding_mask_becomes_causal_favor_with_key_padding(monkeypatch):
    """transformers' causal mask AND padding (left and right) is proved exactly: causal=True."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=64, n_layer=2, n_head=2, n_positions=64,
                                  attn_implementation="sdpa", bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2Model(cfg).eval()
    ids = torch.randint(0, 64, (2, 32))
    mask = torch.ones(2, 32, dtype=torch.long)
    mask[1, 24:] = 0
    mask[0, :3] = 0
    opts = {"num_terms": 1, "low_rank": 8, "kinds": ["attention"], "seed": 5}
    cap = Capture(opts)
    with torch.no_grad():
        out = torch.compile(model, backend=cap, fullgraph=True)(ids, attention_mask=mask).last_hidden_state
    atts = [c for c in cap.candidates[0] if c.kind == "attention"]
    assert [(c.eligible, c.info["causal"]) for c in atts] == [(True, True)] * 2, [c.reason for c in atts]
    calls = []

    def favor_sdpa(q, k, v, attn_mask=None, **kwargs):
        name = f"h.{len(calls)}.attn"
        calls.append(name)
        P = pr.passes.attention_projection(pr.SketchSpec(1, 8), q.shape[-1], name, 5, device="cpu", dtype=q.dtype)
        a = torch.ops.panther.favor_attention(q, k, v, P, "softmax", True, mask == 0, 0)
        return torch.where((mask.cumsum(-1) > 0)[:, None, :, None], a, 0.0)  # left padding sees no key

    with torch.no_grad(), monkeypatch.context() as patch:
        patch.setattr(F, "scaled_dot_product_attention", favor_sdpa)
        ref = model(ids, attention_mask=mask).last_hidden_state
    assert calls == ["h.0.attn", "h.1.attn"] and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
