"""Export a reference model from a finished run, for `gsrcl annotate`.

The method is the one asked for, or "best": every method of the run, baselines included, is built,
and the one whose model labels the reference's held-out cells best (the mean of accuracy and
macro-F1, its Unassigned rule applied) is kept: what a user gets from it, not a proxy such as the
CV's one-against-the-rest MCC (on Baron mouse 1 the SVM's CV MCC is 0.74 against 0.94 for the scaled
logistic regression, yet its model labels mouse 2 better: 0.964 against 0.945). Both scores go into
the manifest's table. A contrastive method exports, for each cell type, the encoder chosen across
the folds (the fold whose checkpoint scored best on the validation cells; earliest fold on ties) and
a classifier refit on that encoder's embeddings of every labelled cell, with calibrated
probabilities; a baseline exports its classifier refit on the expression of every labelled cell
(kind "expression"). Then the Unassigned rule is chosen from the reference cells' held-out
predictions (`gsrcl.reference.rule`). Layout and checks: `gsrcl.reference.model`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skops.io
import torch
from sklearn.model_selection import LeaveOneGroupOut

from gsrcl.config.settings import BASELINE, Classifier, Dataset, Experiment
from gsrcl.data import dataset as data
from gsrcl.data import preprocess
from gsrcl.errors import UserError
from gsrcl.evaluate.classifiers import calibrated_classifier, multiclass_classifier
from gsrcl.evaluate.workers import Workers
from gsrcl.files import safe_name
from gsrcl.model.checkpoints import load_encoder
from gsrcl.model.train import embed
from gsrcl.reference import model as reference
from gsrcl.reference import neighbourhood, rule
from gsrcl.runner import jobs, retention
from gsrcl.runner.environment import package_versions
from gsrcl.runner.run_folder import JobFolder, RunFolder

# what the Unassigned rule was chosen on: the reference's own batches, never a batch held out
WITHIN_BATCHES = (
    "held-out cells of the reference's own batches: a new donor's or batch's ordinary shift "
    "may be taken for novelty (most_probable and unassigned_because show what the rule did)"
)
ACROSS_BATCHES = (
    "each of the reference's {n} batches ({column}: {names}) predicted by models fitted without "
    "it and judged against the other batches' cells: what a new batch will look like"
)
# an encoder model's classifiers are refit per held-out batch; its encoder is not retrained
ENCODER_SAW_EVERY_BATCH = " (the encoder itself was trained on cells of every batch)"
SELECTION_BY_BATCH = (
    "the highest mean of accuracy and macro-F1 on each batch of the reference predicted by "
    "models fitted without it, the Unassigned rule applied"
)
SELECTION_WITHIN = (
    "the highest mean of accuracy and macro-F1 on the reference's cells, each predicted by the "
    "inner fold that held it out, the Unassigned rule applied"
)
SELECTION_NAMED = "named by the user; the table holds every method's CV scores and its own"
# held out from the classifiers, not from an encoder chosen from a CV fold that trained on them
ENCODER_OPTIMISM = "; an encoder method's held-out scores lean high: its encoder saw most cells"
MULTICLASS_FILE = "classifiers/all-types.skops"


def export_model(
    experiment: Experiment,
    dataset: str | None = None,
    method: str | None = None,
    out: Path | None = None,
    log: Callable[[str], None] = print,
    keep_candidates: bool = False,
) -> Path:
    """Write the reference model of `dataset` (by `method`, default the config's export.method)
    from the run's results; return its folder. With "best" and `keep_candidates`, every other
    method's model (built to choose it) is written too: `<out>-<method>`, or without `out` in the
    run's models folder."""
    run = RunFolder.of(experiment)
    spec = _dataset(experiment, dataset)
    asked = method or experiment.export.method
    table = cv_table(experiment, run, spec.name)
    if out is not None:
        reference.check_replaceable(Path(out))
    adata = data.load_dataset(spec)
    batches = _batches(spec, adata, log)
    candidates = list(table) if asked == "best" else [_method(experiment, asked)]
    space = neighbourhood.fit_space(adata, spec.values)  # shared by the candidates
    parent = Path(out).parent if out else run.model_path(spec.name, candidates[0]).parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".export.") as tmp:
        built = {
            name: _build(
                Path(tmp) / str(i), experiment, run, spec, adata, space, name, batches, log
            )
            for i, name in enumerate(candidates)
        }
        for name, (_, manifest) in built.items():
            table.setdefault(name, {}).update(_held_out_scores(manifest))
        chosen = _best_held_out(table, log) if asked == "best" else asked
        selection = {
            "rule": _selection_rule(experiment, asked, batches, table),
            "asked": asked,
            "chosen": chosen,
            "table": table,
        }
        kept = list(built) if keep_candidates else [chosen]
        folders = {name: _destination(run, spec, out, name, chosen) for name in kept}
        for folder in folders.values():
            reference.check_replaceable(folder)
        for i, (name, folder) in enumerate(folders.items()):
            staging, manifest = built[name]
            reference.write_manifest(staging, {**manifest, "selection": selection})
            scratch = Path(tmp) / f"previous-{i}"  # where the model it replaces waits
            scratch.mkdir()
            reference.swap_in(staging, folder, scratch)
            log(f"export: {spec.name}, {name} → {folder}")
    return folders[chosen]


