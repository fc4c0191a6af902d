"""Loads panther's native op library (csrc/, built into panther/_C*.so)."""

from __future__ import annotations

import glob
import os

import torch

_BUILD_HINT = (
    "Build it from the repository root with `make build` (or `pip install --no-build-isolation -e .` "
    "after installing torch); set PANTHER_BUILD_CUDA=0 to build without CUDA."
)


def library_path() -> str:
    """Path of the built op library, for torch.ops.load_library in a process without panther."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "_C*.so")) + glob.glob(os.path.join(here, "_C*.pyd")))
    if not found:
        raise ImportError(f"panther's native op library (panther/_C*.so) is not built. {_BUILD_HINT}")
    return found[0]


def load() -> None:
    path = library_path()
    try:
        torch.ops.load_library(path)
    except OSError as err:
        raise ImportError(
            f"panther's native op library {path} could not be loaded with torch {torch.__version__} "
            f"({err}). It was probably built against another torch; rebuild it. {_BUILD_HINT}"
        ) from err
