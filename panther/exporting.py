"""Export of sketched models: ``panther.export`` (an ExportedProgram) and ``panther.package`` (AOTInductor).

    ep = panther.export(model.eval(), (x,), options={"num_terms": 1, "low_rank": 16})
    torch.export.save(ep, "model.pt2")        # load elsewhere after `import panther`
    panther.package(ep, "model_aoti.pt2")     # runs after torch.ops.load_library(<panther .so>)

``export`` runs ``torch.export.export`` and then the very passes the compile backend runs
(``panther.passes``: candidates, plan, rewrite) on the export IR (``aten.linear``,
``aten.conv2d``, ``aten.scaled_dot_product_attention``, ``addmm``/``matmul`` with parameter
weights). Factors become persistent buffers of the program (``ep.state_dict``), the dense
weights they replace leave it, and the graph signature is rebuilt to match before
``ep.validate()``. The module lives in ``panther/exporting.py`` so that the function
``panther.export`` never competes with a submodule of the same name.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import ExportGraphSignature, InputKind, InputSpec, TensorArgument
from torch.utils import _pytree as pytree

from .passes import (ExportResolver, apply_plan, find_candidates, format_table, make_plan, parse_options, rows,
                     with_plan)
from .passes.rewrite import fake_mode_of

# Options of the compile backend that mean nothing for an exported program.
_COMPILE_ONLY = {"fallback": "export has no fallback: a rewrite failure raises",
                 "inductor": "Inductor settings belong to panther.package(inductor_configs=...)",
                 "mode": "Inductor's mode belongs to compilation (panther.package(inductor_configs=...) for a package)",
                 "tune": "tune a plan first (backend='panther' with tune=True and save_plan, or panther.tuner), "
                         "then pass it as plan="}

# Python-only (Triton) panther ops and the C++ op with the same schema that an AOTI package can call.
_CPP_TWINS = {"sketched_linear_triton": "sketched_linear", "favor_attention_triton": "favor_attention"}


class _ProgramBuffers:
    """The passes' installer for an ExportedProgram: each factor becomes a lifted buffer placeholder.

    Placeholders go before the first user input (the signature lists lifted inputs first);
    ``finish`` drops the weights the rewrite left unused and rebuilds the signature.
    """

    def __init__(self, ep: ExportedProgram):
        self.ep, self.gm = ep, ep.graph_module
        self.fake_mode = fake_mode_of(self.gm)
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        self.specs = dict(zip(placeholders, ep.graph_signature.input_specs))  # same order by construction
        self.used = {n for n in placeholders if n.users}  # a weight the rewrite leaves unused goes; others stay
        self.first_user = next((n for n in placeholders if self.specs[n].kind == InputKind.USER_INPUT), None)
        self.state = dict(ep.state_dict)
        self._nodes: dict[str, fx.Node] = {}
        self._taken = set(self.state) | set(ep.constants) | {n.name for n in self.gm.graph.nodes}

    def node(self, key: str, tensor: torch.Tensor, before: fx.Node) -> fx.Node:  # noqa: ARG002 — placeholders lead
        if key in self._nodes:
            return self._nodes[key]
        name = "panther_" + re.sub(r"\W", "_", key)
        while name in self._taken:
            name += "_"
        self._taken.add(name)
        graph = self.gm.graph
        anchor = self.first_user or next(n for n in graph.nodes if n.op != "placeholder")
        with graph.inserting_before(anchor):
            node = graph.placeholder(name)
        node.meta["val"] = self.fake_mode.from_tensor(tensor, static_shapes=True)
        self.state[name] = tensor.detach().contiguous()
        self.specs[node] = InputSpec(kind=InputKind.BUFFER, arg=TensorArgument(name=node.name), target=name,
                                     persistent=True)
        self._nodes[key] = node
        return node

    def finish(self) -> ExportedProgram:
        """A new ExportedProgram over the rewritten graph, with unused weights gone and a matching signature."""
        graph, ep = self.gm.graph, self.ep
        for node in [n for n in graph.nodes if n.op == "placeholder"]:
            spec = self.specs[node]
            if node in self.used and not node.users and spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                graph.erase_node(node)
                self.state.pop(spec.target, None)
        input_specs = [self.specs[n] for n in graph.nodes if n.op == "placeholder"]
        (output,) = [n for n in graph.nodes if n.op == "output"]
        leaves = pytree.tree_leaves(output.args[0])
        output_specs = [dataclasses.replace(spec, arg=TensorArgument(name=leaf.name))
                        if isinstance(spec.arg, TensorArgument) and isinstance(leaf, fx.Node) else spec
                        for spec, leaf in zip(ep.graph_signature.output_specs, leaves)]
        graph.lint()
        self.gm.recompile()
        return _rebuild(ep, self.gm, ExportGraphSignature(input_specs, output_specs), self.state)


def _rebuild(ep: ExportedProgram, gm: fx.GraphModule, signature, state_dict) -> ExportedProgram:
    """A validated ExportedProgram like ``ep`` over another graph, signature and state."""
    new = ExportedProgram(root=gm, graph=gm.graph, graph_signature=signature, state_dict=state_dict,
                          range_constraints=ep.range_constraints, module_call_graph=ep.module_call_graph,
                          example_inputs=ep.example_inputs, constants=ep.constants, verifiers=ep.verifiers)
    new.validate()
    return new


def _options(plan, options):
    opts = with_plan(options, plan)
    for key, why in _COMPILE_ONLY.items():
        if key in opts:
            raise ValueError(f"option {key!r} does not apply to panther.export: {why}")
    return parse_options(opts)


def _graph_inputs(ep: ExportedProgram, args, kwargs) -> list:
    """Real values for every placeholder of ``ep``'s graph, in order (lifted state, then user inputs)."""
    user = iter(pytree.tree_leaves((tuple(args), dict(kwargs or {}))))
    values = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            values.append(next(user))
        elif spec.target in ep.state_dict:
            values.append(ep.state_dict[spec.target])
        else:
            values.append(ep.constants.get(spec.target))
    return values


