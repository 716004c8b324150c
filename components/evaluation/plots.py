"""PNG figures of the results table: metric bars per system with bootstrap confidence intervals.

One figure per (split, query set), since systems are only comparable on the same queries;
one panel per metric. The intervals are 95% BCa bootstrap intervals of the mean over the
query set (components.evaluation.significance.bootstrap_ci), seeded so figures are stable.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402

from components.atomic import atomic_path  # noqa: E402
from components.evaluation.metrics import METRIC_LABELS  # noqa: E402
from components.evaluation.report import Row  # noqa: E402
from components.evaluation.significance import bootstrap_ci  # noqa: E402


def plot_name(split: str, query_set: str) -> str:
    return f"metrics_{split}_{query_set}.png"


def metric_bars(rows: list[Row], metrics: list[str], folder: str | os.PathLike,
                n_resamples: int = 2000) -> list[Path]:
    """Write one bar chart per (split, query set) into `folder`; return the paths."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.split, row.query_set), []).append(row)
    paths = []
    for (split, query_set), group in groups.items():
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 2.5,
                                                           0.45 * len(group) + 1.4),
                                 sharey=True, squeeze=False)
        names = [row.name for row in group][::-1]  # first row on top
        for ax, metric in zip(axes[0], metrics, strict=True):
            stats = [bootstrap_ci(row.per_query[metric], n_resamples=n_resamples)
                     for row in group][::-1]
            means = [mean for mean, _, _ in stats]
            errors = [[mean - low for mean, low, _ in stats],
                      [high - mean for mean, _, high in stats]]
            ax.barh(names, means, xerr=errors, color="#4c72b0", ecolor="black", capsize=3)
            ax.set_xlim(0, 1)
            ax.set_title(METRIC_LABELS.get(metric, metric))
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle(f"{split}, query set {query_set} ({group[0].n_queries} queries), "
                     "95% bootstrap CI")
        fig.tight_layout()
        path = Path(folder) / plot_name(split, query_set)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
