"""The demo's export step: the tuned, sketched model as a saved ``torch.export`` program, loaded back."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
from torch import nn

import panther


@dataclass
class ExportResult:
    path: str
    method: str  # "panther.export" or "torch.export.export + panther.sketch_model"
    size_bytes: int
    round_trip_error: float  # loaded program vs the model it was exported from, relative


def _split(inputs):
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (list, tuple)):
        return tuple(inputs), {}
    return (inputs,), {}


@torch.no_grad()
def export_round_trip(dense: nn.Module, plan, inputs, reference: torch.Tensor, path: str, output_fn) -> ExportResult:
    """Exports ``dense`` sketched as ``plan``, saves it to ``path``, loads it and checks its output against
    ``reference`` (the compiled model's output on ``inputs``)."""
    from .measure import call, relative_error

    args, kwargs = _split(inputs)
    if hasattr(panther, "export"):
        program = panther.export(dense, args, kwargs or None, plan=plan)
        method = "panther.export"
        if not isinstance(program, torch.export.ExportedProgram):
            raise TypeError(f"panther.export returned {type(program).__name__}, expected a torch.export.ExportedProgram")
    else:
        sketched = panther.sketch_model(copy.deepcopy(dense), plan)
        program = torch.export.export(sketched, args, kwargs)
        method = "torch.export.export + panther.sketch_model"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    output = output_fn(call(loaded, inputs))
    return ExportResult(path, method, os.path.getsize(path), relative_error(output, reference))
