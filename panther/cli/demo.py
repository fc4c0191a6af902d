"""``python -m panther demo``: Panther end to end on one model, measured on this machine.

Built-in task (scikit-learn's digits, see :mod:`panther.cli.digits`):

1. train the dense MLP briefly;
2. sketched training: the same architecture with a ``pr.nn.SKLinear`` hidden layer, trained the same way;
3. tune a plan for the trained dense model under the error budget (``panther.tuner.tune_module``), then
   ``torch.compile(model, backend="panther", options={"plan": plan})``;
4. export the tuned model, save it, load it back and check its output.

With ``--model`` the user's model replaces the MLP; it has no training data, so step 2 is
skipped and quality is the relative output error against the dense model. Every number in
the table is measured in this run.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import warnings
from dataclasses import asdict

import torch
from tabulate import tabulate

import panther
from panther.tuner import plot_pareto, tune_module
from panther.tuner.module_plan import first_tensor

from .export_step import export_round_trip
from .measure import call, count_parameters, fmt, fmt_kib, latency_ms, memory_bytes, relative_error
from .user_model import ModelSpecError, load_user_model, move


def _stage(number: int, total: int, text: str) -> float:
    print(f"\n[{number}/{total}] {text}", flush=True)
    return time.perf_counter()


def linear_macs_per_row(model: torch.nn.Module) -> int:
    """Multiply-adds of the model's linear layers for one input row (dense: in·out, sketch: 2Lk·(in+out))."""
    total = 0
    for module in model.modules():
        if isinstance(module, panther.nn.SKLinear):
            total += 2 * module.num_terms * module.low_rank * (module.in_features + module.out_features)
        elif isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features
    return total


def _backend():
    """``"panther"`` through the entry point; the backend function where the package is not installed."""
    import torch._dynamo

    if "panther" in torch._dynamo.list_backends():
        return "panther"
    from panther.backend import panther_backend

    return panther_backend


def _row(name, model_for_size, sketched, total, latency, dense_latency, accuracy, error, seconds, what):
    return {"model": name, "sketched layers": f"{sketched}/{total}",
            "parameters": count_parameters(model_for_size), "memory_bytes": memory_bytes(model_for_size),
            "linear_macs_per_row": linear_macs_per_row(model_for_size), "latency_ms": latency,
            "speedup": dense_latency / latency if latency else None, "accuracy": accuracy,
            "relative_error": error, "seconds": seconds, "seconds_for": what}


def format_rows(rows, batch_rows: int) -> str:
    headers = ["model", "sketched\nlayers", "parameters", "memory\nKiB", "linear MACs\nper row",
               f"latency ms\n(batch {batch_rows})", "speed-up\nvs dense", "test\naccuracy", "rel. error\nvs dense",
               "time s"]
    table = [[r["model"], r["sketched layers"], f"{r['parameters']:,}", fmt_kib(r["memory_bytes"]),
              f"{r['linear_macs_per_row']:,}", fmt(r["latency_ms"], ".3f"), fmt(r["speedup"], ".2f") + "×",
              fmt(r["accuracy"], ".2%"), fmt(r["relative_error"], ".4f"),
              f"{r['seconds']:.1f} ({r['seconds_for']})"] for r in rows]
    return tabulate(table, headers=headers, tablefmt="simple_grid", disable_numparse=True)


def _verdict(rows) -> str:
    dense, compiled = rows[0], rows[-1]
    base = next((r for r in rows if "inductor" in r["model"]), dense)
    if compiled["sketched layers"].startswith("0/"):
        return ("verdict: no layer could be sketched within the error budget, so backend='panther' kept the model "
                "dense; sketching does not pay off for this model at this budget.")
    faster = compiled["latency_ms"] < base["latency_ms"]
    smaller = compiled["memory_bytes"] < dense["memory_bytes"]
    return (f"verdict: the tuned plan is {'faster' if faster else 'NOT faster'} than the same model compiled with "
            f"Inductor ({compiled['latency_ms']:.3f} vs {base['latency_ms']:.3f} ms) and "
            f"{'smaller' if smaller else 'NOT smaller'} ({fmt_kib(compiled['memory_bytes'])} vs "
            f"{fmt_kib(dense['memory_bytes'])} KiB), at relative output error {compiled['relative_error']:.4f} "
            f"(budget {compiled['budget']:g}).")


