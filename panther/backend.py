"""The ``torch.compile`` backend: ``torch.compile(model, backend="panther", options={...})``.

Registered through the ``torch_dynamo_backends`` entry point (pyproject.toml), so
``backend="panther"`` works after ``pip install`` without ``import panther``. For each
Dynamo graph it finds candidate nodes, makes a plan from the options, rewrites the chosen
nodes into panther ops (factors computed once, stored on the graph module) and hands the
graph to Inductor's ``compile_fx`` — the rest of the model compiles as with
``backend="inductor"``.

Safety: a rewrite failure (or an Inductor failure on the rewritten graph) warns once,
naming the node and the reason, and compiles the *original* graph with plain Inductor.
Graphs that train (grad enabled and weights that require grad) are not rewritten: use
``panther.sketch_model`` to train sketched layers; panther layers already in the model
compile as they are. The options are documented in ``panther.passes.options.OPTIONS``.
"""

from __future__ import annotations

import warnings

import torch
from torch import fx

from .passes import (DynamoResolver, Options, apply_plan, find_candidates, format_table, make_plan, parse_options,
                     rows)
from .passes.calibration import graph_batches, graph_second_moments, layer_inputs
from .plan import Plan
from .triton_analysis import memoized_kernel_analysis

_saved_plans: dict[str, Plan] = {}  # save_plan path -> plan merged over this process's graphs
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)


def _copy(gm: fx.GraphModule) -> fx.GraphModule:
    """An independent copy of the graph (the rewrite edits ``gm`` in place; fallback needs the original)."""
    graph = fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    copy = fx.GraphModule(gm, graph)
    copy.meta = dict(getattr(gm, "meta", {}))
    return copy


def is_training(candidates) -> bool:
    return torch.is_grad_enabled() and any(c.param is not None and c.param.requires_grad for c in candidates)


def analyse(gm: fx.GraphModule, example_inputs, options: Options):
    """(candidates, plan) for one Dynamo graph, without changing it."""
    candidates = find_candidates(gm, DynamoResolver(gm, example_inputs))
    if is_training([c for c in candidates if c.eligible]):
        _warn_once("training", "panther: this graph trains (grad enabled, weights require grad), so its dense "
                               "nodes are not rewritten; use panther.sketch_model(model, plan) for sketched "
                               "training, or compile under torch.no_grad() for inference")
        return candidates, Plan({c.name: None for c in candidates if c.eligible})
    if not options.has_plan_source:
        _warn_once("no-plan", "panther: no plan given (options num_terms/low_rank, rank_ratio, plan or tune): "
                              "every node stays dense")
    return candidates, make_plan(candidates, example_inputs, options)


def _second_moments(gm, batches, candidates, plan):
    """{layer: second moment} for the plan's init="asvd" linears and convs (E[x xᵀ] of a linear's
    inputs, E[p pᵀ] of a conv's input patches), over runs of ``gm`` on ``batches()`` (a function
    giving full graph input lists, called only then); None when the plan has none."""
    chosen = [c for c in candidates if c.eligible and c.kind in ("linear", "conv2d") and plan.get(c.name) is not None
              and plan.get(c.name).init == "asvd"]
    return graph_second_moments(gm, batches(), layer_inputs(chosen)) if chosen else None


def _rewrite(gm, example_inputs, options: Options):
    candidates, plan = analyse(gm, example_inputs, options)
    second_moments = _second_moments(gm, lambda: graph_batches(gm, example_inputs, options.calibration), candidates,
                                     plan)
    rewritten = apply_plan(gm, candidates, plan, seed=options.seed, fuse=options.fuse,
                           example_inputs=example_inputs, second_moments=second_moments)
    return candidates, plan, rewritten


def _finish(candidates, plan, rewritten, options: Options) -> None:
    if options.report:
        print(format_table(rows(candidates, plan, rewritten), title="panther: candidate nodes of this graph"))
    if options.save_plan:
        merged = _saved_plans.get(options.save_plan, Plan())
        merged = Plan({**merged.entries, **plan.entries})
        _saved_plans[options.save_plan] = merged
        merged.save(options.save_plan)


def _weight_checks(rewritten_candidates, example_inputs) -> list[tuple[int, torch.Tensor, int]]:
    """(input position, weight, version) of every weight whose factors the graph now holds."""
    owners = {id(c.param): c.param for c in rewritten_candidates if c.param is not None}
    owners.update({id(c.info["bias_param"]): c.info["bias_param"] for c in rewritten_candidates if c.bias_folded})
    return [(i, v, v._version) for i, v in enumerate(example_inputs)
            if isinstance(v, torch.Tensor) and id(v) in owners and owners[id(v)] is v]


def _guarded(compiled, original: fx.GraphModule, checks):
    """The compiled graph, run only with the weights its factors were computed from.

    Dynamo passes parameters as graph inputs and does not guard on their identity or
    values: the same compiled code serves another instance of the module class, and
    in-place weight updates keep it. Factors from other weights would be a wrong result,
    so a call whose weights differ (object or version counter) runs the original graph
    uncompiled instead, with one warning.
    """
    def run(*args):
        for i, weight, version in checks:
            arg = args[i]
            if arg is not weight or arg._version != version:
                _warn_once(f"stale:{id(run)}",
                           "panther: a compiled graph is called with weights other than those its sketch factors "
                           "were computed from (weights changed in place, or another instance of the module "
                           "reuses the compiled code); it runs uncompiled to stay correct. Call "
                           "torch.compiler.reset() and compile again after changing weights.")
                return original.forward(*args)
        return compiled(*args)  # called exactly as Dynamo calls a backend's result

    return run


