"""`report.html` (one self-contained page, figures embedded), `summary.md` and `figures/*.png`,
built from a results folder alone, so `--report-only` can rebuild them without training."""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from gsrcl.config.settings import Experiment
from gsrcl.data.dataset import LABEL, DatasetCache, log_expression
from gsrcl.data.splits import random_rows
from gsrcl.model.checkpoints import load_encoder
from gsrcl.report import figures
from gsrcl.runner import jobs, retention
from gsrcl.runner.jobs import Job
from gsrcl.runner.run_folder import LOSS, PREDICTIONS, VALIDATION, RunFolder
from gsrcl.runner.summary import APPROXIMATE, METRICS, approximate_methods

log = logging.getLogger(__name__)


# ---- tables ----


def metric_table(summary: pd.DataFrame, metric: str, methods: list[str]):
    """Means and standard errors: dataset × task rows, one column per method."""
    scored = summary[summary["method"] != ""]
    means = scored.pivot_table(
        index=["dataset", "task"], columns="method", values=f"{metric}_mean", sort=False
    )
    errors = scored.pivot_table(
        index=["dataset", "task"], columns="method", values=f"{metric}_se", sort=False
    )
    columns = [m for m in methods if m in means]
    return means.reindex(columns=columns), errors.reindex(columns=columns)


APPROXIMATE_MARK = " ≈"  # beside a score whose classifier was fitted approximately


def _approximate(summary: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(dataset, task, method) of the scores whose classifier was fitted approximately."""
    rows = summary[(summary["method"] != "") & summary["note"].str.startswith(APPROXIMATE)]
    return set(zip(rows["dataset"], rows["task"], rows["method"], strict=True))


def _cells(means: pd.DataFrame, errors: pd.DataFrame, bold, approximate=frozenset()):
    """Table rows of "mean ± se" text, the best mean of each row passed through `bold`, an
    approximate classifier's marked."""
    rows = []
    for key, row in means.iterrows():
        best = row.max()
        cells = []
        for method, value in row.items():
            if pd.isna(value):
                cells.append("–")
                continue
            text = f"{value:.3f} ± {errors.loc[key, method]:.3f}"
            text = bold(text) if value == best else text
            cells.append(text + APPROXIMATE_MARK if (*key, method) in approximate else text)
        rows.append([*key, *cells])
    return rows


def markdown_table(summary: pd.DataFrame, metric: str, methods: list[str]) -> str:
    means, errors = metric_table(summary, metric, methods)
    header = ["dataset", "task", *means.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = _cells(means, errors, lambda s: f"**{s}**", _approximate(summary))
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(summary: pd.DataFrame, metric: str, methods: list[str]) -> str:
    means, errors = metric_table(summary, metric, methods)
    header = "".join(f"<th>{html.escape(c)}</th>" for c in ["dataset", "task", *means.columns])
    body = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
        for row in _cells(means, errors, lambda s: f"<b>{s}</b>", _approximate(summary))
    )
    return f"<table><tr>{header}</tr>{body}</table>"


def approximate_note(summary: pd.DataFrame) -> list[str]:
    """What a report says when some classifiers were fitted approximately (nothing otherwise)."""
    lines = approximate_methods(summary)
    if not lines:
        return []
    return [
        f"Scores marked{APPROXIMATE_MARK} come from a classifier fitted approximately: its "
        "training cells exceeded evaluation.exact_max_cells, so the SVM grid was searched on "
        "Nystroem features with a linear SVM (docs/approximate-svm.md).",
        *lines,
    ]


def write_summary_md(run: RunFolder, summary: pd.DataFrame, methods: list[str]) -> None:
    parts = [f"# {run.path.name}: mean ± standard error over folds (best per row in bold)"]
    for metric in METRICS:
        parts += [f"\n## {metric.upper()}\n", markdown_table(summary, metric, methods)]
    approximate = approximate_note(summary)
    if approximate:
        parts += ["\n## Approximate classifiers\n", approximate[0], ""]
        parts += [f"- {line}" for line in approximate[1:]]
    skipped = summary[summary["method"] == ""]
    if not skipped.empty:
        parts.append("\n## Not scored\n")
        parts += [f"- {r.dataset} / {r.task}: {r.note}" for r in skipped.itertuples()]
    run.write_page("summary.md", "\n".join(parts) + "\n")


# ---- figures ----


class FigureSet:
    """Saves each figure as PNG under figures/ and keeps it for embedding in the page."""

    def __init__(self, run: RunFolder) -> None:
        self.run = run
        self.html: list[str] = []

    def attempt(self, what: str, draw: Callable[[], None]) -> None:
        """Draw a figure (or a dataset's); one that cannot be drawn (too few genes or cells
        for a UMAP, say) becomes a note on the page, and the rest of the report goes on."""
        try:
            draw()
        except Exception as error:
            log.info("report: %s not drawn: %s", what, error)
            self.html.append(
                f'<p class="note">{html.escape(what)} not drawn: '
                + html.escape(str(error))
                + "</p>"
            )

    def add(self, name: str, fig, caption: str) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        self.run.write_figure(name, buffer.getvalue())
        data = base64.b64encode(buffer.getvalue()).decode()
        self.html.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )


class DoneJobs:
    """The files of the jobs whose results count (done with this config, files intact)."""

    def __init__(self, run: RunFolder, experiment: Experiment, done: set[Job]) -> None:
        self.run, self.folds, self.done = run, range(experiment.split.folds), done

    def folders(self, dataset: str, method: str):
        for fold in self.folds:
            job = Job(dataset, method, fold)
            if job in self.done:
                yield fold, self.run.job(job)

    def table(self, dataset: str, method: str, name: str) -> pd.DataFrame:
        frames = [f.table(name).assign(fold=k) for k, f in self.folders(dataset, method)]
        frames = [frame for frame in frames if not frame.empty]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def kept_encoder(self, dataset: str, method: str, task: str) -> tuple[int, Path] | None:
        """The fold and file of the encoder export takes for `task` (the done fold whose
        checkpoint scored best on validation: the one retention keeps); None when no fold is
        done or none scored the task."""
        folders = dict(self.folders(dataset, method))
        scores = {fold: folder.validation_scores() for fold, folder in folders.items()}
        fold = retention.best_folds(scores).get(task)
        return None if fold is None else (fold, folders[fold].encoder_path(task))

    def chosen(self, dataset: str, method: str) -> pd.DataFrame:
        rows = [row for _, folder in self.folders(dataset, method) for row in folder.metrics()]
        return pd.DataFrame(rows, columns=["task", "epoch", "validation_score"])


def dataset_figures(
    figs: FigureSet,
    done: DoneJobs,
    experiment: Experiment,
    datasets: DatasetCache,
    spec,
    summary: pd.DataFrame,
) -> None:
    name, methods = spec.name, experiment.method_names
    adata = datasets.get(spec)  # a surveyed dataset's cells hold no values (`with_values`)
    part = summary[summary["dataset"] == name]
    tasks = list(dict.fromkeys(part.loc[part["method"] != "", "task"]))
    if not tasks:
        return
    mcc = figures.mcc_against_baseline(part, methods[0], methods)
    figs.add(f"{name}-mcc", mcc, f"{name}: MCC per cell type and method")
    labels = adata.obs[LABEL].to_numpy(dtype=str)
    colours = figures.type_colours(list(labels))  # every figure of the dataset agrees
    for method in experiment.methods:
        figs.attempt(
            f"{name}: the training curves of {method.name}",
            lambda m=method.name: _training_figure(figs, done, name, m, colours),
        )
    figs.attempt(
        f"{name}: the precision-recall figure",
        lambda: _pr_figure(figs, done, experiment, name, tasks, methods),
    )
    figs.attempt(
        f"{name}: the UMAPs",
        lambda: _umap_figure(figs, done, experiment, datasets, spec, tasks, colours),
    )


def _training_figure(figs, done: DoneJobs, name: str, method: str, colours) -> None:
    losses = done.table(name, method, LOSS)
    if losses.empty:
        return
    validation = done.table(name, method, VALIDATION)
    chosen = done.chosen(name, method)
    fig = figures.training_curves(losses, validation, chosen, colours, f"{name}: {method}")
    figs.add(
        f"{name}-{method}-training",
        fig,
        f"{name}, {method}: training loss and validation score; ★ chosen checkpoints",
    )


def _pr_figure(figs, done: DoneJobs, experiment, name: str, tasks: list[str], methods) -> None:
    jobs_methods = [jobs.BASELINE, *(m.name for m in experiment.methods)]
    frames = [done.table(name, m, PREDICTIONS) for m in jobs_methods]
    predictions = pd.concat(frames, ignore_index=True)
    if predictions.empty:
        return
    predictions["positive"] = predictions["positive"].astype(str) == "True"
    fig = figures.precision_recall(predictions, tasks, methods)
    figs.add(f"{name}-pr", fig, f"{name}: precision-recall per cell type (test folds pooled)")


# the report's UMAPs show at most this many cells (at 50 000 tiled cells a UMAP took minutes)
UMAP_CELLS = 10_000


def _umap_figure(
    figs, done: DoneJobs, experiment: Experiment, datasets: DatasetCache, spec, tasks, colours
) -> None:
    """UMAPs of the cells (a random UMAP_CELLS of more): log-expression, and the embedding of
    the encoder export takes for the first scored type (the first method's fold whose checkpoint
    scored best on validation): the one `keep_encoders` keeps, under either setting."""
    found = [(m, done.kept_encoder(spec.name, m.name, tasks[0])) for m in experiment.methods]
    found = [(m, kept) for m, kept in found if kept is not None]
    if not found:
        return
    method, (fold, path) = found[0]
    adata = datasets.get(spec)
    cells = adata.n_obs
    # a UMAP's layout grows faster than the cells: a random sample of a large dataset
    adata = datasets.with_values(spec, adata[random_rows(cells, UMAP_CELLS)])
    encoder, saved = load_encoder(path)
    x, missing = saved.input.prepare(adata)
    if missing:
        log.warning(
            "report: %d of the encoder's genes are not in %s; taken as 0", missing, spec.name
        )
    with torch.no_grad():
        embedding = encoder(torch.as_tensor(x)).numpy()
    expression = log_expression(adata, spec.values)
    labels = adata.obs[LABEL].to_numpy(dtype=str)
    fig = figures.umaps(expression, embedding, labels, f"{method.name} embedding", colours)
    shown = f"; a random {adata.n_obs} of its {cells} cells" if adata.n_obs < cells else ""
    figs.add(
        f"{spec.name}-umap",
        fig,
        f"{spec.name}: UMAP of the log-expression and of the {method.name} embedding "
        f"(fold {fold}, encoder chosen for {tasks[0]}, the one export takes{shown})",
    )