def _destination(run: RunFolder, spec: Dataset, out: Path | None, name: str, chosen: str) -> Path:
    """The chosen model goes to `out` (default the run's models folder); a kept candidate beside
    it."""
    if out is None:
        return run.model_path(spec.name, name)
    return Path(out) if name == chosen else Path(out).parent / f"{Path(out).name}-{name}"


def _build(staging, experiment, run, spec, adata, space, method, batches, log) -> tuple[Path, dict]:
    """Every file of `method`'s model in `staging`, and its manifest (to be written there)."""
    baseline = _baseline(experiment, method)
    picks = _picks(experiment, run, spec.name, method, baseline, log)
    log(f"export: {spec.name}, {method}, {len(picks)} cell types")
    log(describe_types(picks))
    if baseline is None:
        entries, held_out, kind = _encoder_files(staging, experiment, adata, picks, batches, log)
    else:
        entries, held_out, kind = _expression_files(
            staging, experiment, adata, spec.values, baseline, picks, batches, log
        )
    unassigned = _write_neighbourhoods(staging, adata, space, spec, entries, held_out, batches, log)
    if batches is not None and kind["kind"] == "encoder":
        unassigned["calibrated_on"] += ENCODER_SAW_EVERY_BATCH
    manifest = _manifest(experiment, spec, method, adata, entries)
    manifest.update(kind=kind.pop("kind"), **kind, unassigned=unassigned)
    return staging, manifest


def _batches(spec: Dataset, adata, log) -> np.ndarray | None:
    """Each cell's batch, when the dataset names a batch column holding two or more."""
    if spec.batch is None:
        return None
    batches = adata.obs[data.BATCH].to_numpy(dtype=str)
    if len(np.unique(batches)) < 2:
        log(f"  batch column {spec.batch!r} holds one batch: the rule is calibrated within it")
        return None
    return batches


