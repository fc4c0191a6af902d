"""``ModelVisualizer``: a text tree of a model's modules, marking the layers the tuner can sketch."""

from __future__ import annotations

import re

from torch import nn

from .layers import sketchable_layers


def _natural(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class ModelVisualizer:
    @staticmethod
    def module_tree(model: nn.Module, root_name: str = "model") -> str:
        """The tree as a string: ``name (Type)``, children in natural order ("2" before "10"),
        sketchable layers marked with ``*``."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        candidates = {id(m) for m in sketchable_layers(model).values()}
        lines = [f"{root_name} ({type(model).__name__})"]

        def walk(module, prefix):
            children = sorted(module.named_children(), key=lambda item: _natural(item[0]))
            for i, (name, child) in enumerate(children):
                last = i == len(children) - 1
                mark = " *" if id(child) in candidates else ""
                lines.append(f"{prefix}{'└── ' if last else '├── '}{name} ({type(child).__name__}){mark}")
                walk(child, prefix + ("    " if last else "│   "))

        walk(model, "")
        return "\n".join(lines)

    @staticmethod
    def print_module_tree(model: nn.Module, root_name: str = "model") -> None:
        """Prints :meth:`module_tree` (``*`` marks layers the tuner can sketch)."""
        print(ModelVisualizer.module_tree(model, root_name))
