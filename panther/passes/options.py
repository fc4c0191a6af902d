"""The options of ``torch.compile(model, backend="panther", options={...})`` and ``sketch_model``.

Every key is checked; an unknown key raises and lists the valid ones (a typo must not
silently compile a dense model). The tuner registers its own keys through
``planning.register_tuner``.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field

from .._validation import one_of, positive_int
from ..plan import INITS, Plan, SketchSpec
from .candidates import KINDS

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's modes

# name -> meaning (the error for an unknown key prints these)
OPTIONS = {
    "num_terms": "fixed plan: L for every eligible node of `kinds` where sketching saves work (with low_rank)",
    "low_rank": "fixed plan: k (random features for attention) for every eligible node of `kinds` (with num_terms)",
    "rank_ratio": "plan by size: total rank 2Lk = rank_ratio * min(in, out) per linear/conv node (L=1), in (0, 1)",
    "plan": "a panther.Plan, a plan dict (Plan.to_dict() form) or the path of a plan JSON file",
    "tune": "True: the tuner (panther.tuner) chooses the plan",
    "init": "factor init for fixed/ratio plans: 'sketch', 'svd' (default) or 'asvd' (activation-aware, "
            "calibrated on the example inputs)",
    "kinds": "node kinds fixed/ratio plans apply to: subset of ('linear', 'conv2d', 'attention'); "
             "default ('linear', 'conv2d')",
    "seed": "int seed; each layer's factors come from a generator seeded by (seed, layer name). Default 0",
    "fuse": "share one x·A product among sketched linears reading the same input, and run a sketched "
            "linear -> activation -> sketched linear chain (an MLP) or a gated MLP down(act(gate(x)) * up(x)) "
            "without storing its hidden layer (default True)",
    "report": "print a table of every candidate node and its decision (default False)",
    "save_plan": "path: write the plan used as JSON (reusable with `plan`)",
    "fallback": "on a rewrite failure warn and compile with plain Inductor (default True); False raises",
    "inductor": "dict of Inductor config patches passed to compile_fx",
    "mode": "Inductor's mode: 'default', 'reduce-overhead' (CUDA graphs: replays the kernels without the host "
            "launching each one; outputs are overwritten by the next call, as with Inductor), 'max-autotune' or "
            "'max-autotune-no-cudagraphs'. torch.compile takes mode= or options=, not both: with options, give it here",
    "calibration": "list of input tuples (the model's own tensor inputs, in order, shaped like the example inputs) "
                   "whose layer inputs calibrate init='asvd' (and drive tune=True); default: the example inputs",
}
_tuner_keys: dict[str, str] = {}
_tuner_check = None  # validates the tuner's keys (``Options.extra``) at parse time; set by register_option_keys


@dataclass(frozen=True)
class Options:
    """Validated options; see ``OPTIONS`` for what each means."""

    num_terms: int | None = None
    low_rank: int | None = None
    rank_ratio: float | None = None
    plan: Plan | None = None
    tune: bool = False
    init: str = "svd"
    kinds: tuple = ("linear", "conv2d")
    seed: int = 0
    fuse: bool = True
    report: bool = False
    save_plan: str | None = None
    fallback: bool = True
    inductor: dict = field(default_factory=dict)
    mode: str | None = None
    calibration: tuple | None = None  # batches (tuples of tensors) for init="asvd" and the tuner
    extra: dict = field(default_factory=dict)  # keys registered by the tuner

    @property
    def has_plan_source(self) -> bool:
        return self.num_terms is not None or self.rank_ratio is not None or self.plan is not None or self.tune


def valid_keys() -> dict[str, str]:
    return {**OPTIONS, **_tuner_keys}


def register_option_keys(keys: dict[str, str], check=None) -> None:
    """Adds option keys (name -> meaning) that a plan source such as the tuner reads from ``Options.extra``.

    ``check(extra) -> extra``, if given, validates (and may normalise) those keys' values when the
    options are parsed, so a bad value raises before any work, naming the option.
    """
    global _tuner_check
    clash = set(keys) & set(OPTIONS)
    if clash:
        raise ValueError(f"option keys {sorted(clash)} are already panther's own")
    if check is not None and not callable(check):
        raise TypeError(f"check must be callable (extra options dict) -> dict, got {check!r}")
    _tuner_keys.update(keys)
    _tuner_check = check


def input_batches(value, name: str) -> tuple:
    """``value`` as a non-empty tuple of batches, each a tuple of tensors (a lone tensor is a 1-tuple).

    For options that carry the model's inputs (``calibration``, the tuner's ``holdout``).
    """
    import torch

    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError(f"option {name!r} must be a non-empty list of input tuples, e.g. [(x1,), (x2,)], "
                        f"got {type(value).__name__}")
    batches = []
    for i, batch in enumerate(value):
        batch = (batch,) if isinstance(batch, torch.Tensor) else batch
        if not isinstance(batch, (list, tuple)) or not batch or \
                not all(isinstance(t, torch.Tensor) for t in batch):
            raise TypeError(f"option {name!r}: entry {i} must be a tuple of the model's tensor inputs, "
                            f"got {type(batch).__name__}")
        batches.append(tuple(batch))
    return tuple(batches)


def _bool(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"option {name!r} must be a bool, got {value!r}")
    return value


def _plan(value) -> Plan:
    if isinstance(value, Plan):
        return value
    if isinstance(value, dict):
        if "layers" in value:
            return Plan.from_dict(value)
        return Plan({n: (s if isinstance(s, SketchSpec) or s is None else SketchSpec(**s)) for n, s in value.items()})
    if isinstance(value, (str, os.PathLike)):
        return Plan.load(value)
    raise TypeError(f"option 'plan' must be a panther.Plan, a dict or a JSON file path, got {type(value).__name__}")


def with_plan(options: dict | None, plan) -> dict:
    """A copy of the user's options with an API call's ``plan`` argument put under 'plan'."""
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    opts = dict(options or {})
    if plan is not None:
        if "plan" in opts:
            raise ValueError("give the plan either as the plan argument or as options['plan'], not both")
        opts["plan"] = plan
    return opts


def parse_options(options: dict | None) -> Options:
    """Options from the user's dict; raises on unknown keys, bad values or conflicting plan sources."""
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    options = dict(options or {})
    valid = valid_keys()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listing = "\n".join(f"  {k}: {v}" for k, v in valid.items())
        raise ValueError(f"unknown panther option(s) {unknown}; valid options:\n{listing}")
    kw = {}
    if ("num_terms" in options) != ("low_rank" in options):
        raise ValueError("options 'num_terms' and 'low_rank' go together (a fixed plan needs both)")
    if "num_terms" in options:
        kw["num_terms"] = positive_int(options["num_terms"], "num_terms")
        kw["low_rank"] = positive_int(options["low_rank"], "low_rank")
    if "rank_ratio" in options:
        r = options["rank_ratio"]
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0 < r < 1:
            raise ValueError(f"option 'rank_ratio' must be a number in (0, 1), got {r!r}")
        kw["rank_ratio"] = float(r)
    if "plan" in options:
        kw["plan"] = _plan(options["plan"])
    if "tune" in options:
        kw["tune"] = _bool(options["tune"], "tune")
    sources = [s for s in ("num_terms", "rank_ratio", "plan") if s in kw] + (["tune"] if kw.get("tune") else [])
    if len(sources) > 1:
        raise ValueError(f"give one plan source, got {sources}: fixed (num_terms+low_rank), rank_ratio, plan or tune")
    if "init" in options:
        kw["init"] = one_of(options["init"], "init", INITS)
    if "kinds" in options:
        kinds = options["kinds"]
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        for k in kinds:
            one_of(k, "kinds", KINDS)
        kw["kinds"] = kinds
    if "attention" in kw.get("kinds", ()) and "rank_ratio" in kw:
        raise ValueError("rank_ratio applies to linear and conv2d nodes; give attention its random features "
                         "with num_terms/low_rank or a plan")
    if "seed" in options:
        seed = options["seed"]
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"option 'seed' must be an int, got {seed!r}")
        kw["seed"] = int(seed)
    for name in ("fuse", "report", "fallback"):
        if name in options:
            kw[name] = _bool(options[name], name)
    if "save_plan" in options:
        if not isinstance(options["save_plan"], (str, os.PathLike)):
            raise TypeError(f"option 'save_plan' must be a file path, got {options['save_plan']!r}")
        kw["save_plan"] = os.fspath(options["save_plan"])
    if "inductor" in options:
        if not isinstance(options["inductor"], dict):
            raise TypeError(f"option 'inductor' must be a dict of Inductor config patches, got {options['inductor']!r}")
        kw["inductor"] = dict(options["inductor"])
    if "mode" in options:
        kw["mode"] = one_of(options["mode"], "mode", MODES)
    if "calibration" in options:
        kw["calibration"] = input_batches(options["calibration"], "calibration")
    extra = {k: v for k, v in options.items() if k in _tuner_keys}
    kw["extra"] = _tuner_check(extra) if _tuner_check is not None else extra
    return Options(**kw)