def _inductor_patches(mode, options: Options) -> dict:
    """Inductor config patches: the mode's (given as ``mode=`` or ``options["mode"]``), then the
    user's own ``options["inductor"]`` on top."""
    if mode is not None and options.mode is not None and mode != options.mode:
        raise ValueError(f"mode={mode!r} and options['mode']={options.mode!r} disagree; give one")
    mode = mode or options.mode
    patches = {}
    if mode not in (None, "default"):
        from torch._inductor import list_mode_options

        patches.update(list_mode_options(mode))
    patches.update(options.inductor)
    return patches


def _decompositions(config_patches) -> dict:
    """Inductor's decompositions (as its config, with the patches, selects them) plus panther's:
    ``panther.lowrank_linear`` becomes the two ATen GEMMs it runs (``lowrank_linear_as_gemms``),
    which Inductor calls directly instead of the op (less host time per call, and its own GEMM
    choice)."""
    from torch._inductor import config
    from torch._inductor.decomposition import select_decomp_table

    from .ops.linear.op import lowrank_linear_as_gemms

    with config.patch(config_patches or {}):
        table = dict(select_decomp_table())
    table[torch.ops.panther.lowrank_linear.default] = lowrank_linear_as_gemms
    return table


def compile_fx(gm: fx.GraphModule, example_inputs, config_patches):
    """Inductor's ``compile_fx`` with panther's decompositions (``_decompositions``), analysing each
    user Triton kernel once rather than four times per call site: every layer of a rewritten model
    calls the same panther kernels (``triton_analysis``; on an H200, 24 layers: 96 -> 2 IR
    generations, compile 18.8 -> 15.7 s)."""
    from torch._inductor.compile_fx import compile_fx as inductor_compile_fx

    with memoized_kernel_analysis():
        return inductor_compile_fx(gm, example_inputs, config_patches=config_patches,
                                   decompositions=_decompositions(config_patches))


def panther_backend(gm: fx.GraphModule, example_inputs, **kwargs):
    """Dynamo backend: plan, rewrite, then Inductor (``compile_fx``); see the module docstring."""
    options = parse_options(kwargs.pop("options", None))
    mode = kwargs.pop("mode", None)
    if kwargs:
        raise TypeError(f"panther_backend got unexpected arguments {sorted(kwargs)}; it takes options= or mode=")
    patches = _inductor_patches(mode, options) or None
    original = _copy(gm)  # shallow (nodes and meta), kept for fallback and for calls with other weights
    try:
        candidates, plan, rewritten = _rewrite(gm, example_inputs, options)
    except Exception as err:  # noqa: BLE001 — never a wrong result: compile the untouched graph
        if not options.fallback:
            raise
        warnings.warn(f"panther: {err}; compiling this graph with plain Inductor", UserWarning, stacklevel=2)
        return compile_fx(original, example_inputs, config_patches=patches)
    _finish(candidates, plan, [c.node for c in rewritten], options)
    if not rewritten:
        return compile_fx(gm, example_inputs, config_patches=patches)
    checks = _weight_checks(rewritten, example_inputs)
    try:
        compiled = compile_fx(gm, example_inputs, config_patches=patches)
    except Exception as err:  # noqa: BLE001
        if not options.fallback:
            raise
        names = ", ".join(c.node.name for c in rewritten)
        warnings.warn(f"panther: Inductor failed on the graph rewritten at nodes [{names}] ({type(err).__name__}: "
                      f"{err}); compiling the original graph with plain Inductor", UserWarning, stacklevel=2)
        return compile_fx(original, example_inputs, config_patches=patches)
    return _guarded(compiled, original, checks) if checks else compiled


class CompileReport:
    """What ``backend="panther"`` would do to a model: per-node rows and the plan (all graphs merged)."""

    def __init__(self):
        self.rows: list[dict] = []
        self.plan = Plan()

    def __str__(self) -> str:
        return format_table(self.rows, title="panther: candidate nodes")

    __repr__ = __str__


def report(model, *args, options: dict | None = None, **kwargs) -> CompileReport:
    """Traces ``model(*args, **kwargs)`` with Dynamo and returns the panther decisions per node
    (no rewrite, no Inductor: fast). ``print(report(...))`` shows the table; ``.plan.save(path)``
    keeps the plan for ``options={"plan": path}``."""
    opts = parse_options(options)
    result = CompileReport()

    def analysis_backend(gm, example_inputs, **_):
        candidates, plan = analyse(gm, example_inputs, opts)
        result.rows.extend(rows(candidates, plan))
        result.plan = Plan({**result.plan.entries, **plan.entries})
        return gm.forward

    compiled = torch.compile(model, backend=analysis_backend)
    with torch.no_grad():
        compiled(*args, **kwargs)
    return result
