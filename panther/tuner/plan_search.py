"""Per-node plan search: the cheapest plan whose output error stays within a budget.

The engine is independent of how plans are applied. It takes

* ``nodes``: :class:`PlanNode` (name, kind, sizes) for every layer/graph node it may sketch;
* ``evaluate(plan) -> float``: relative error of the model/graph under ``plan`` against the
  dense one on calibration batches (module swap, FX rewrite, anything);
* ``cost(node, spec) -> float``: the node's cost under ``spec`` (None = dense). Default:
  multiply-adds per call (:func:`flops_cost`); :class:`LatencyCost` times the real ops at the
  node's shapes (``costs.py``);
* optionally ``holdout(plan) -> float``: the same error on held-out batches,

and returns a :class:`PlanSearchResult` whose ``plan`` meets ``max_error`` on the held-out
batches (or, without them, on calibration), or the all-dense plan with a message.

Method:
1. Grid per node: rank k (L = 1: the two-GEMM form costs the same for every L with equal
   2Lk, and truncated SVD/ASVD depend only on 2Lk) on powers of two from 4 up, only where
   the sketched cost is below dense (only configurations that can win), times the inits the
   node can take (:meth:`PlanNode.choices`: "asvd" only for linear and conv2d nodes whose
   calibration activations are known; attention takes random features, no init).
2. Sensitivity: the error of sketching each node alone, from the largest k downwards until
   it exceeds the budget (smaller k only get worse). Options over budget on their own are
   dropped; each k keeps its better init.
3. Search: per node an ordinal choice (0 = dense, i = i-th option, cheaper as i grows).
   Greedy plans under an additive error model, at several fractions of the budget, are
   enqueued; then Optuna's TPE with the constraint error <= max_error explores around them.
   Every evaluated plan is a trial (error and cost are stored), so a study in ``storage``
   resumes after a crash, several processes can share it, and a finished one is reused.
4. Verify the three cheapest feasible plans on held-out batches; while one is over budget, its
   node with the worst error per saved cost goes back to dense. The cheapest plan that still
   sketches something wins; if none does, every node stays dense (with a message).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field

from ..plan import INITS, Plan, SketchSpec
from .costs import LatencyCost, flops_cost, memory_cost
from .progress import progress_bar
from .storage import finished_trials, resolve_storage

KINDS = ("linear", "conv2d", "attention")
# inits each kind can take: ASVD needs a layer's input statistics (a conv's: of its input
# patches); random features (attention) have no init to choose
KIND_INITS = {"linear": ("sketch", "svd", "asvd"), "conv2d": ("sketch", "svd", "asvd"), "attention": ("sketch",)}


@dataclass(frozen=True)
class PlanNode:
    """One decision point.

    ``sizes``: linear {"in_features", "out_features", "rows"}; conv2d {"in_channels",
    "out_channels", "kernel_size", "groups", "pixels", and for timing "input_shape" [B, C, H, W],
    "stride", "padding" (left, right, top, bottom), "dilation"}; attention {"head_dim", "q_len",
    "k_len", "heads", "batch", "causal"}. ``rows``/``pixels``/``batch`` (per call) scale costs.
    ``inits``: the inits this node can take (None: all its kind can, see ``KIND_INITS``); a
    linear or conv2d node without calibration activations leaves out "asvd".
    """

    name: str
    kind: str
    sizes: dict = field(default_factory=dict, hash=False)
    inits: tuple | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"PlanNode name must be a non-empty str, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"PlanNode kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.inits is not None:
            inits = (self.inits,) if isinstance(self.inits, str) else tuple(self.inits)
            bad = [i for i in inits if i not in KIND_INITS[self.kind]]
            if bad:
                raise ValueError(f"PlanNode {self.name!r} inits: a {self.kind} node takes "
                                 f"{list(KIND_INITS[self.kind])}, got {bad}")
            object.__setattr__(self, "inits", inits)

    def choices(self, wanted) -> tuple:
        """The inits of ``wanted`` this node can take (attention: "sketch", whatever is wanted)."""
        if self.kind == "attention":
            return ("sketch",)
        allowed = self.inits if self.inits is not None else KIND_INITS[self.kind]
        return tuple(i for i in wanted if i in allowed)


COSTS = {"flops": flops_cost, "memory": memory_cost}
VERIFIED = 3  # the cheapest feasible plans confirmed on held-out data (each backed off as needed)


def _ladder(node, cost, inits):
    """[[spec per init] per rank], largest rank first, for the ranks whose cost is below dense."""
    inits = node.choices(inits)
    if not inits:
        return []
    dense = cost(node, None)
    options, k = [], 4 if node.kind != "attention" else 16
    while k <= 8192:
        specs = [SketchSpec(1, k, init) for init in inits]
        if cost(node, specs[0]) >= dense:
            break
        options.append(specs)
        k *= 2
    return options[::-1]  # largest k (most accurate, dearest) first


@dataclass
class PlanSearchResult:
    """The chosen ``plan``, its calibration ``error`` and ``holdout_error``, its ``cost`` against
    ``dense_cost``, every evaluated plan (``trials``: params, error, cost), the error of each
    option alone (``sensitivity``, keyed "node|k|init"), the ``nodes`` searched and their
    (cost under the plan, dense cost) in ``node_costs``."""

    plan: Plan
    error: float | None
    holdout_error: float | None
    cost: float
    dense_cost: float
    max_error: float
    trials: list = field(default_factory=list)
    sensitivity: dict = field(default_factory=dict)
    message: str = ""
    nodes: list = field(default_factory=list)
    node_costs: dict = field(default_factory=dict)

    @property
    def cost_ratio(self) -> float:
        return self.cost / self.dense_cost if self.dense_cost else 1.0

    def summary(self) -> str:
        """A table (tabulate) of the chosen spec per node, with its error alone and its cost vs dense."""
        from tabulate import tabulate

        rows = []
        for name, spec in self.plan.entries.items():
            alone = None if spec is None else self.sensitivity.get(f"{name}|{spec.low_rank}|{spec.init}")
            cost, dense = self.node_costs.get(name, (None, None))
            rows.append([name, "dense" if spec is None else f"L={spec.num_terms} k={spec.low_rank} {spec.init}",
                         "" if alone is None else f"{alone:.3g}",
                         f"{cost / dense:.1%}" if cost is not None and dense else ""])
        head = (f"plan: cost {self.cost:.4g} / dense {self.dense_cost:.4g} ({self.cost_ratio:.1%}), "
                f"error {self.error if self.error is not None else float('nan'):.3g}"
                + (f", held-out {self.holdout_error:.3g}" if self.holdout_error is not None else "")
                + f" (budget {self.max_error:g}) {self.message}")
        return head + "\n" + tabulate(rows, headers=["node", "decision", "error alone", "cost vs dense"])


def _sensitivity_name(nodes, extra) -> str:
    """The side study of per-node errors: they depend on the nodes, weights and data
    (``extra``), not on the budget, the objective or the inits (keys name the init), so searches
    with other budgets or objectives in the same storage reuse them."""
    data = json.dumps([[n.name, n.kind] for n in nodes] + [extra])
    return "panther_sensitivity_" + hashlib.sha256(data.encode()).hexdigest()[:16]


def _fingerprint(nodes, max_error, inits, objective, extra) -> str:
    data = json.dumps([[n.name, n.kind, sorted((k, str(v)) for k, v in n.sizes.items()),
                        None if n.inits is None else list(n.inits)] for n in nodes]
                      + [max_error, list(inits), objective, extra], sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def check_search_settings(max_error, trials, inits) -> None:
    """The settings every search takes, checked (errors name the argument) before any work."""
    if isinstance(max_error, bool) or not isinstance(max_error, (int, float)) or not max_error >= 0:
        raise ValueError(f"max_error must be a number >= 0, got {max_error!r}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 0:
        raise ValueError(f"trials must be an int >= 0, got {trials!r}")
    if isinstance(inits, str) or not isinstance(inits, (list, tuple)) or not inits:
        raise ValueError(f"inits must be a non-empty list of 'sketch', 'svd', 'asvd', got {inits!r}")
    for init in inits:
        if init not in INITS:
            raise ValueError(f"inits must hold 'sketch', 'svd' or 'asvd', got {init!r}")


def _check_arguments(nodes, evaluate, max_error, trials, inits) -> None:
    names = [getattr(n, "name", None) for n in nodes]
    if not all(isinstance(n, PlanNode) for n in nodes):
        raise TypeError("nodes must be a list of panther.tuner.PlanNode")
    if len(set(names)) != len(names):
        raise ValueError("nodes must have distinct names")
    if not callable(evaluate):
        raise TypeError(f"evaluate must be callable f(plan) -> float, got {evaluate!r}")
    check_search_settings(max_error, trials, inits)


def _resolve_cost(cost):
    """(cost function, objective name) for a cost name, a LatencyCost or a callable."""
    if isinstance(cost, str):
        if cost == "latency":
            return LatencyCost(), "latency"
        if cost not in COSTS:
            raise ValueError(f"cost must be 'flops', 'memory', 'latency' or a callable, got {cost!r}")
        return COSTS[cost], cost
    if isinstance(cost, LatencyCost):
        return cost, "latency"
    if not callable(cost):
        raise TypeError(f"cost must be a name or a callable f(node, spec) -> float, got {cost!r}")
    return cost, getattr(cost, "__name__", "custom")


def _error_fn(evaluate):
    """``evaluate`` with its warnings silenced and non-finite errors turned into inf."""
    def plan_error(plan) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            value = float(evaluate(plan))
        return value if math.isfinite(value) else math.inf
    return plan_error


def _stored(value: float) -> float:
    return value if math.isfinite(value) else 1e30


@dataclass
class _Space:
    """Per node the options that fit the budget alone, [(spec, error alone)] from the largest rank
    (index 1) down; a choice maps each node to 0 (dense) or an option index."""

    nodes: list
    options: dict
    cost: object
    dense_costs: dict

    def spec(self, name: str, i: int):
        return self.options[name][i - 1][0] if i else None

    def error_alone(self, name: str, i: int) -> float:
        return self.options[name][i - 1][1] if i else 0.0

    def node_cost(self, node, i: int) -> float:
        return self.cost(node, self.spec(node.name, i)) if i else self.dense_costs[node.name]

    def build(self, choice) -> Plan:
        return Plan({n.name: self.spec(n.name, choice.get(n.name, 0)) for n in self.nodes})

    def plan_cost(self, plan) -> float:
        return sum(self.cost(n, plan.get(n.name)) for n in self.nodes)

    def node_costs(self, plan) -> dict:
        return {n.name: (self.cost(n, plan.get(n.name)), self.dense_costs[n.name]) for n in self.nodes}

    def greedy(self, budget: float) -> dict:
        """Steps down the node whose next option saves the most cost per unit of error (errors
        assumed additive) while the total stays within ``budget``."""
        choice = {n.name: 0 for n in self.nodes}
        used = 0.0
        while True:
            best = None
            for n in self.nodes:
                i = choice[n.name]
                if i >= len(self.options[n.name]):
                    continue
                extra = self.error_alone(n.name, i + 1) - self.error_alone(n.name, i)
                if used + extra > budget:
                    continue
                gain = (self.node_cost(n, i) - self.node_cost(n, i + 1)) / max(extra, 1e-12)
                if best is None or gain > best[0]:
                    best = (gain, n.name, extra)
            if best is None:
                return choice
            choice[best[1]] += 1
            used += best[2]

    def worst(self, choice) -> str:
        """The sketched node with the most error alone per saved cost (the first to back off)."""
        return max((n for n in self.nodes if choice[n.name]),
                   key=lambda n: self.error_alone(n.name, choice[n.name]) /
                   max(self.dense_costs[n.name] - self.node_cost(n, choice[n.name]), 1e-12)).name


def _sensitivity(nodes, ladders, plan_error, max_error, study, bar):
    """Each node sketched alone, from the largest rank down until the best init at a rank is over
    budget; returns ({node: [(spec, error)]}, {"node|k|init": error}). Results already in
    ``study`` (a resumed search) are reused."""
    import optuna

    known = {t.user_attrs["key"]: t.value for t in study.get_trials(deepcopy=False)
             if t.state == optuna.trial.TrialState.COMPLETE}
    dense = {n.name: None for n in nodes}
    options, sensitivity = {}, {}
    for node in nodes:
        kept, ladder = [], ladders[node.name]
        for r, specs in enumerate(ladder):
            errors = []
            for spec in specs:
                key = f"{node.name}|{spec.low_rank}|{spec.init}"
                if key not in known:
                    known[key] = plan_error(Plan({**dense, node.name: spec}))
                    trial = study.ask()
                    trial.set_user_attr("key", key)
                    study.tell(trial, _stored(known[key]))
                sensitivity[key] = known[key]
                errors.append((known[key], spec))
                bar.update(1)
            err, spec = min(errors, key=lambda e: e[0])
            if err > max_error:  # smaller ranks only get worse
                bar.update(sum(len(s) for s in ladder[r + 1:]))
                break
            kept.append((spec, err))
        options[node.name] = kept
    return options, sensitivity


def _run_trials(study, space: _Space, plan_error, trials: int, max_error: float, bar) -> None:
    """Greedy seeds (a fresh study only), then constrained TPE until the study holds ``trials``
    finished trials; a plan already evaluated is not evaluated again."""
    import optuna

    dists = {n.name: optuna.distributions.IntDistribution(0, len(space.options[n.name])) for n in space.nodes}
    done = {json.dumps(t.params, sort_keys=True): t.user_attrs.get("error") for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE}
    if not done:
        seeds = {json.dumps(space.greedy(max_error * f), sort_keys=True) for f in (0.25, 0.5, 1.0, 2.0, 4.0)}
        for seed in sorted(seeds):
            study.enqueue_trial(json.loads(seed), skip_if_exists=True)
    while len(finished_trials(study)) < trials:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = study.ask(dists)
        key = json.dumps(trial.params, sort_keys=True)
        plan = space.build(trial.params)
        err = done[key] if key in done else plan_error(plan)
        trial.set_user_attr("error", _stored(err))
        trial.set_constraint("error", _stored(err) - max_error)  # <= 0: feasible
        study.tell(trial, space.plan_cost(plan))
        done[key] = err
        bar.update(1)


def _records(study) -> list:
    import optuna

    return [{"params": dict(t.params), "error": t.user_attrs.get("error"), "cost": t.value}
            for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


def _verify(space: _Space, record, holdout, plan_error, max_error):
    """(plan, calibration error, held-out error) of ``record`` after backing nodes off to dense
    until the held-out error fits; None if even that fails."""
    original = {n.name: record["params"].get(n.name, 0) for n in space.nodes}
    choice = dict(original)
    plan = space.build(choice)
    held = float(holdout(plan)) if holdout is not None else None
    while held is not None and held > max_error and any(choice.values()):
        choice[space.worst(choice)] = 0
        plan = space.build(choice)
        held = float(holdout(plan))
    if held is not None and held > max_error:
        return None
    return plan, record["error"] if choice == original else plan_error(plan), held


def search_plan(nodes, evaluate, *, max_error: float, cost="flops", holdout=None, trials: int = 40,
                inits=("svd",), storage=None, study_name: str | None = None, fingerprint: str = "",
                seed: int = 0, show_progress_bar: bool = False, verbose: bool = False) -> PlanSearchResult:
    """Searches per-node sketch specs; see the module docstring.

    Args:
        nodes: list of :class:`PlanNode`.
        evaluate: ``f(plan) -> relative error`` on calibration batches.
        max_error: the error budget (>= 0); 0 gives the dense plan.
        cost: "flops", "memory", "latency" (a :class:`LatencyCost` on the CPU; pass your own
            ``LatencyCost(device, dtype)`` for another device) or ``f(node, spec) -> float``.
        holdout: ``f(plan) -> relative error`` on held-out batches, to confirm the plan.
        trials: plan evaluations in the Optuna phase (sensitivity runs come on top).
        inits: sketch inits to consider per node ("svd", "asvd", "sketch"); each node takes
            those it can (:meth:`PlanNode.choices`), and each rank keeps its best init.
        storage, study_name: keep the study (and its sensitivity results) for resuming and
            sharing; the default name is derived from the nodes and options plus ``fingerprint``
            (pass a hash of the weights and data so that changed ones get a new study). Without
            a ``study_name``, the sensitivity results are kept apart from the budget and
            objective, so a sweep over budgets in one storage measures each option once.
        show_progress_bar: one bar over the sensitivity runs and the trials.
    """
    import optuna

    nodes = list(nodes)
    _check_arguments(nodes, evaluate, max_error, trials, inits)
    cost, objective = _resolve_cost(cost)
    dense_costs = {n.name: cost(n, None) for n in nodes}
    dense_total = sum(dense_costs.values())
    dense_plan = Plan({n.name: None for n in nodes})
    dense_node_costs = {n.name: (dense_costs[n.name], dense_costs[n.name]) for n in nodes}
    if max_error == 0 or not nodes:
        return PlanSearchResult(dense_plan, 0.0, None, dense_total, dense_total, max_error, nodes=nodes,
                                node_costs=dense_node_costs,
                                message="budget 0: every node stays dense" if nodes else "no nodes")

    storage = resolve_storage(storage)
    given_name = study_name
    study_name = study_name or "panther_plan_" + _fingerprint(nodes, max_error, inits, objective, fingerprint)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan_error = _error_fn(evaluate)

    # 1-2. sensitivity (stored in a side study so that a resumed search skips it)
    ladders = {n.name: _ladder(n, cost, inits) for n in nodes}
    bar = progress_bar(sum(len(s) for v in ladders.values() for s in v) + trials, "panther tune", show_progress_bar)
    try:
        sens_name = (given_name + ":sensitivity") if given_name else _sensitivity_name(nodes, fingerprint)
        sens_study = optuna.create_study(storage=storage, study_name=sens_name, load_if_exists=True)
        options, sensitivity = _sensitivity(nodes, ladders, plan_error, max_error, sens_study, bar)
        if verbose:
            print(f"[panther tune] sensitivity: {sum(len(v) for v in options.values())} options within budget "
                  f"over {len(nodes)} nodes")
        space = _Space(nodes, options, cost, dense_costs)
        # 3. greedy seeds under the additive model, then constrained TPE
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
        study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler, direction="minimize",
                                    load_if_exists=True)
        _run_trials(study, space, plan_error, trials, max_error, bar)
    finally:
        bar.close()

    # 4. verification and back-off of the cheapest feasible plans; the cheapest sketched survivor wins
    records = _records(study)
    feasible = sorted((r for r in records if r["error"] is not None and r["error"] <= max_error),
                      key=lambda r: (r["cost"], r["error"]))
    verified = [v for v in (_verify(space, r, holdout, plan_error, max_error) for r in feasible[:VERIFIED])
                if v is not None and v[0].sketched()]
    if verified:
        plan, err, held = min(verified, key=lambda v: (space.plan_cost(v[0]), v[1]))
        return PlanSearchResult(plan, err, held, space.plan_cost(plan), dense_total, max_error, records,
                                sensitivity, "", nodes, space.node_costs(plan))
    message = ("nothing fitted the budget on held-out data: dense plan" if holdout is not None and
               any(r["cost"] < dense_total for r in feasible) else "no sketched plan met max_error: every node "
               "stays dense")
    return PlanSearchResult(dense_plan, 0.0, None, dense_total, dense_total, max_error, records, sensitivity,
                            message, nodes, dense_node_costs)
