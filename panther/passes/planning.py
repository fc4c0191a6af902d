"""From candidates and options to a Plan: what each eligible node becomes.

``make_plan(candidates, example_inputs, options)`` is the single entry every front door
uses (backend, ``sketch_model``, ``panther.report``, export). Plan sources:

* fixed ``num_terms``/``low_rank``: that spec for every eligible node of ``options.kinds``
  where it saves work (see :func:`costs`); others dense.
* ``rank_ratio``: L = 1 and k = round(ratio · min(in, out) / 2) per linear/conv node.
* ``plan``: the user's decisions, by layer name (names not in this graph are reported).
* ``tune``: the function registered with :func:`register_tuner` (the tuner package does
  so on import) chooses: ``tuner(candidates, example_inputs, options) -> Plan``.

The saved plan lists every eligible node (``None`` = dense), so it documents the
decisions and a tuner or a person can edit it and feed it back with ``plan``.
"""

from __future__ import annotations

import warnings

from ..plan import Plan, SketchSpec
from .candidates import Candidate
from .options import Options, register_option_keys

_tuner = None


def register_tuner(fn, option_keys: dict[str, str] | None = None, check=None) -> None:
    """Installs ``fn(candidates, example_inputs, options) -> Plan`` as the ``tune=True`` plan source.

    ``option_keys`` (name -> meaning) become valid options; ``fn`` reads them from ``options.extra``.
    ``check(extra) -> extra`` validates their values when options are parsed (before any work).
    """
    global _tuner
    if not callable(fn):
        raise TypeError(f"the tuner must be callable (candidates, example_inputs, options) -> Plan, got {fn!r}")
    if option_keys or check is not None:
        register_option_keys(option_keys or {}, check)
    _tuner = fn


def _hint(size) -> int:
    """A concrete value for a possibly symbolic size (its example value), without adding guards."""
    if isinstance(size, int):
        return size
    node = getattr(size, "node", None)
    hint = getattr(node, "hint", None)
    return int(hint) if hint is not None else 1


def costs(cand: Candidate, spec: SketchSpec | None) -> dict:
    """Parameters and multiply-adds per row/pixel/head, dense and under ``spec`` (None: dense)."""
    i = cand.info
    if cand.kind == "linear":
        d_in, d_out = i["in_features"], i["out_features"]
        dense = d_in * d_out
        sk = spec.rank * (d_in + d_out) if spec else dense
        return {"params": dense, "sketch_params": sk, "flops": 2 * dense, "sketch_flops": 2 * sk}
    if cand.kind == "conv2d":
        G, C_out = i["groups"], i["out_channels"]
        patch = i["in_channels"] // G * i["kernel_size"][0] * i["kernel_size"][1]
        dense = C_out * patch
        sk = (G * spec.rank * patch + spec.rank * C_out) if spec else dense
        return {"params": dense, "sketch_params": sk, "flops": 2 * dense, "sketch_flops": 2 * sk}
    if cand.kind == "attention":
        if i.get("q_len") is None:  # a module, lengths unknown until it runs
            return {"params": 0, "sketch_params": spec.low_rank * i["head_dim"] if spec else 0, "flops": 0,
                    "sketch_flops": 0}
        N, S, D = _hint(i["q_len"]), _hint(i["k_len"]), i["head_dim"]
        dense = 4 * N * S * D  # q kᵀ and (·) v
        # features of q and k, kᵀv summary, q·summary and the normaliser
        sk = 2 * spec.low_rank * D * (N + S) + 2 * spec.low_rank * (S + N) * (D + 1) if spec else dense
        return {"params": 0, "sketch_params": spec.low_rank * D if spec else 0, "flops": dense, "sketch_flops": sk}
    return {"params": 0, "sketch_params": 0, "flops": 0, "sketch_flops": 0}


def saves_work(cand: Candidate, spec: SketchSpec) -> bool:
    """Whether ``spec`` costs fewer multiply-adds (and, for weights, parameters) than dense.
    Attention of unknown lengths (a module, not a traced node) is given the benefit of the doubt."""
    c = costs(cand, spec)
    if cand.kind == "attention" and c["flops"] == 0:
        return True
    return c["sketch_flops"] < c["flops"] and (cand.kind == "attention" or c["sketch_params"] < c["params"])


def _fixed(cand: Candidate, options: Options) -> SketchSpec | None:
    if cand.kind not in options.kinds:
        return None
    spec = SketchSpec(options.num_terms, options.low_rank, options.init)
    if cand.kind == "attention":
        spec = SketchSpec(1, options.low_rank, "sketch")  # init is meaningless for random features
    return spec if saves_work(cand, spec) else None


def _ratio(cand: Candidate, options: Options) -> SketchSpec | None:
    if cand.kind not in options.kinds or cand.kind == "attention":
        return None
    i = cand.info
    if cand.kind == "linear":
        full = min(i["in_features"], i["out_features"])
    else:
        patch = i["in_channels"] // i["groups"] * i["kernel_size"][0] * i["kernel_size"][1]
        full = min(i["out_channels"] // i["groups"], patch)
    spec = SketchSpec(1, max(1, round(options.rank_ratio * full / 2)), options.init)
    return spec if saves_work(cand, spec) else None


def make_plan(candidates: list[Candidate], example_inputs, options: Options) -> Plan:
    """The plan for these candidates (see the module docstring for the sources)."""
    eligible = {}
    for cand in candidates:
        if cand.eligible:
            eligible.setdefault(cand.name, cand)
    if options.tune:
        if _tuner is None:
            try:
                import panther.tuner  # noqa: F401  (registers itself)
            except ImportError as err:
                raise ValueError("option tune=True needs panther.tuner, which could not be imported") from err
        if _tuner is None:
            raise ValueError("option tune=True: no tuner registered (panther.tuner did not call register_tuner)")
        plan = _tuner(candidates, example_inputs, options)
        if not isinstance(plan, Plan):
            raise TypeError(f"the tuner returned {type(plan).__name__}, expected a panther.Plan")
        return plan
    if options.plan is not None:
        names = {c.name for c in candidates}
        unknown = sorted(set(options.plan.entries) - names)
        if unknown:
            warnings.warn(f"panther: the plan names layers not in this graph (kept out; expected where the model "
                          f"has graph breaks): {unknown}", stacklevel=2)
        for name, spec in options.plan.entries.items():
            if spec is not None and name in names and name not in eligible:
                reason = next(c.reason for c in candidates if c.name == name)
                warnings.warn(f"panther: plan entry {name!r} stays dense: the node is not eligible ({reason})",
                              stacklevel=2)
        return Plan({n: options.plan.get(n) for n in eligible})
    if options.num_terms is not None:
        return Plan({n: _fixed(c, options) for n, c in eligible.items()})
    if options.rank_ratio is not None:
        return Plan({n: _ratio(c, options) for n, c in eligible.items()})
    return Plan({n: None for n in eligible})
