"""Panther: randomized numerical linear algebra and sketched layers for PyTorch.

    import panther as pr
    layer = pr.nn.SKLinear(1024, 1024, num_terms=1, low_rank=64)
"""

from . import ops  # loads the native op library first
from . import linalg, nn, sketch
from . import tuner
from .backend import report
from .exporting import export, package
from .plan import Plan, SketchSpec
from .sketch_model import sketch_model

__version__ = "0.2.0.dev0"
__all__ = ["Plan", "SketchSpec", "export", "linalg", "nn", "ops", "package", "report", "sketch", "sketch_model",
           "tuner"]
