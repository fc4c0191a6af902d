"""``plot_pareto``: error vs cost of every evaluated plan, the Pareto front, the chosen plan marked."""

from __future__ import annotations

import math
import os


def pareto_front(points):
    """Indices of the points (error, cost) no other point beats in both (lower is better)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0]))
    front, best_error = [], math.inf
    for i in order:
        if points[i][0] < best_error:
            front.append(i)
            best_error = points[i][0]
    return front


def plot_pareto(points, path, chosen=None, max_error=None, dense_cost=None, title="Panther tuner: error vs cost",
                cost_label="cost", error_label="relative error"):
    """Writes a PNG of the evaluated plans (error vs cost) to ``path``.

    Args:
        points: an iterable of (error, cost) pairs, or a :class:`PlanSearchResult` (its trials).
        chosen: (error, cost) of the chosen plan, marked with a star.
        max_error: the error budget, drawn as a horizontal line.
        dense_cost: the dense model's cost, drawn as a vertical line.
    Needs matplotlib (ImportError naming it otherwise). Returns ``path``.
    """
    if hasattr(points, "trials") and hasattr(points, "cost"):
        result = points
        points = [(t["error"], t["cost"]) for t in result.trials if t.get("error") is not None]
        chosen = chosen if chosen is not None else (result.error, result.cost)
        max_error = max_error if max_error is not None else result.max_error
        dense_cost = dense_cost if dense_cost is not None else result.dense_cost
    points = [(float(e), float(c)) for e, c in points]
    if not points:
        raise ValueError("plot_pareto needs at least one (error, cost) point")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {type(path).__name__}")
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot_pareto needs matplotlib (pip install matplotlib)") from exc
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([c for _, c in points], [e for e, _ in points], s=14, alpha=0.45, label="evaluated plans")
    fp = sorted((points[i] for i in front), key=lambda p: p[1])
    ax.step([c for _, c in fp], [e for e, _ in fp], where="post", color="C1", label="Pareto front")
    if chosen is not None:
        ax.scatter([chosen[1]], [chosen[0]], marker="*", s=220, color="C3", zorder=5, label="chosen plan")
    if max_error is not None:
        ax.axhline(max_error, color="grey", linestyle="--", linewidth=1, label=f"max_error = {max_error:g}")
    if dense_cost is not None:
        ax.axvline(dense_cost, color="black", linestyle=":", linewidth=1, label="dense")
    ax.set_xlabel(cost_label)
    ax.set_ylabel(error_label)
    if all(e > 0 for e, _ in points):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
