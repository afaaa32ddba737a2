"""The report's figures, drawn from a results folder with matplotlib (and umap-learn for UMAPs).

Each function takes what it draws and returns a matplotlib Figure; `gsrcl.report.page` saves them
as PNG and embeds them in the HTML page. Cell types keep one colour across every figure of a
dataset.
"""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.metrics import average_precision_score, precision_recall_curve
from sklearn.neighbors import NearestNeighbors
from umap import UMAP

from gsrcl.data.labels import ordered

DIFFICULT = 0.9  # a task whose baseline MCC is below this is "difficult" (the paper's threshold)


def type_colours(types: list[str]) -> dict[str, tuple]:
    """One colour per cell type, the same in every figure of a dataset."""
    palette = matplotlib.colormaps["tab20"].colors
    return {t: palette[i % len(palette)] for i, t in enumerate(ordered(types))}


def method_colours(methods: list[str]) -> dict[str, tuple]:
    palette = matplotlib.colormaps["Set2"].colors
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def mcc_against_baseline(summary: pd.DataFrame, baseline: str, methods: list[str]) -> Figure:
    """Grouped bars of mean MCC ± SE per task and method; difficult tasks are shaded."""
    scored = summary[summary["method"] != ""]
    tasks = list(dict.fromkeys(scored["task"]))
    table = scored.pivot_table(index="task", columns="method", values=["mcc_mean", "mcc_se"])
    fig, ax = _figure(figsize=(max(6, 0.9 * len(tasks) * max(1, len(methods) / 4)), 4.2))
    width = 0.8 / len(methods)
    colours = method_colours(methods)
    for i, method in enumerate(methods):
        if ("mcc_mean", method) not in table:
            continue
        means = table[("mcc_mean", method)].reindex(tasks)
        ax.bar(
            np.arange(len(tasks)) + (i - (len(methods) - 1) / 2) * width,
            means,
            width,
            yerr=table[("mcc_se", method)].reindex(tasks),
            label=method,
            color=colours[method],
            capsize=2,
        )
    for k, task in enumerate(tasks):
        if table[("mcc_mean", baseline)].get(task, 1.0) < DIFFICULT:
            ax.axvspan(k - 0.5, k + 0.5, color="#f4cccc", zorder=0)
    ax.set_xticks(range(len(tasks)), tasks, rotation=35, ha="right")
    ax.set_ylabel("MCC (mean ± SE over folds)")
    ax.set_ylim(min(0, np.nanmin(table.xs("mcc_mean", axis=1, level=0).to_numpy())), 1.05)
    ax.set_title(f"MCC per cell type (shaded: difficult, {baseline} MCC < {DIFFICULT})")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def training_curves(
    losses: pd.DataFrame,
    validation: pd.DataFrame,
    chosen: pd.DataFrame,
    colours: dict,
    title: str,
) -> Figure:
    """Loss per epoch (one line per fold) and validation score per epoch and task (mean over
    folds), with each fold's chosen checkpoint marked."""
    fig, (left, right) = _figure(1, 2, figsize=(12, 3.8))
    for fold, part in losses.groupby("fold"):
        curve = part.groupby("epoch")["loss"].mean()  # SupCon: mean over its per-task encoders
        left.plot(curve.index, curve.to_numpy(), label=f"fold {fold}", lw=1)
    left.set_xlabel("epoch")
    left.set_ylabel("contrastive loss")
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=5, frameon=False)
    for task, part in validation.groupby("task", sort=False):
        curve = part.groupby("epoch")["score"].mean()
        right.plot(curve.index, curve.to_numpy(), color=colours.get(task), lw=1, label=task)
    right.scatter(
        chosen["epoch"],
        chosen["validation_score"],
        c=[colours.get(t) for t in chosen["task"]],
        marker="*",
        s=70,
        edgecolors="black",
        linewidths=0.5,
        zorder=3,
        label="chosen checkpoint",
    )
    right.set_xlabel("epoch")
    right.set_ylabel("validation score (mean over folds)")
    # beside the axes, in as many columns as the tasks need: never over the curves
    columns = 1 + validation["task"].nunique() // 14
    right.legend(fontsize=6, ncol=columns, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def precision_recall(predictions: pd.DataFrame, tasks: list[str], methods: list[str]) -> Figure:
    """Precision-recall per task, one curve per method, test folds pooled."""
    columns = min(4, len(tasks))
    rows = int(np.ceil(len(tasks) / columns))
    fig, axes = _figure(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    colours = method_colours(methods)
    for ax, task in zip(axes.ravel(), tasks, strict=False):
        for method in methods:
            part = predictions[(predictions["task"] == task) & (predictions["method"] == method)]
            if part.empty or not part["positive"].any():
                continue
            precision, recall, _ = precision_recall_curve(part["positive"], part["score"])
            ap = average_precision_score(part["positive"], part["score"])
            ax.plot(recall, precision, color=colours[method], lw=1, label=f"{method} {ap:.2f}")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.legend(  # below the axes, so no curve is hidden
            fontsize=6,
            title="AP",
            title_fontsize=6,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.28),
            ncol=2,
            frameon=False,
        )
    for ax in axes.ravel()[len(tasks) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


_umaps_made = [0]  # in this process: the first pays numba's compilation (the estimate counts it)


def umap_compiled() -> bool:
    """Whether this process has made a UMAP already (numba's functions are compiled)."""
    return _umaps_made[0] > 0


def umap_coordinates(x: np.ndarray) -> np.ndarray:
    """2-D UMAP of the rows of `x` after PCA to at most 50 components, with scanpy's defaults
    (15 neighbours, min_dist 0.5). umap-learn directly: scanpy 1.11's neighbour graph breaks on
    SciPy 1.17's sparse arrays above 8192 cells."""
    x = np.asarray(x, dtype=np.float32)
    pcs = PCA(n_components=min(50, min(x.shape) - 1), random_state=0).fit_transform(x)
    with warnings.catch_warnings():  # a fixed random_state makes umap-learn single-threaded
        warnings.simplefilter("ignore")
        umap = UMAP(n_neighbors=15, min_dist=0.5, random_state=0, precomputed_knn=_knn(pcs, 15))
        xy = umap.fit_transform(pcs)
    _umaps_made[0] += 1
    return xy


EXACT_KNN_CELLS = 4096  # umap-learn's own limit for exact neighbours (pynndescent above it)


def _knn(pcs: np.ndarray, k: int) -> tuple:
    """The exact neighbours umap-learn finds itself below `EXACT_KNN_CELLS` cells, by
    scikit-learn: umap-learn's own search is numba code compiled in every process (about 6 of a
    small UMAP's 12 s); above it, none (umap-learn's approximate search)."""
    if len(pcs) >= EXACT_KNN_CELLS or len(pcs) <= k:
        return (None, None, None)
    distances, indices = NearestNeighbors(n_neighbors=k).fit(pcs).kneighbors(pcs)
    return indices, distances.astype(np.float32), None


def _scatter_types(ax, xy: np.ndarray, labels: np.ndarray, colours: dict) -> None:
    for cell_type, colour in colours.items():
        mask = labels == cell_type
        ax.scatter(xy[mask, 0], xy[mask, 1], s=4, color=colour, label=f"{cell_type}")
    ax.set_xticks([])
    ax.set_yticks([])


def umaps(
    expression: np.ndarray, embedding: np.ndarray, labels: np.ndarray, title: str, colours: dict
) -> Figure:
    """UMAP of the log-expression beside UMAP of the learnt embedding, coloured by cell type."""
    fig, axes = _figure(1, 2, figsize=(11, 4.6))
    for ax, x, name in ((axes[0], expression, "log-expression"), (axes[1], embedding, title)):
        _scatter_types(ax, umap_coordinates(x), labels, colours)
        ax.set_title(f"UMAP of {name}", fontsize=10)
    axes[1].legend(fontsize=7, markerscale=3, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def query_umap(
    xy: np.ndarray, predicted: np.ndarray, types: list[str], unassigned: str, of: int | None = None
) -> Figure:
    """UMAP coordinates `xy` of annotated query cells (in the reference encoder's embedding),
    coloured by the predicted type (unassigned in grey), with each type's count in the legend;
    `of`: the query's cells, when these are a random sample of them (the title says so)."""
    colours = {**type_colours(types), unassigned: (0.75, 0.75, 0.75)}
    present = {t: c for t, c in colours.items() if (predicted == t).any()}
    fig, ax = _figure(figsize=(7.5, 5.5))
    _scatter_types(ax, xy, predicted, present)
    handles, names = ax.get_legend_handles_labels()
    counts = [f"{n} ({int((predicted == n).sum())})" for n in names]
    ax.legend(
        handles, counts, fontsize=7, markerscale=3, bbox_to_anchor=(1.02, 1), loc="upper left"
    )
    cells = f"{len(predicted)} query cells"
    if of is not None and of > len(predicted):
        cells = f"a random {len(predicted)} of {of} query cells"
    ax.set_title(f"{cells}, GsRCL embedding, by predicted type", fontsize=10)
    fig.tight_layout()
    return fig


def _figure(rows: int = 1, columns: int = 1, **options):
    """A figure and its axes, outside pyplot: no backend is chosen or changed (a notebook keeps
    its own), and nothing is kept open after the figure is saved."""
    fig = Figure(figsize=options.pop("figsize"))
    return fig, fig.subplots(rows, columns, **options)
