"""PNG plots for BENCHMARKS.md from the benchmarks' JSON results (``python -m benchmarks.report``
draws them all; this draws one machine's).

    python -m benchmarks.plots benchmarks/results/h200 docs/img    # -> docs/img/<plot>_h200.png
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _load(folder: str, name: str) -> dict | None:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _title(record: dict, what: str) -> str:
    return f"{what} — {record.get('device_name', 'unknown device')}, torch {record.get('torch', '?')}"


def linear(record: dict, path: str) -> None:
    """× floor and speed-up over nn.Linear against total rank 2Lk, one line per shape (bf16)."""
    series = defaultdict(list)
    needed = ("tokens", "in", "out", "L", "k", "sk_x_floor", "sk_speedup")
    for r in record["rows"]:
        if r.get("dtype") == "bfloat16" and r.get("mode") == "fwd" and all(r.get(c) is not None for c in needed):
            series[(r["tokens"], r["in"], r["out"])].append((2 * r["L"] * r["k"], r["sk_x_floor"], r["sk_speedup"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for (m, i, o), pts in sorted(series.items()):
        pts.sort()
        label = f"{m} tokens, {i}→{o}"
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=label)
    ax1.axhline(1.0, color="k", lw=0.8, ls="--")
    ax1.set(xscale="log", xlabel="total rank 2Lk", ylabel="SKLinear time / memory floor", title="distance to the floor")
    ax2.axhline(1.0, color="k", lw=0.8, ls="--")
    ax2.set(xscale="log", yscale="log", xlabel="total rank 2Lk", ylabel="speed-up over nn.Linear",
            title="speed-up (same run)")
    ax2.legend(fontsize=8)
    fig.suptitle(_title(record, "SKLinear forward, bf16"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def attention(record: dict, path: str) -> None:
    """Forward time against sequence length per implementation, non-causal and causal."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, causal in zip(axes, (False, True)):
        series = defaultdict(list)
        floor = {}
        for r in record["rows"]:
            if r.get("pass") == "fwd" and bool(r.get("causal")) == causal and None not in (r.get("N"), r.get("ms")):
                series[r.get("impl")].append((r["N"], r["ms"]))
                if r.get("floor_ms") is not None:
                    floor[r["N"]] = r["floor_ms"]
        for impl, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        ns = sorted(floor)
        ax.plot(ns, [floor[n] for n in ns], color="k", ls="--", label="floor")
        ax.set(xscale="log", yscale="log", xlabel="sequence length N", title="causal" if causal else "non-causal")
    axes[0].set_ylabel("forward ms")
    axes[1].legend(fontsize=8)
    fig.suptitle(_title(record, "attention, B=4 H=16 D=64 m=256, bf16"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# plot name -> (benchmark record it reads, device type it is drawn for, function, caption)
PLOTS = {
    "linear": ("linear", "cuda", linear, "SKLinear forward: distance to the floor and speed-up against total rank"),
    "attention": ("bench_attention", "cuda", attention, "attention forward time against sequence length"),
}


def png_path(out_dir: str, plot: str, machine: str) -> str:
    """Where plot ``plot`` of machine folder ``machine`` goes: ``<out_dir>/<plot>_<machine>.png``."""
    return os.path.join(out_dir, f"{plot}_{machine}.png")


def draw(plot: str, record: dict, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    PLOTS[plot][2](record, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="one machine's folder of benchmark JSON files")
    p.add_argument("out", help="folder for the PNG files")
    args = p.parse_args(argv)
    machine = os.path.basename(os.path.normpath(args.results))
    for plot, (bench, device, _, _) in PLOTS.items():
        record = _load(args.results, f"{bench}_{device}.json")
        if record is not None:
            path = png_path(args.out, plot, machine)
            draw(plot, record, path)
            print("wrote", path)


if __name__ == "__main__":
    main()