def _batch_splits(batches: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """One held-out split per batch (trained on the others), or None without batches."""
    if batches is None:
        return None
    return list(LeaveOneGroupOut().split(batches, groups=batches))


def _held_out_scores(manifest: dict) -> dict:
    rates = manifest["unassigned"]["held_out"]
    return {"held_out_accuracy": rates["accuracy"], "held_out_macro_f1": rates["macro_f1"]}


def _best_held_out(table: dict[str, dict], log) -> str:
    """The method whose model labels the reference's held-out cells best: the highest mean of
    accuracy and macro-F1, the Unassigned rule applied (first on ties)."""
    mean = {m: (v["held_out_accuracy"] + v["held_out_macro_f1"]) / 2 for m, v in table.items()}
    best = max(mean, key=mean.__getitem__)
    ranking = ", ".join(
        f"{m} {v['held_out_accuracy']:.3f} / {v['held_out_macro_f1']:.3f}" for m, v in table.items()
    )
    log(f"export: best = {best} (accuracy / macro-F1 on held-out reference cells: {ranking})")
    return best


def _selection_rule(experiment: Experiment, asked: str, batches, table: dict[str, dict]) -> str:
    if asked != "best":
        return SELECTION_NAMED
    text = SELECTION_WITHIN if batches is None else SELECTION_BY_BATCH
    contrastive = any(_baseline(experiment, m) is None for m in table)
    return text + (ENCODER_OPTIMISM if contrastive else "")


def _write_neighbourhoods(
    staging: Path, adata, space, spec: Dataset, entries, held_out, batches, log
) -> dict:
    """genes.txt and neighbourhoods.npz; the Unassigned rule chosen with them."""
    (staging / "genes.txt").write_text("\n".join(adata.var_names) + "\n")
    labels = adata.obs[data.LABEL].to_numpy(dtype=str)
    types = [e["name"] for e in entries]
    arrays = neighbourhood.fit(space, labels, types)
    neighbourhood.save(staging / reference.NEIGHBOURHOODS, arrays)
    regions = neighbourhood.Neighbourhoods(arrays, list(adata.var_names), spec.values)
    rule_chosen = _unassigned_rule(regions, labels, types, held_out, batches, log)
    if batches is not None:
        names = ", ".join(np.unique(batches))
        rule_chosen["calibrated_on"] = ACROSS_BATCHES.format(
            n=len(np.unique(batches)), column=spec.batch, names=names
        )
    return rule_chosen


def _dataset(experiment: Experiment, name: str | None) -> Dataset:
    names = [d.name for d in experiment.datasets]
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        raise UserError(f"choose the dataset to export with --dataset, one of {names}")
    return experiment.datasets[names.index(name)]


def cv_table(experiment: Experiment, run: RunFolder, dataset: str) -> dict[str, dict]:
    """Each method's CV scores on `dataset`, averaged over its cell types (from the summary)."""
    summary = run.read_summary() if run.exists() else None
    if summary is None or summary.empty:
        raise UserError(f"{run.path} holds no summary of {dataset}; run the experiment first")
    scored = summary[summary["dataset"] == dataset]
    table = {}
    for method in experiment.method_names:
        rows = scored[scored["method"] == method]
        if not rows.empty:
            means = {m: round(float(rows[f"{m}_mean"].mean()), 4) for m in ("mcc", "f1", "ap")}
            table[method] = {**means, "tasks": len(rows)}
    if not table:
        raise UserError(f"{run.path}'s summary holds no scored task of {dataset}; run it first")
    return table


def _method(experiment: Experiment, name: str) -> str:
    """The method asked for, checked against the config."""
    if name not in experiment.method_names:
        raise UserError(
            f"method {name!r} is not in the config; choose one of {experiment.method_names}"
        )
    return name


def _baseline(experiment: Experiment, method: str) -> Classifier | None:
    """The baseline classifier a method name stands for, or None for a contrastive method."""
    return next((b for b in experiment.evaluation.baselines if b.baseline_name == method), None)


def _picks(experiment, run, dataset, method, baseline, log) -> dict[str, dict]:
    """For each cell type of the model, what it is trained from: a contrastive method's chosen
    encoder, or for a baseline its CV score. Types too small for the CV split are added, marked
    not validated; a type of one cell is too, by a multi-class model (a one-against-the-rest
    classifier of one cell cannot be fitted: it is named and left out)."""
    job_method = BASELINE if baseline is not None else method
    folders = _done_folders(experiment, run, dataset, job_method)
    if baseline is None:
        picks = _chosen_encoders(folders)
        main = Counter(pick["digest"] for pick in picks.values()).most_common(1)[0][0]
        shared = next(pick for pick in picks.values() if pick["digest"] == main)
    else:
        scores = [row for f in folders for row in f.metrics() if row["method"] == method]
        picks = {
            task: {"test_mcc": float(np.mean([r["mcc"] for r in scores if r["task"] == task]))}
            for task in dict.fromkeys(r["task"] for r in scores)
        }
        shared = {}
    for task in (run.read_splits(dataset) or {"tasks": []})["tasks"]:
        if task["scored"] or task["name"] in picks:
            continue
        if task["cells"] < 2 and not (baseline is not None and baseline.multiclass):
            log(f"  {task['name']}: 1 cell, too few for a classifier; the model does not know it")
            continue
        picks[task["name"]] = {**shared, "score": None, "test_mcc": None, "validated": False}
    return picks


def _done_folders(
    experiment: Experiment, run: RunFolder, dataset: str, job_method: str
) -> list[JobFolder]:
    """The folders of the method's jobs on `dataset`, every one of them done with this config."""
    planned = [jobs.Job(dataset, job_method, fold) for fold in range(experiment.split.folds)]
    states = retention.job_states(experiment, run, planned)
    for job, state in states.items():
        if state.status != "done":
            why = f": {state.reason}" if state.reason else ""
            raise UserError(
                f"job {job.id} is {state.status}{why}; run the experiment with this config "
                "(python3 runner.py) before exporting"
            )
    return [run.job(job) for job in planned]


def _chosen_encoders(folders: list[JobFolder]) -> dict[str, dict]:
    """For each task: the fold whose chosen checkpoint scored best on the validation cells."""
    rows = [{row["task"]: row for row in folder.metrics()} for folder in folders]
    scores = {
        fold: {task: row["validation_score"] for task, row in by_task.items()}
        for fold, by_task in enumerate(rows)
    }
    checksums = [folder.checksums() for folder in folders]  # checked by `state`: not reread
    picks = {}
    for task, fold in retention.best_folds(scores).items():
        row, path = rows[fold][task], folders[fold].encoder_path(task)
        picks[task] = {
            "fold": fold,
            "epoch": row["epoch"],
            "score": row["validation_score"],
            "test_mcc": row["mcc"],
            "path": path,
            "digest": checksums[fold][path.name],
        }
    return picks


def describe_types(picks: dict[str, dict]) -> str:
    """Which types a model knows, and which of them were not validated (too few cells)."""
    unvalidated = [t for t, pick in picks.items() if not pick.get("validated", True)]
    text = f"  knows {len(picks)} cell types: {', '.join(picks)}"
    if unvalidated:
        text += f"; not validated (too few cells for the CV): {', '.join(unvalidated)}"
    return text


def _encoder_files(staging: Path, experiment: Experiment, adata, picks: dict, batches, log):
    """Copy each distinct encoder once; fit (the types side by side) and save each type's
    calibrated classifier on its encoder's embeddings. Returns the manifest's entries, the
    held-out probabilities (cells × types) and the kind."""
    (staging / "encoders").mkdir(parents=True)
    embeddings: dict[str, np.ndarray] = {}
    for pick in picks.values():
        digest = pick["digest"]
        if digest not in embeddings:
            shutil.copyfile(pick["path"], staging / _encoder_name(digest))
            encoder, saved = load_encoder(pick["path"])
            x, _ = saved.input.prepare(adata)
            embeddings[digest] = embed(encoder, torch.from_numpy(x))
    features = {task: embeddings[pick["digest"]] for task, pick in picks.items()}
    classifier = experiment.evaluation.classifier
    entries, held_out = _one_vs_rest_files(
        staging, experiment, adata, classifier, picks, features, batches, log
    )
    for entry, pick in zip(entries, picks.values(), strict=True):
        entry["encoder"] = _encoder_name(pick["digest"])
    return entries, held_out, {"kind": "encoder"}


def _expression_files(
    staging: Path,
    experiment: Experiment,
    adata,
    values: str,
    baseline: Classifier,
    picks,
    batches,
    log,
):
    """A baseline's classifier refit on the expression of every labelled cell, its features
    prepared as its CV prepared them: one multi-class model, or one per type."""
    fitted = preprocess.fit_features(baseline.features, adata, values)
    x = fitted.transform(adata)
    kind = {"kind": "expression", "input": _input_record(fitted, adata)}
    if not baseline.multiclass:
        features = dict.fromkeys(picks, x)
        entries, held_out = _one_vs_rest_files(
            staging, experiment, adata, baseline, picks, features, batches, log
        )
        return entries, held_out, kind
    labels = adata.obs[data.LABEL].to_numpy(dtype=str)
    rows = np.isin(labels, list(picks))
    evaluation = experiment.evaluation
    start = time.perf_counter()
    model, probabilities = multiclass_classifier(
        baseline,
        x[rows],
        labels[rows],
        evaluation.inner_folds,
        evaluation.metric,
        experiment.seed,
        evaluation.solver,
        _batch_splits(None if batches is None else batches[rows]),
    )
    log(
        f"  one {type(model).__name__} of {len(picks)} types refit on {rows.sum()} cells "
        f"in {time.perf_counter() - start:.1f} s"
    )
    (staging / "classifiers").mkdir(parents=True)
    skops.io.dump(model, staging / MULTICLASS_FILE)
    held_out = np.full((len(labels), len(picks)), np.nan)
    columns = [list(model.classes_).index(t) for t in picks]
    held_out[rows] = probabilities[:, columns]
    entries = [
        _entry(task, pick, MULTICLASS_FILE, int((labels == task).sum()), _params(model))
        for task, pick in picks.items()
    ]
    return entries, held_out, kind


def _one_vs_rest_files(
    staging: Path,
    experiment: Experiment,
    adata,
    classifier: Classifier,
    picks,
    features,
    batches,
    log,
):
    """Fit (the types side by side) and save a calibrated classifier per type on its features;
    the entries and the held-out probabilities (cells × types)."""
    (staging / "classifiers").mkdir(parents=True, exist_ok=True)
    labels = adata.obs[data.LABEL].to_numpy(dtype=str)
    evaluation = experiment.evaluation
    held_out_splits = _batch_splits(batches)

    def refit(task: str) -> tuple[object, np.ndarray, float]:
        start = time.perf_counter()
        model, held_out = calibrated_classifier(
            classifier,
            features[task],
            labels == task,
            evaluation.inner_folds,
            evaluation.metric,
            experiment.seed,
            evaluation.solver,
            held_out_splits,
        )
        return model, held_out, time.perf_counter() - start

    with Workers(torch.get_num_threads()) as workers:
        fitted = dict(zip(picks, workers.map(refit, list(picks)), strict=True))
    entries = []
    for task, pick in picks.items():
        model, _, seconds = fitted[task]
        classifier_name = f"classifiers/{safe_name(task)}.skops"
        skops.io.dump(model, staging / classifier_name)
        cells = int((labels == task).sum())
        origin = f"fold {pick['fold']}, epoch {pick['epoch']}, " if "fold" in pick else ""
        log(
            f"  {task}: {origin}classifier refit on {len(labels)} cells ({cells} of the type) "
            f"in {seconds:.1f} s"
        )
        entries.append(_entry(task, pick, classifier_name, cells, _params(model)))
    held_out = np.column_stack([fitted[task][1] for task in picks])
    return entries, held_out


def _entry(task: str, pick: dict, classifier: str, cells: int, params: dict) -> dict:
    return {
        "name": task,
        "classifier": classifier,
        "fold": pick.get("fold"),
        "epoch": pick.get("epoch"),
        "validation_score": pick.get("score"),
        "validated": pick.get("validated", True),
        "test_mcc": pick.get("test_mcc"),
        "cells": cells,
        "classifier_params": params,
    }


def _unassigned_rule(regions, labels: np.ndarray, types: list[str], held_out, batches, log):
    """The Unassigned rule chosen from the held-out predictions of the reference's cells of the
    model's types, and what it does to them (a dict for the manifest)."""
    order = np.concatenate([np.flatnonzero(labels == t) for t in types])  # the regions' order
    truth = np.repeat(np.arange(len(types)), [int((labels == t).sum()) for t in types])
    probabilities = rule.shares(held_out[order])  # as annotate reports them
    predicted = probabilities.argmax(axis=1)
    best = probabilities[np.arange(len(order)), predicted]
    ratios = regions.held_out_ratios(predicted, truth, None if batches is None else batches[order])
    chosen = rule.choose(best, ratios, predicted == truth)
    rates = rule.held_out_rates(chosen, best, ratios, predicted, truth)
    log(
        f"  Unassigned: best probability below {chosen.threshold:.3f} or farther than "
        f"{chosen.multiplier:.2f} × the type's radius; on {rates['cells']} held-out reference "
        f"cells: {rates['unassigned']:.1%} Unassigned, accuracy {rates['accuracy']:.3f}"
    )
    return {**chosen.to_record(), "held_out": rates, "calibrated_on": WITHIN_BATCHES}


def _input_record(fitted: preprocess.Fitted, adata) -> dict:
    """How an expression model's features are made from the reference's genes: the per-cell
    normalisation, and for scaled features the genes kept with their mean and std."""
    record = {"target_sum": fitted.target_sum}
    if fitted.genes is not None:
        record["genes"] = list(adata.var_names[fitted.genes])
        record["mean"] = [float(v) for v in fitted.mean]
        record["std"] = [float(v) for v in fitted.std]
    return record


def _encoder_name(digest: str) -> str:
    return f"encoders/{digest[:16]}.pt"


def _params(model) -> dict:
    """The fitted classifier's parameters (the grid search's choice), as plain values."""
    inner = getattr(model, "calibrated_classifiers_", None)
    params = (inner[0].estimator if inner else model).get_params()
    return {k: v for k, v in params.items() if isinstance(v, str | int | float | bool | None)}


def _manifest(experiment: Experiment, spec: Dataset, method: str, adata, entries) -> dict:
    return {
        "dataset": spec.name,
        "method": method,
        "values": spec.values,
        "reference_cells": int(adata.n_obs),
        "reference_genes": int(adata.n_vars),
        "experiment": experiment.name,
        "seed": experiment.seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
        "cell_types": entries,
    }