def _calibration_inputs(ep: ExportedProgram, args, kwargs, inputs, opts) -> list[list]:
    """Full placeholder values for each batch of option ``calibration`` (the example inputs without it)."""
    if opts.calibration is None:
        return [inputs]
    from .passes.calibration import check_like

    examples = pytree.tree_leaves((tuple(args), dict(kwargs or {})))
    batches = []
    for index, batch in enumerate(opts.calibration):
        check_like(batch, examples, "calibration", index)
        batches.append(_graph_inputs(ep, batch, {}))
    return batches


def export(model: nn.Module, args, kwargs: dict | None = None, *, plan=None, options: dict | None = None,
           dynamic_shapes=None, strict: bool = False) -> ExportedProgram:
    """``torch.export.export(model, args, kwargs)`` with the plan's nodes rewritten into panther ops.

    Args:
        model: the module to export (put it in ``eval()`` mode for inference).
        args, kwargs: example inputs, as for ``torch.export.export``.
        plan: a :class:`panther.Plan`, a plan dict or a plan JSON path (names as in
            ``model.named_modules()``; a name that is no layer of the graph raises).
        options: the backend's options (``num_terms``/``low_rank``, ``rank_ratio``, ``init``,
            ``kinds``, ``seed``, ``fuse``, ``report``, ``save_plan``, ``calibration``); ``init="asvd"``
            calibrates on the ``calibration`` batches (tuples of the positional inputs), else on the
            example inputs.
        dynamic_shapes, strict: passed to ``torch.export.export``.

    Returns the validated ExportedProgram; factors are persistent buffers named ``panther_<layer>_<factor>``.
    Nodes the plan keeps dense and nodes the passes do not understand are left exactly as exported.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(args, tuple):
        raise TypeError(f"args must be a tuple of example inputs, got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be a dict or None, got {type(kwargs).__name__}")
    opts = _options(plan, options)
    ep = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes, strict=strict)
    candidates = find_candidates(ep.graph_module, ExportResolver(ep))
    if opts.plan is not None:
        opts.plan.check_names({c.name for c in candidates})
    inputs = _graph_inputs(ep, args, kwargs)
    chosen = make_plan(candidates, inputs, opts)
    from .backend import _second_moments  # the backend's calibration of init="asvd" on a graph

    moments = _second_moments(ep.graph_module, lambda: _calibration_inputs(ep, args, kwargs, inputs, opts),
                              candidates, chosen)
    installer = _ProgramBuffers(ep)
    rewritten = apply_plan(ep.graph_module, candidates, chosen, seed=opts.seed, fuse=opts.fuse, example_inputs=inputs,
                           second_moments=moments, installer=installer)
    if opts.report:
        table = rows(candidates, chosen, [c.node for c in rewritten])
        print(format_table(table, title="panther.export: candidate nodes"))
    if opts.save_plan:
        chosen.save(opts.save_plan)
    if not rewritten:
        ep.validate()
        return ep
    return installer.finish()


def _twin_name(node: fx.Node) -> str | None:
    """The name of the Python-only panther op ``node`` calls, if it has a C++ twin."""
    parts = str(node.target).split(".") if node.op == "call_function" else []
    return parts[1] if len(parts) > 2 and parts[0] == "panther" and parts[1] in _CPP_TWINS else None


def _cpp_ops_only(ep: ExportedProgram) -> ExportedProgram:
    """``ep`` with Python-only (Triton) panther ops replaced by their C++ twins (same schema, same result)."""
    if not any(_twin_name(n) for n in ep.graph.nodes):
        return ep
    gm = copy.deepcopy(ep.graph_module)  # lifted graph: no weights inside, a cheap copy; ep stays as it was
    for node in gm.graph.nodes:
        name = _twin_name(node)
        if name:
            node.target = getattr(torch.ops.panther, _CPP_TWINS[name]).default
    gm.recompile()
    return _rebuild(ep, gm, ep.graph_signature, ep.state_dict)


def package(ep: ExportedProgram, path: str | os.PathLike, *, inductor_configs: dict | None = None) -> str:
    """Compiles ``ep`` with AOTInductor into the package file ``path`` (``.pt2``) and returns its path.

    Triton panther ops are replaced by their C++ twins first, so the package runs in a process
    that only does ``torch.ops.load_library(panther._native.library_path())`` and
    ``torch._inductor.aoti_load_package(path)`` (no panther Python code). Compiling takes
    tens of seconds (a C++ build).
    """
    if not isinstance(ep, ExportedProgram):
        raise TypeError(f"ep must be a torch.export.ExportedProgram (from panther.export), got {type(ep).__name__}")
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).endswith(".pt2"):
        raise ValueError(f"path must be a file path ending in '.pt2' (AOTInductor's package format), got {path!r}")
    if inductor_configs is not None and not isinstance(inductor_configs, dict):
        raise TypeError(f"inductor_configs must be a dict of Inductor config patches, got {inductor_configs!r}")
    from torch._inductor import aoti_compile_and_package

    return aoti_compile_and_package(_cpp_ops_only(ep), package_path=os.fspath(path),
                                    inductor_configs=inductor_configs)