class Demo:
    """One run: settings, output folder and the rows of the final table."""

    def __init__(self, args):
        self.args = args
        self.epochs = args.epochs or (2 if args.quick else 10)
        self.trials = args.trials or (6 if args.quick else 20)
        self.progress = not args.no_progress
        self.device = torch.device(args.device)
        self.out = os.path.abspath(args.out)
        self.min_run_time = 0.1 if args.quick else 0.3
        self.hidden = 256 if args.quick else None  # None: the task's default width
        self.rows: list[dict] = []
        self.batch_rows = 0  # leading size of the timed input
        self.notes: list[str] = []

    # -- shared steps: tune, compile, export -------------------------------------------------

    def tune(self, dense, calibration, holdout, n_stage, total):
        start = _stage(n_stage, total, f"tuning a plan for the dense model under error budget {self.args.budget:g} "
                                       f"({self.trials} trials, Optuna)")
        result = tune_module(dense, calibration, holdout=holdout, max_error=self.args.budget, trials=self.trials,
                             inits=("svd",), seed=self.args.seed, show_progress_bar=self.progress,
                             output_fn=first_tensor)
        seconds = time.perf_counter() - start
        print(result.summary())
        result.plan.save(os.path.join(self.out, "plan.json"))
        self.plot(result)
        return result, seconds

    def plot(self, result):
        path = os.path.join(self.out, "pareto.png")
        if not any(t.get("error") is not None for t in result.trials):
            self.notes.append(f"no plot: the tuner evaluated no plans ({result.message or 'nothing to tune'})")
            return
        plot_pareto(result, path, title="Panther tuner: output error vs cost of each evaluated plan",
                    cost_label="multiply-adds of the sketchable layers per call",
                    error_label="relative output error vs dense")
        print(f"plot: {path}")

    @torch.no_grad()
    def compile_models(self, dense, inputs, output_fn, plan, n_stage, total):
        _stage(n_stage, total, 'torch.compile: backend="inductor" (dense baseline) and backend="panther" (tuned plan)')
        baseline = torch.compile(copy.deepcopy(dense), backend="inductor")
        start = time.perf_counter()
        call(baseline, inputs)
        inductor_s = time.perf_counter() - start
        compiled = torch.compile(dense, backend=_backend(), options={"plan": plan})
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = output_fn(call(compiled, inputs))
        panther_s = time.perf_counter() - start
        print(f"first call (compile): inductor {inductor_s:.1f} s, panther {panther_s:.1f} s")
        return baseline, inductor_s, compiled, panther_s, out

    def export(self, dense, plan, inputs, compiled_out, output_fn, n_stage, total):
        _stage(n_stage, total, "export: the tuned model as a torch.export program, saved and loaded back")
        path = os.path.join(self.out, "model.pt2")
        try:
            result = export_round_trip(dense, plan, inputs, compiled_out, path, output_fn)
        except Exception as err:  # noqa: BLE001 — report it; the table above is still worth having
            print(f"export FAILED: {type(err).__name__}: {err}", file=sys.stderr)
            return None
        print(f"exported with {result.method}: {result.path} ({result.size_bytes / 1024:,.0f} KiB); loaded program "
              f"vs compiled model: relative difference {result.round_trip_error:.2e}")
        return result

    def swapped(self, dense, plan):
        """The module ``backend='panther'`` computes with under ``plan`` (for sizes)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return panther.sketch_model(copy.deepcopy(dense), plan)

    # -- the two tasks ----------------------------------------------------------------------

    def run_digits(self):
        from . import digits

        total = 5
        self.prepare_out()
        hidden = self.hidden or digits.HIDDEN
        start = _stage(1, total, f"data: scikit-learn digits; dense MLP 64→{hidden}→{hidden}→10, "
                                 f"{self.epochs} epochs of Adam")
        torch.manual_seed(self.args.seed)
        x_tr, y_tr, x_te, y_te = digits.load_digits_split(self.args.seed, self.device)
        print(f"train {len(x_tr)} images, test {len(x_te)} images, device {self.device}")
        self.batch_rows = len(x_te)
        dense = digits.DigitsMLP(hidden).to(self.device)
        digits.train(dense, x_tr, y_tr, epochs=self.epochs, seed=self.args.seed, desc="train dense", progress=self.progress)
        dense_train_s = time.perf_counter() - start
        with torch.no_grad():
            reference = dense(x_te)
        print(f"dense: test accuracy {digits.accuracy(dense, x_te, y_te):.2%} after {dense_train_s:.1f} s")
        dense_ms = latency_ms(dense, x_te, min_run_time=self.min_run_time)
        self.rows.append(_row("dense (eager)", dense, 0, 3, dense_ms, dense_ms, digits.accuracy(dense, x_te, y_te),
                              0.0, dense_train_s, "train"))

        k = hidden // 32
        start = _stage(2, total, f"sketched training: same MLP, hidden layer pr.nn.SKLinear(num_terms=1, low_rank={k}), "
                                 f"trained the same way")
        torch.manual_seed(self.args.seed)
        sketched = digits.DigitsMLP(hidden, sketch=(1, k)).to(self.device)
        digits.train(sketched, x_tr, y_tr, epochs=self.epochs, seed=self.args.seed, desc="train sketched",
                     progress=self.progress)
        sk_train_s = time.perf_counter() - start
        print(f"sketched: test accuracy {digits.accuracy(sketched, x_te, y_te):.2%} after {sk_train_s:.1f} s")
        sk_ms = latency_ms(sketched, x_te, min_run_time=self.min_run_time)
        self.rows.append(_row(f"sketched-trained (SKLinear k={k}, eager)", sketched, 1, 3, sk_ms, dense_ms,
                              digits.accuracy(sketched, x_te, y_te), None, sk_train_s, "train"))

        # calibration and held-out inputs come from the training images: the test set stays unseen
        result, tune_s = self.tune(dense, [x_tr[:512]], [x_tr[512:1024]], 3, total)
        self.finish(dense, x_te, reference, lambda out: out, result, tune_s, dense_ms, 4, total,
                    accuracy=lambda model: digits.accuracy(model, x_te, y_te))

    def run_user_model(self):
        total = 4
        start = _stage(1, total, f"loading --model {self.args.model}")
        model, inputs = load_user_model(self.args.model)
        load_s = time.perf_counter() - start
        self.prepare_out()
        model, inputs = model.to(self.device), move(inputs, self.device)
        first = inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values() if isinstance(inputs, dict) else inputs))
        self.batch_rows = first.shape[0] if first.dim() else 1
        with torch.no_grad():
            reference = first_tensor(call(model, inputs))
        if reference is None:
            raise ModelSpecError(f"--model {self.args.model!r}: the model's output holds no tensor")
        self.notes.append("sketched training skipped: --model comes without training data; quality is the "
                          "relative output error against the dense model on the example inputs")
        dense_ms = latency_ms(model, inputs, min_run_time=self.min_run_time)
        result, tune_s = self.tune(model, [inputs], None, 2, total)
        n_layers = len(result.plan.entries)  # the Linear/Conv2d layers the tuner decided on
        self.rows.append(_row("dense (eager)", model, 0, n_layers, dense_ms, dense_ms, None, 0.0, load_s, "load"))
        self.notes.append("the tuner had only the example inputs: the plan is not confirmed on held-out data")
        self.finish(model, inputs, reference, first_tensor, result, tune_s, dense_ms, 3, total, accuracy=None)

    def finish(self, dense, inputs, reference, output_fn, result, tune_s, dense_ms, n_stage, total, accuracy):
        plan = result.plan
        n_layers = len(plan.entries)
        n_sketched = len(plan.sketched())
        baseline, inductor_s, compiled, panther_s, out = self.compile_models(dense, inputs, output_fn, plan,
                                                                             n_stage, total)
        with torch.no_grad():
            base_out = output_fn(call(baseline, inputs))
        self.rows.append(_row('dense, torch.compile(backend="inductor")', dense, 0, n_layers,
                              latency_ms(baseline, inputs, min_run_time=self.min_run_time), dense_ms,
                              accuracy(baseline) if accuracy else None, relative_error(base_out, reference),
                              inductor_s, "compile"))
        row = _row('tuned plan, torch.compile(backend="panther")', self.swapped(dense, plan), n_sketched, n_layers,
                   latency_ms(compiled, inputs, min_run_time=self.min_run_time), dense_ms,
                   accuracy(compiled) if accuracy else None, relative_error(out, reference), tune_s + panther_s,
                   "tune+compile")
        row["budget"] = self.args.budget
        self.rows.append(row)
        exported = self.export(dense, plan, inputs, out, output_fn, n_stage + 1, total)
        self.report(result, exported)
        return exported

    # -- output ------------------------------------------------------------------------------

    def report(self, result, exported):
        print()
        print(f"Panther demo: {'digits MLP' if not self.args.model else self.args.model} on "
              f"{self.device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
              f"error budget {self.args.budget:g}")
        print(format_rows(self.rows, self.batch_rows))
        print("memory: parameters and buffers (the sketches' fixed random matrices included); the panther row's "
              "sizes are those of the same plan applied by panther.sketch_model. Latency: median forward time.")
        for note in self.notes:
            print(f"note: {note}")
        print(_verdict(self.rows))
        summary = {"device": str(self.device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "budget": self.args.budget, "model": self.args.model or "digits-mlp", "rows": self.rows,
                   "plan": result.plan.to_dict(), "tuner": {"cost_ratio": result.cost_ratio, "error": result.error,
                                                            "holdout_error": result.holdout_error,
                                                            "message": result.message},
                   "export": asdict(exported) if exported else None, "notes": self.notes}
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(summary, f, indent=1, default=str)
        print(f"outputs in {self.out}: results.json, plan.json"
              + (", pareto.png" if os.path.exists(os.path.join(self.out, "pareto.png")) else "")
              + (", model.pt2" if exported else ""))

    def prepare_out(self) -> None:
        """Creates the output folder and removes a previous run's files (a failed step must not leave old ones)."""
        os.makedirs(self.out, exist_ok=True)
        for stale in ("results.json", "plan.json", "pareto.png", "model.pt2"):
            if os.path.exists(os.path.join(self.out, stale)):
                os.remove(os.path.join(self.out, stale))
        print(f"output folder: {self.out}")

    def run(self) -> int:
        start = time.perf_counter()
        if self.args.model:
            self.run_user_model()
        else:
            self.run_digits()
        print(f"demo finished in {time.perf_counter() - start:.1f} s")
        return 0 if os.path.exists(os.path.join(self.out, "model.pt2")) else 1


def run_demo(args) -> int:
    """The ``demo`` command; returns the exit status (1 when the export step failed, 2 on bad input)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        print("panther demo: --device cuda: no CUDA device is available here (use --device cpu)", file=sys.stderr)
        return 2
    try:
        return Demo(args).run()
    except ModelSpecError as err:
        print(f"panther demo: {err}", file=sys.stderr)
        return 2
