"""panther.tuner.costs: FLOP and memory counts, and latency measured on the ops the rewrite emits."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from panther.plan import SketchSpec
from panther.tuner import LatencyCost, PlanNode, flops_cost, memory_cost
from panther.tuner.costs import NOMINAL_SECONDS_PER_FLOP

CONV = PlanNode("conv", "conv2d", {"in_channels": 8, "out_channels": 16, "kernel_size": (3, 3), "groups": 1,
                                   "stride": (1, 1), "padding": (1, 1, 1, 1), "dilation": (1, 1),
                                   "input_shape": (2, 8, 12, 12), "pixels": 2 * 12 * 12})
ATTENTION = PlanNode("attn", "attention", {"batch": 2, "heads": 2, "q_len": 64, "k_len": 64, "head_dim": 16,
                                           "causal": False})
LINEAR = PlanNode("fc", "linear", {"in_features": 64, "out_features": 32, "rows": 16})


def ops_run(fn) -> set:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


@pytest.mark.parametrize("node, dense_op, sketch_op", [
    (LINEAR, "aten::linear", "panther::lowrank_linear"),
    (CONV, "aten::conv2d", "panther::sketched_conv2d"),
    (ATTENTION, "aten::scaled_dot_product_attention", "panther::favor_attention"),
])
def test_latency_times_the_real_ops_at_the_node_shapes_and_caches(node, dense_op, sketch_op):
    cost = LatencyCost("cpu", repeats=3, max_seconds=0.05)
    spec = SketchSpec(1, 4 if node.kind != "attention" else 16)
    assert cost.measurable(node)
    dense_ops = ops_run(lambda: cost(node, None))
    sketch_ops = ops_run(lambda: cost(node, spec))
    assert dense_op in dense_ops and sketch_op not in dense_ops
    assert sketch_op in sketch_ops  # (the sketched conv calls aten::conv2d inside: not checked the other way)
    assert cost(node, spec) > 0 and cost(node, None) > 0
    assert not ({dense_op, sketch_op} & ops_run(lambda: cost(node, spec)))  # cached: nothing runs again
    assert LatencyCost("cpu", repeats=3)(node, spec) == cost(node, spec)  # shared by instances


def test_latency_asymmetric_conv_padding_is_timed_too():
    node = PlanNode("c", "conv2d", {**CONV.sizes, "padding": (0, 1, 0, 1), "kernel_size": (2, 2)})
    cost = LatencyCost("cpu", repeats=3, max_seconds=0.05)
    assert "aten::conv2d" in ops_run(lambda: cost(node, None))


def test_latency_is_modelled_only_where_timing_is_impossible():
    on_meta = LatencyCost("meta")
    assert not on_meta.measurable(CONV)
    assert on_meta(CONV, None) == pytest.approx(flops_cost(CONV, None) * NOMINAL_SECONDS_PER_FLOP)
    no_shape = PlanNode("c2", "conv2d", {k: v for k, v in CONV.sizes.items() if k != "input_shape"})
    cost = LatencyCost("cpu", repeats=3, max_seconds=0.05)
    assert not cost.measurable(no_shape)
    spec = SketchSpec(1, 4)
    assert cost(no_shape, spec) == pytest.approx(flops_cost(no_shape, spec) * cost.seconds_per_flop())
    assert "panther::sketched_conv2d" not in ops_run(lambda: cost(no_shape, SketchSpec(1, 8)))


def test_counts():
    spec = SketchSpec(1, 4)
    assert flops_cost(LINEAR, None) == 16 * 64 * 32 and flops_cost(LINEAR, spec) == 16 * 8 * 96
    assert memory_cost(LINEAR, spec) == 8 * 96 / 2
    # attention: batch and heads both scale the cost
    assert flops_cost(ATTENTION, None) == 2 * 2 * 2 * 64 * 64 * 16
    assert flops_cost(CONV, None) == 2 * 12 * 12 * 16 * 8 * 9


def test_bad_arguments():
    with pytest.raises(ValueError, match="repeats must be a positive int"):
        LatencyCost("cpu", repeats=0)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        LatencyCost("cpu", dtype=torch.int32)
    with pytest.raises(ValueError, match="max_seconds must be a number > 0"):
        LatencyCost("cpu", max_seconds=0)