# ---- the page ----


def build(experiment: Experiment, run: RunFolder, done: set[Job], datasets: DatasetCache) -> Path:
    """Write summary.md, figures/*.png and report.html from the `done` jobs; return the
    report's path."""
    summary = run.read_summary()
    methods = experiment.method_names
    write_summary_md(run, summary, methods)
    figs = FigureSet(run)
    jobs_done = DoneJobs(run, experiment, done)
    for spec in experiment.datasets:
        figs.attempt(
            f"{spec.name}: the figures",
            lambda s=spec: dataset_figures(figs, jobs_done, experiment, datasets, s, summary),
        )
    page = _page(experiment, run, summary, methods, figs.html)
    return run.write_page("report.html", page)


STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left} th{background:#f3f3f3}
figure{margin:1.5em 0} img{max-width:100%} figcaption{font-size:13px;color:#555}
.bad{color:#a00} .note{font-size:13px;color:#777}"""


def _facts(experiment: Experiment, record: dict, manifest: pd.DataFrame, methods) -> list:
    c, split, clf = experiment.contrastive, experiment.split, experiment.evaluation.classifier
    done = int((manifest["status"] == "done").sum())
    minutes = pd.to_numeric(manifest["seconds"], errors="coerce").sum() / 60
    encoders = "; ".join(f"{m.name}: {'-'.join(map(str, m.encoder))}" for m in experiment.methods)
    return [
        ("datasets", ", ".join(d.name for d in experiment.datasets)),
        ("methods", ", ".join(methods)),
        (
            "split",
            f"{split.validation_fraction:.0%} validation, {split.folds}-fold CV, "
            f"seed {experiment.seed}",
        ),
        (
            "training",
            f"epochs {c.epochs}, validation every {c.validate_every}, lr {c.lr}, "
            f"temperature {c.temperature}, batch {c.batch_size}",
        ),
        ("encoders", encoders or "–"),
        ("classifier", f"{clf.name}, grid {clf.grid}, metric {experiment.evaluation.metric}"),
        *_approximate_facts(record),
        (
            "jobs",
            f"{done} done, {len(manifest) - done} not done; {minutes:.1f} min of job time "
            f"on {', '.join(record['devices'])}",
        ),
        ("versions", ", ".join(f"{k} {v}" for k, v in record["versions"].items())),
        ("started", record["started"]),
    ]


def _approximate_facts(record: dict) -> list[tuple[str, str]]:
    """experiment.json's approximate classifiers as a line of the facts (none when all exact)."""
    fits = [
        f"{dataset} / {method}: {fit['fitted']}, folds {fit['folds']}"
        for dataset, methods in record.get("approximate", {}).items()
        for method, fit in methods.items()
    ]
    return [("approximate classifiers", "; ".join(fits))] if fits else []


def _items(title: str, lines: list[str], css: str = "") -> str:
    if not lines:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f"<h3>{title}</h3><ul class='{css}'>{items}</ul>"


def _page(experiment, run: RunFolder, summary, methods, figure_html) -> str:
    record = run.read_record()
    manifest = run.read_manifest()
    facts = "".join(
        f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in _facts(experiment, record, manifest, methods)
    )
    failed = manifest[manifest["status"] != "done"]
    failures = [f"{r.job}: {r.status} {r.error}" for r in failed.itertuples()]
    skipped = summary[summary["method"] == ""]
    not_scored = [f"{r.dataset} / {r.task}: {r.note}" for r in skipped.itertuples()]
    tables = "".join(f"<h3>{m.upper()}</h3>{html_table(summary, m, methods)}" for m in METRICS)
    approximate = approximate_note(summary)
    if approximate:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in approximate[1:])
        tables += f"<h3>Approximate classifiers</h3><p>{html.escape(approximate[0])}</p>"
        tables += f"<ul>{items}</ul>"
    title = html.escape(f"GsRCL report: {experiment.name}")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>{STYLE}</style></head><body><h1>{title}</h1>
<h2>Experiment</h2><table>{facts}</table>{_items("Failed or missing jobs", failures, "bad")}
<h2>Scores</h2><p>Mean ± standard error over test folds; the best method per row in bold. A
difficult task is one where {html.escape(methods[0])} scores MCC &lt; {figures.DIFFICULT}.</p>
{tables}{_items("Not scored", not_scored)}
<h2>Figures</h2>{"".join(figure_html)}
</body></html>
"""
