"""Choosing sketch parameters with Optuna (``pr.tuner``).

Three entry points:

* :class:`SKAutoTuner` (the earlier Panther's API): tunes layers of a model given an accuracy
  function, per layer or jointly, over ``LayerConfig`` search spaces; results convert to a
  :class:`panther.plan.Plan`.
* :class:`SkAutoTuner` (the AutoTuner guide's API): Bayesian optimisation of any objective
  over box bounds, ``optimize() -> (best_params, best_score)``.
* :func:`search_plan`: the per-node plan search behind ``backend="panther"`` options
  ``tune=True`` (and :func:`tune_module` for module swap): error budget on calibration
  batches, cost measured per node (:class:`LatencyCost`) or counted, Optuna over per-node
  choices (rank and init: svd, activation-aware svd, sketch), held-out verification and
  back-off.

Studies can live in an Optuna storage (``"sqlite:///tune.db"`` or a journal file path): an
interrupted search resumes, and several processes can work on one study.
"""

from .black_box import SkAutoTuner
from .configs import LayerConfig, TuningConfigs
from .layers import LAYER_TYPE_MAPPING, build_sketched, get_sketched_class, sketchable_layers
from .module_plan import apply_plan, tune_module
from .pareto import pareto_front, plot_pareto
from .costs import LatencyCost, flops_cost, memory_cost
from .plan_search import PlanNode, PlanSearchResult, search_plan
from .params import Categorical, Float, Int, ParamSpec, get_param_choices, is_param_spec, to_categorical
from .resolver import LayerNameResolver, ParamsResolver, auto_space
from .search import OptunaSearch, SearchAlgorithm
from .skautotuner import SKAutoTuner
from .visualizer import ModelVisualizer

from . import backend_hook as _backend_hook

_backend_hook.register()

__all__ = [
    "LAYER_TYPE_MAPPING", "Categorical", "Float", "Int", "LayerConfig", "LayerNameResolver", "ModelVisualizer",
    "OptunaSearch", "ParamSpec", "ParamsResolver", "SKAutoTuner", "SearchAlgorithm", "SkAutoTuner", "TuningConfigs",
    "auto_space", "build_sketched", "get_param_choices", "get_sketched_class", "is_param_spec", "pareto_front",
    "plot_pareto", "sketchable_layers", "to_categorical", "LatencyCost", "PlanNode", "PlanSearchResult", "apply_plan",
    "flops_cost", "memory_cost", "search_plan", "tune_module",
]
