"""Graph passes shared by the compile backend and export: find candidates, plan, rewrite.

    cands = find_candidates(gm, DynamoResolver(gm, example_inputs))   # or ExportResolver(ep)
    plan = make_plan(cands, example_inputs, parse_options(options))
    apply_plan(gm, cands, plan, seed=..., fuse=...)

The passes read both torch-level (Dynamo) and aten-level (export) graphs; see
``targets.py`` for the targets understood and ``candidates.py`` for the eligibility rules.
"""

from .candidates import KINDS, Candidate, describe, find_candidates
from .factors import attention_projection, conv_factors, layer_generator, layer_seed, linear_factors
from .naming import DynamoResolver, ExportResolver, ParamResolver
from .options import OPTIONS, Options, parse_options, with_plan
from .planning import costs, make_plan, register_tuner, saves_work
from .report import format_table, rows
from .rewrite import ConstantInstaller, RewriteError, apply_plan

__all__ = [
    "KINDS", "OPTIONS", "Candidate", "ConstantInstaller", "DynamoResolver", "ExportResolver", "Options",
    "ParamResolver", "RewriteError", "apply_plan", "attention_projection", "conv_factors", "costs", "describe",
    "find_candidates", "format_table", "layer_generator", "layer_seed", "linear_factors",
    "make_plan", "parse_options", "register_tuner", "rows", "saves_work", "with_plan",
]
