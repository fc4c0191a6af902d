"""Per-node plan search: the cheapest plan whose output error stays within a budget.

The engine is independent of how plans are applied. It takes

* ``nodes``: :class:`PlanNode` (name, kind, sizes) for every layer/graph node it may sketch;
* ``evaluate(plan) -> float``: relative error of the model/graph under ``plan`` against the
  dense one on calibration batches (module swap, FX rewrite, anything);
* ``cost(node, spec) -> float``: the node's cost under ``spec`` (None = dense). Default:
  multiply-adds per row (:func:`flops_cost`); :class:`LatencyCost` measures the real ops;
* optionally ``holdout(plan) -> float``: the same error on held-out batches,

and returns a :class:`PlanSearchResult` whose ``plan`` meets ``max_error`` on the held-out
batches (or, without them, on calibration), or the all-dense plan with a message.

Method:
1. Grid per node: rank k (L = 1: the two-GEMM form costs the same for every L with equal
   2Lk, and truncated SVD/ASVD depend only on 2Lk) on powers of two from 4 up, only where
   the sketched cost is below dense, times the allowed inits.
2. Sensitivity: the error of sketching each node alone, from the largest k downwards until
   it exceeds the budget (smaller k only get worse). Options over budget on their own are
   dropped; each k keeps its better init.
3. Search: per node an ordinal choice (0 = dense, i = i-th option, cheaper as i grows).
   Greedy plans under an additive error model, at several fractions of the budget, are
   enqueued; then Optuna's TPE with the constraint error <= max_error explores around them.
   Every evaluated plan is a trial (error and cost are stored), so a study in ``storage``
   resumes after a crash, several processes can share it, and a finished one is reused.
4. Verify the best feasible plan on held-out batches; while it is over budget, the node with
   the worst error per saved cost goes back to dense.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field

from ..plan import Plan, SketchSpec
from .progress import progress_bar
from .storage import finished_trials, resolve_storage

KINDS = ("linear", "conv2d", "attention")


@dataclass(frozen=True)
class PlanNode:
    """One decision point. ``sizes``: linear {"in_features", "out_features", "rows"};
    conv2d {"in_channels", "out_channels", "kernel_size", "groups", "pixels"};
    attention {"head_dim", "q_len", "k_len", "heads"}. ``rows``/``pixels`` (per call) scale costs."""

    name: str
    kind: str
    sizes: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"PlanNode name must be a non-empty str, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"PlanNode kind must be one of {list(KINDS)}, got {self.kind!r}")


def flops_cost(node: PlanNode, spec: SketchSpec | None) -> float:
    """Multiply-adds of one call of the node (dense when ``spec`` is None)."""
    s = node.sizes
    if node.kind == "linear":
        rows, d_in, d_out = s.get("rows", 1), s["in_features"], s["out_features"]
        return float(rows * (d_in * d_out if spec is None else spec.rank * (d_in + d_out)))
    if node.kind == "conv2d":
        kh, kw = s["kernel_size"]
        groups = s.get("groups", 1)
        patch = s["in_channels"] // groups * kh * kw
        per_pixel = s["out_channels"] * patch if spec is None else groups * spec.rank * patch + spec.rank * s["out_channels"]
        return float(s.get("pixels", 1) * per_pixel)
    heads, n, m, d = s.get("heads", 1), s["q_len"], s["k_len"], s["head_dim"]
    if spec is None:
        return float(heads * 2 * n * m * d)
    f = spec.low_rank
    return float(heads * (f * d * (n + m) + f * (m + n) * (d + 1)))


def memory_cost(node: PlanNode, spec: SketchSpec | None) -> float:
    """Weight elements held by the node (learned factors only for a sketch)."""
    s = node.sizes
    if node.kind == "linear":
        d_in, d_out = s["in_features"], s["out_features"]
        return float(d_in * d_out if spec is None else spec.rank * (d_in + d_out) / 2)
    if node.kind == "conv2d":
        kh, kw = s["kernel_size"]
        patch = s["in_channels"] // s.get("groups", 1) * kh * kw
        return float(s["out_channels"] * patch if spec is None else spec.rank * patch)
    return 0.0 if spec is None else float(spec.low_rank * s["head_dim"])


class LatencyCost:
    """Measured seconds of the node's op at its shape on ``device`` (cached per shape and rank).

    Linear nodes: ``x @ Wᵀ`` vs the sketched form ``(x @ A) @ B`` (what SKLinear runs);
    other kinds fall back to :func:`flops_cost` scaled by the measured linear throughput.
    """

    _cache: dict = {}

    def __init__(self, device="cpu", dtype=None, repeats: int = 15):
        import torch

        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.repeats = repeats

    def _time(self, fn) -> float:
        import torch

        for _ in range(3):
            fn()
        times = []
        for _ in range(self.repeats):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t = time.perf_counter()
            fn()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    def __call__(self, node: PlanNode, spec: SketchSpec | None) -> float:
        import torch

        if node.kind != "linear":
            return flops_cost(node, spec) * self._seconds_per_flop()
        s = node.sizes
        rows, d_in, d_out = max(1, s.get("rows", 1)), s["in_features"], s["out_features"]
        key = (str(self.device), str(self.dtype), rows, d_in, d_out, None if spec is None else spec.rank)
        if key not in self._cache:
            g = torch.Generator(device="cpu").manual_seed(0)
            make = lambda *shape: torch.randn(*shape, generator=g).to(self.device, self.dtype)  # noqa: E731
            x = make(rows, d_in)
            with torch.no_grad():
                if spec is None:
                    w = make(d_out, d_in)
                    self._cache[key] = self._time(lambda: torch.nn.functional.linear(x, w))
                else:
                    a, b = make(d_in, spec.rank), make(spec.rank, d_out)
                    self._cache[key] = self._time(lambda: (x @ a) @ b)
        return self._cache[key]

    def _seconds_per_flop(self) -> float:
        probe = PlanNode("probe", "linear", {"rows": 256, "in_features": 512, "out_features": 512})
        return self(probe, None) / flops_cost(probe, None)


COSTS = {"flops": flops_cost, "memory": memory_cost}


def _ladder(node, cost, inits):
    dense = cost(node, None)
    options, k = [], 4 if node.kind != "attention" else 16
    limit = 8192
    while k <= limit:
        specs = [SketchSpec(1, k, init if node.kind != "attention" else "sketch") for init in inits]
        if cost(node, specs[0]) >= dense:
            break
        options.append(specs if node.kind != "attention" else specs[:1])
        k *= 2
    return options[::-1]  # largest k (most accurate, dearest) first


@dataclass
class PlanSearchResult:
    plan: Plan
    error: float | None
    holdout_error: float | None
    cost: float
    dense_cost: float
    max_error: float
    trials: list = field(default_factory=list)
    sensitivity: dict = field(default_factory=dict)
    message: str = ""

    @property
    def cost_ratio(self) -> float:
        return self.cost / self.dense_cost if self.dense_cost else 1.0

    def summary(self) -> str:
        """A table (tabulate) of the chosen spec per node."""
        from tabulate import tabulate

        rows = []
        for name, spec in self.plan.entries.items():
            rows.append([name, "dense" if spec is None else f"L={spec.num_terms} k={spec.low_rank} {spec.init}"])
        head = (f"plan: cost {self.cost:.4g} / dense {self.dense_cost:.4g} ({self.cost_ratio:.1%}), "
                f"error {self.error if self.error is not None else float('nan'):.3g}"
                + (f", held-out {self.holdout_error:.3g}" if self.holdout_error is not None else "")
                + f" (budget {self.max_error:g}) {self.message}")
        return head + "\n" + tabulate(rows, headers=["node", "decision"])


def _fingerprint(nodes, max_error, inits, objective, extra) -> str:
    data = json.dumps([[n.name, n.kind, sorted((k, str(v)) for k, v in n.sizes.items())] for n in nodes]
                      + [max_error, list(inits), objective, extra], sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def search_plan(nodes, evaluate, *, max_error: float, cost="flops", holdout=None, trials: int = 40,
                inits=("svd",), storage=None, study_name: str | None = None, fingerprint: str = "",
                seed: int = 0, show_progress_bar: bool = False, verbose: bool = False) -> PlanSearchResult:
    """Searches per-node sketch specs; see the module docstring.

    Args:
        nodes: list of :class:`PlanNode`.
        evaluate: ``f(plan) -> relative error`` on calibration batches.
        max_error: the error budget (>= 0); 0 gives the dense plan.
        cost: "flops", "memory", "latency" (CPU timings, cached) or ``f(node, spec) -> float``.
        holdout: ``f(plan) -> relative error`` on held-out batches, to confirm the plan.
        trials: plan evaluations in the Optuna phase (sensitivity runs come on top).
        inits: sketch inits to consider per node ("svd", "asvd", "sketch").
        storage, study_name: keep the study (and its sensitivity results) for resuming and
            sharing; the default name is derived from the nodes and options plus ``fingerprint``
            (pass a hash of the weights so changed weights get a new study).
    """
    import optuna

    nodes = list(nodes)
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise ValueError("nodes must have distinct names")
    if not all(isinstance(n, PlanNode) for n in nodes):
        raise TypeError("nodes must be a list of panther.tuner.PlanNode")
    if not callable(evaluate):
        raise TypeError(f"evaluate must be callable f(plan) -> float, got {evaluate!r}")
    if isinstance(max_error, bool) or not isinstance(max_error, (int, float)) or not max_error >= 0:
        raise ValueError(f"max_error must be a number >= 0, got {max_error!r}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 0:
        raise ValueError(f"trials must be an int >= 0, got {trials!r}")
    for init in inits:
        if init not in ("sketch", "svd", "asvd"):
            raise ValueError(f"inits must hold 'sketch', 'svd' or 'asvd', got {init!r}")
    objective = cost if isinstance(cost, str) else getattr(cost, "__name__", "custom")
    if cost == "latency":
        cost = LatencyCost()
    elif isinstance(cost, str):
        if cost not in COSTS:
            raise ValueError(f"cost must be 'flops', 'memory', 'latency' or a callable, got {cost!r}")
        cost = COSTS[cost]
    elif not callable(cost):
        raise TypeError(f"cost must be a name or a callable f(node, spec) -> float, got {cost!r}")

    dense_costs = {n.name: cost(n, None) for n in nodes}
    dense_total = sum(dense_costs.values())
    dense_plan = Plan({n.name: None for n in nodes})
    if max_error == 0 or not nodes:
        return PlanSearchResult(dense_plan, 0.0, None, dense_total, dense_total, max_error,
                                message="budget 0: every node stays dense" if nodes else "no nodes")

    storage = resolve_storage(storage)
    study_name = study_name or "panther_plan_" + _fingerprint(nodes, max_error, inits, objective, fingerprint)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def plan_error(plan):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            value = float(evaluate(plan))
        return value if math.isfinite(value) else math.inf

    # 1-2. sensitivity (stored in a side study so that a resumed search skips it)
    sens_study = optuna.create_study(storage=storage, study_name=study_name + ":sensitivity", load_if_exists=True)
    known = {t.user_attrs["key"]: t.value for t in sens_study.get_trials(deepcopy=False)
             if t.state == optuna.trial.TrialState.COMPLETE}
    sensitivity, options = {}, {}
    ladders = {n.name: _ladder(n, cost, inits) for n in nodes}
    total_sens = sum(len(v) * len(v[0]) for v in ladders.values() if v)
    bar = progress_bar(total_sens + trials, "panther tune", show_progress_bar)
    for node in nodes:
        kept = []
        for specs in ladders[node.name]:
            best = None
            for spec in specs:
                key = f"{node.name}|{spec.low_rank}|{spec.init}"
                if key not in known:
                    err = plan_error(Plan({**dense_plan.entries, node.name: spec}))
                    t = sens_study.ask()
                    t.set_user_attr("key", key)
                    sens_study.tell(t, err if math.isfinite(err) else 1e30)
                    known[key] = err
                bar.update(1)
                sensitivity[key] = known[key]
                if best is None or known[key] < best[1]:
                    best = (spec, known[key])
            if best[1] > max_error:
                break  # smaller ranks only get worse
            kept.append(best)
        options[node.name] = kept
    if verbose:
        print(f"[panther tune] sensitivity: {sum(len(v) for v in options.values())} options within budget "
              f"over {len(nodes)} nodes")

    def build(choice):
        return Plan({n.name: (options[n.name][choice[n.name] - 1][0] if choice[n.name] else None) for n in nodes})

    def plan_cost(plan):
        return sum(cost(n, plan.get(n.name)) for n in nodes)

    # 3. greedy seeds under the additive model, then constrained TPE
    def greedy(budget):
        choice = {n.name: 0 for n in nodes}
        used = 0.0
        while True:
            best = None
            for n in nodes:
                i = choice[n.name]
                if i >= len(options[n.name]):
                    continue
                prev_err = options[n.name][i - 1][1] if i else 0.0
                prev_cost = cost(n, options[n.name][i - 1][0]) if i else dense_costs[n.name]
                err, c = options[n.name][i][1], cost(n, options[n.name][i][0])
                if used + err - prev_err > budget:
                    continue
                gain = (prev_cost - c) / max(err - prev_err, 1e-12)
                if best is None or gain > best[0]:
                    best = (gain, n.name, err - prev_err)
            if best is None:
                return choice
            choice[best[1]] += 1
            used += best[2]

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler, direction="minimize",
                                load_if_exists=True)
    dists = {n.name: optuna.distributions.IntDistribution(0, len(options[n.name])) for n in nodes}
    done = {json.dumps(t.params, sort_keys=True): t for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE}
    if not done:
        seeds = {json.dumps(greedy(max_error * f), sort_keys=True) for f in (0.25, 0.5, 1.0, 2.0, 4.0)}
        for s in sorted(seeds):
            study.enqueue_trial(json.loads(s), skip_if_exists=True)
    while len(finished_trials(study)) < trials:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = study.ask(dists)
        key = json.dumps(trial.params, sort_keys=True)
        plan = build(trial.params)
        if key in done:
            err = done[key].user_attrs["error"]
        else:
            err = plan_error(plan)
        trial.set_user_attr("error", err if math.isfinite(err) else 1e30)
        trial.set_constraint("error", (err if math.isfinite(err) else 1e30) - max_error)  # <= 0: feasible
        study.tell(trial, plan_cost(plan))
        done[key] = _Done(err)
        bar.update(1)
    bar.close()

    records = []
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.COMPLETE:
            records.append({"params": dict(t.params), "error": t.user_attrs.get("error"), "cost": t.value})
    feasible = sorted((r for r in records if r["error"] is not None and r["error"] <= max_error),
                      key=lambda r: (r["cost"], r["error"]))

    # 4. verification and back-off
    for rec in feasible[:3]:
        choice = {n.name: rec["params"].get(n.name, 0) for n in nodes}
        plan = build(choice)
        held = float(holdout(plan)) if holdout is not None else None
        while held is not None and held > max_error and any(choice.values()):
            worst = max((n for n in nodes if choice[n.name]),
                        key=lambda n: options[n.name][choice[n.name] - 1][1] /
                        max(dense_costs[n.name] - cost(n, options[n.name][choice[n.name] - 1][0]), 1e-12))
            choice[worst.name] = 0
            plan = build(choice)
            held = float(holdout(plan))
        if held is None or held <= max_error:
            sketched = any(choice.values())
            err = rec["error"] if choice == {n.name: rec["params"].get(n.name, 0) for n in nodes} else plan_error(plan)
            return PlanSearchResult(plan, err, held, plan_cost(plan), dense_total, max_error, records, sensitivity,
                                    "" if sketched else "nothing fitted the budget on held-out data: dense plan")
    return PlanSearchResult(dense_plan, 0.0, None, dense_total, dense_total, max_error, records, sensitivity,
                            "no sketched plan met max_error: every node stays dense")


class _Done:
    def __init__(self, error):
        self.user_attrs = {"error": error}
