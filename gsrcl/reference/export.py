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

import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import skops.io
import torch
from sklearn.model_selection import LeaveOneGroupOut

from gsrcl.config.settings import BASELINE, Classifier, Dataset, Experiment
from gsrcl.data import dataset as data
from gsrcl.data import preprocess
from gsrcl.errors import UserError
from gsrcl.evaluate.classifiers import (
    Calibrated,
    calibrated_classifiers,
    grid_search_cells,
    multiclass_classifier,
)
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


@dataclass(frozen=True)
class Reference:
    """What every candidate model of one export shares: the run, the dataset's cells with
    their labels and batches, the reference's expression space, the threads and the log."""

    experiment: Experiment
    run: RunFolder
    spec: Dataset
    adata: ad.AnnData
    labels: np.ndarray
    batches: np.ndarray | None  # each cell's batch, when two or more are named
    space: neighbourhood.Space
    workers: Workers
    log: Callable[[str], None]
    # by the types a candidate knows: their neighbourhoods and the held-out ratios judged so far
    judged: dict[tuple[str, ...], tuple[dict, neighbourhood.HeldOutRatios]] = field(
        default_factory=dict
    )

    @property
    def held_out_splits(self) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """One held-out split per batch (trained on the others), or None without batches."""
        if self.batches is None:
            return None
        return list(LeaveOneGroupOut().split(self.batches, groups=self.batches))


@dataclass
class Candidate:
    """A method's model before anything of it is written: for each type what it is trained
    from (`picks`) and its classifier, the neighbourhoods, and the Unassigned rule chosen from
    the held-out predictions of the reference's cells (with what it does to them)."""

    method: str
    picks: dict[str, dict]
    kind: dict  # "kind" and, for an expression model, how its input is made
    classifiers: dict[str, Calibrated]  # per type; one shared by every type when multi-class
    encoders: dict[str, Path]  # an encoder model's files by digest
    regions: dict  # the types' neighbourhoods (arrays for neighbourhoods.npz)
    unassigned: dict  # the rule, what it does to the held-out cells, what it was chosen on

    @property
    def scores(self) -> dict[str, float]:
        rates = self.unassigned["held_out"]
        return {"held_out_accuracy": rates["accuracy"], "held_out_macro_f1": rates["macro_f1"]}


def export_model(
    experiment: Experiment,
    dataset: str | None = None,
    method: str | None = None,
    out: Path | None = None,
    log: Callable[[str], None] = print,
    keep_candidates: bool = False,
) -> Path:
    """Write the reference model of `dataset` (by `method`, default the config's export.method)
    from the run's results; return its folder. With "best", every method is judged on the
    reference's held-out cells and only the winner is fitted on every cell and written; with
    `keep_candidates` every other method's model too: `<out>-<method>`, or without `out` in the
    run's models folder."""
    start = time.perf_counter()
    run = RunFolder.of(experiment)
    spec = _dataset(experiment, dataset)
    asked = method or experiment.export.method
    out = out or (Path(experiment.export.out) if experiment.export.out else None)
    keep_candidates = keep_candidates or experiment.export.keep_candidates
    table = cv_table(experiment, run, spec.name)
    if out is not None:
        reference.check_replaceable(Path(out))
    names = list(table) if asked == "best" else [_method(experiment, asked)]
    with Workers(torch.get_num_threads()) as workers:
        ref = _reference(experiment, run, spec, workers, log)
        candidates = {
            name: _assess(ref, name, f"{i + 1}/{len(names)}") for i, name in enumerate(names)
        }
        for name, candidate in candidates.items():
            table.setdefault(name, {}).update(candidate.scores)
        chosen = _best_held_out(table, log) if asked == "best" else asked
        selection = {
            "rule": _selection_rule(experiment, asked, ref.batches, table),
            "asked": asked,
            "chosen": chosen,
            "table": table,
        }
        kept = list(candidates) if keep_candidates else [chosen]
        candidates = {name: candidates[name] for name in kept}  # the others' kernels go
        folders = {name: _destination(run, spec, out, name, chosen) for name in kept}
        for folder in folders.values():
            reference.check_replaceable(folder)
        parent = next(iter(folders.values())).parent
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=parent, prefix=".export.") as tmp:
            for i, (name, folder) in enumerate(folders.items()):
                staging = Path(tmp) / str(i)
                manifest = _write(ref, candidates[name], staging)
                reference.write_manifest(staging, {**manifest, "selection": selection})
                scratch = Path(tmp) / f"previous-{i}"  # where the model it replaces waits
                scratch.mkdir()
                reference.swap_in(staging, folder, scratch)
                log(f"export: {spec.name}, {name} → {folder}")
    log(f"export: {spec.name} done in {time.perf_counter() - start:.1f} s")
    return folders[chosen]


def _reference(experiment: Experiment, run: RunFolder, spec: Dataset, workers, log) -> Reference:
    adata = data.load_dataset(spec)
    return Reference(
        experiment=experiment,
        run=run,
        spec=spec,
        adata=adata,
        labels=adata.obs[data.LABEL].to_numpy(dtype=str),
        batches=_batches(spec, adata, log),
        space=neighbourhood.fit_space(adata, spec.values),
        workers=workers,
        log=log,
    )


def _destination(run: RunFolder, spec: Dataset, out: Path | None, name: str, chosen: str) -> Path:
    """The chosen model goes to `out` (default the run's models folder); a kept candidate beside
    it."""
    if out is None:
        return run.model_path(spec.name, name)
    return Path(out) if name == chosen else Path(out).parent / f"{Path(out).name}-{name}"


def _assess(ref: Reference, method: str, counter: str) -> Candidate:
    """A method's classifiers searched and held out, its Unassigned rule chosen: all that judges
    it, with nothing fitted on every cell yet."""
    start = time.perf_counter()
    experiment, spec = ref.experiment, ref.spec
    baseline = _baseline(experiment, method)
    picks = _picks(experiment, ref.run, spec.name, method, baseline, ref.log)
    ref.log(f"export: {spec.name}, candidate {counter} {method}, {len(picks)} cell types")
    ref.log(describe_types(picks))
    if baseline is None:
        kind, encoders, classifiers = _encoder_classifiers(ref, picks)
    else:
        kind, encoders, classifiers = _expression_classifiers(ref, baseline, picks)
    types = list(picks)
    held_out = _held_out_matrix(ref, classifiers, types)
    regions, ratios = _neighbourhoods(ref, types)
    unassigned = _unassigned_rule(ref, ratios, types, held_out)
    if ref.batches is not None and kind["kind"] == "encoder":
        unassigned["calibrated_on"] += ENCODER_SAW_EVERY_BATCH
    ref.log(f"  {method} judged in {time.perf_counter() - start:.1f} s")
    return Candidate(method, picks, kind, classifiers, encoders, regions, unassigned)


def _held_out_matrix(ref: Reference, classifiers: dict[str, Calibrated], types: list[str]):
    """Each reference cell's held-out probability of each type (NaN for a cell a multi-class
    model was not fitted on: a type too small to be known)."""
    first = classifiers[types[0]]
    if first.classes is None:
        return np.column_stack([classifiers[t].held_out for t in types])
    rows = np.isin(ref.labels, types)
    held_out = np.full((len(ref.labels), len(types)), np.nan)
    held_out[rows] = first.held_out[:, [first.classes.index(t) for t in types]]
    return held_out


def _write(ref: Reference, candidate: Candidate, staging: Path) -> dict:
    """Every file of the candidate's model in `staging` (its classifiers fitted on every cell
    now), and its manifest (to be written there)."""
    start = time.perf_counter()
    (staging / "classifiers").mkdir(parents=True)
    (staging / "genes.txt").write_text("\n".join(ref.adata.var_names) + "\n")
    neighbourhood.save(staging / reference.NEIGHBOURHOODS, candidate.regions)
    if candidate.encoders:
        (staging / "encoders").mkdir()
        for digest, path in candidate.encoders.items():
            shutil.copyfile(path, staging / _encoder_name(digest))
    entries = _classifier_files(ref, candidate, staging)
    ref.log(
        f"  {candidate.method}: {len(entries)} classifiers fitted on every cell and written in "
        f"{time.perf_counter() - start:.1f} s"
    )
    manifest = _manifest(ref.experiment, ref.spec, candidate.method, ref.adata, entries)
    kind = dict(candidate.kind)
    manifest.update(kind=kind.pop("kind"), **kind, unassigned=candidate.unassigned)
    return manifest


def _classifier_files(ref: Reference, candidate: Candidate, staging: Path) -> list[dict]:
    """Each type's classifier, fitted on every cell (the types side by side), saved; the
    manifest's entries."""
    files = {
        task: MULTICLASS_FILE if c.classes is not None else f"classifiers/{safe_name(task)}.skops"
        for task, c in candidate.classifiers.items()
    }
    distinct = {id(c): (files[task], c) for task, c in candidate.classifiers.items()}
    fitted = ref.workers.map(lambda item: (item[0], item[1].model()), list(distinct.values()))
    for path, model in fitted:
        skops.io.dump(model, staging / path)
    entries = []
    for task, pick in candidate.picks.items():
        cells = int((ref.labels == task).sum())
        entry = _entry(task, pick, files[task], cells, candidate.classifiers[task].params)
        if "digest" in pick:
            entry["encoder"] = _encoder_name(pick["digest"])
        entries.append(entry)
    return entries


def _batches(spec: Dataset, adata, log) -> np.ndarray | None:
    """Each cell's batch, when the dataset names a batch column holding two or more."""
    if spec.batch is None:
        return None
    batches = adata.obs[data.BATCH].to_numpy(dtype=str)
    if len(np.unique(batches)) < 2:
        log(f"  batch column {spec.batch!r} holds one batch: the rule is calibrated within it")
        return None
    return batches


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
            task: _baseline_pick([r for r in scores if r["task"] == task], baseline.multiclass)
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
        picks[task["name"]]["choice"] = None  # searched: no CV chose settings for it
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
            "choice": row.get("params"),  # its classifier's settings on that snapshot
        }
    return picks


def _baseline_pick(rows: list[dict], multiclass: bool) -> dict:
    """A baseline's type: its mean CV score, and the settings most of its folds chose (the
    earliest fold's among equals; None where the jobs kept none, as before 2026-12-06). A
    multi-class model's grid is searched again: with a batch column on the held-out batches
    (its CV's inner folds mix them), without one its folds' choices may differ by type."""
    choices = [
        json.dumps(r["params"], sort_keys=True)
        for r in rows
        if r.get("params") is not None and not multiclass
    ]
    counts = Counter(choices)
    choice = max(counts, key=lambda c: (counts[c], -choices.index(c))) if choices else None
    return {
        "test_mcc": float(np.mean([r["mcc"] for r in rows])),
        "choice": None if choice is None else json.loads(choice),
    }


def describe_types(picks: dict[str, dict]) -> str:
    """Which types a model knows, and which of them were not validated (too few cells)."""
    unvalidated = [t for t, pick in picks.items() if not pick.get("validated", True)]
    text = f"  knows {len(picks)} cell types: {', '.join(picks)}"
    if unvalidated:
        text += f"; not validated (too few cells for the CV): {', '.join(unvalidated)}"
    return text


def _encoder_classifiers(ref: Reference, picks: dict[str, dict]):
    """Each type's calibrated classifier on its chosen encoder's embeddings (one search per
    distinct encoder, its types side by side); the kind and the encoder files by digest."""
    encoders = {pick["digest"]: pick["path"] for pick in picks.values()}
    classifiers: dict[str, Calibrated] = {}
    for digest, path in encoders.items():
        encoder, saved = load_encoder(path)
        x, _ = saved.input.prepare(ref.adata)
        features = embed(encoder, torch.from_numpy(x))
        types = [t for t, pick in picks.items() if pick["digest"] == digest]
        spec = ref.experiment.evaluation.classifier
        classifiers.update(_one_vs_rest(ref, spec, features, {t: picks[t] for t in types}))
    return {"kind": "encoder"}, encoders, {t: classifiers[t] for t in picks}


def _expression_classifiers(ref: Reference, baseline: Classifier, picks: dict[str, dict]):
    """A baseline's classifier on the expression of the reference's cells, its features
    prepared as its CV prepared them: one multi-class model, or one per type."""
    fitted = preprocess.fit_features(baseline.features, ref.adata, ref.spec.values)
    x = fitted.transform(ref.adata)
    kind = {"kind": "expression", "input": _input_record(fitted, ref.adata)}
    if not baseline.multiclass:
        return kind, {}, _one_vs_rest(ref, baseline, x, picks)
    rows = np.isin(ref.labels, list(picks))
    splits = None
    if ref.batches is not None:  # one per batch, of the cells the model is fitted on
        splits = list(LeaveOneGroupOut().split(x[rows], groups=ref.batches[rows]))
    start = time.perf_counter()
    evaluation = ref.experiment.evaluation
    model = multiclass_classifier(
        baseline,
        x[rows],
        ref.labels[rows],
        inner_folds=evaluation.inner_folds,
        metric=evaluation.metric,
        seed=ref.experiment.seed,
        held_out_splits=splits,
        workers=ref.workers,
        approximation=evaluation.approximation,
    )
    chosen = {k: model.params.get(k) for k in baseline.grid}
    cells = int(rows.sum())
    sample = grid_search_cells(baseline, cells, evaluation.approximation)
    on = f"{sample} of {cells} cells" if sample < cells else f"{cells} cells"
    ref.log(
        f"  one model of {len(picks)} types searched and held out on {on}, chose {chosen}, "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return kind, {}, dict.fromkeys(picks, model)


def _one_vs_rest(ref: Reference, spec: Classifier, x: np.ndarray, picks: dict[str, dict]):
    """Each type's calibrated classifier against the rest on features `x`, with the settings
    its CV chose (searched again, side by side, only for a type the CV did not score); a line
    per type."""
    start = time.perf_counter()
    types = list(picks)
    evaluation = ref.experiment.evaluation
    classifiers = calibrated_classifiers(
        spec,
        x,
        [ref.labels == t for t in types],
        inner_folds=evaluation.inner_folds,
        metric=evaluation.metric,
        seed=ref.experiment.seed,
        held_out_splits=ref.held_out_splits,
        workers=ref.workers,
        choices=[picks[t].get("choice") for t in types],
        approximation=evaluation.approximation,
    )
    seconds = time.perf_counter() - start
    for task, classifier in zip(types, classifiers, strict=True):
        chosen = {k: classifier.params.get(k) for k in spec.grid}
        how = "searched" if picks[task].get("choice") is None else "the CV's choice"
        ref.log(
            f"  {task}: {int((ref.labels == task).sum())} cells, {how} {chosen}, calibrated and "
            f"held out in {classifier.seconds:.1f} s"
        )
    ref.log(f"  {len(types)} classifiers searched on {x.shape[1]} features in {seconds:.1f} s")
    return dict(zip(types, classifiers, strict=True))


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


def _neighbourhoods(ref: Reference, types: list[str]):
    """The types' neighbourhoods (arrays for neighbourhoods.npz) and their held-out ratios of
    the reference's cells: made once for every candidate that knows the same types."""
    key = tuple(types)
    if key not in ref.judged:
        arrays = neighbourhood.fit(ref.space, ref.labels, types)
        genes = list(ref.adata.var_names)
        regions = neighbourhood.Neighbourhoods(arrays, genes, ref.spec.values)
        order = _stored_order(ref.labels, types)
        truth = np.repeat(np.arange(len(types)), [int((ref.labels == t).sum()) for t in types])
        batches = None if ref.batches is None else ref.batches[order]
        ref.judged[key] = (arrays, neighbourhood.HeldOutRatios(regions, truth, batches))
    return ref.judged[key]


def _stored_order(labels: np.ndarray, types: list[str]) -> np.ndarray:
    """The reference's cells of `types` in the order the neighbourhoods store them."""
    return np.concatenate([np.flatnonzero(labels == t) for t in types])


def _unassigned_rule(
    ref: Reference, held_out_ratios: neighbourhood.HeldOutRatios, types: list[str], held_out
) -> dict:
    """The Unassigned rule chosen from the held-out predictions of the reference's cells of the
    model's types, what it does to them and what it was chosen on (a dict for the manifest)."""
    batches = ref.batches
    order = _stored_order(ref.labels, types)
    truth = held_out_ratios.truth
    probabilities = rule.shares(held_out[order])  # as annotate reports them
    predicted = probabilities.argmax(axis=1)
    best = probabilities[np.arange(len(order)), predicted]
    ratios = held_out_ratios(predicted)
    chosen = rule.choose(best, ratios, predicted == truth)
    rates = rule.held_out_rates(chosen, best, ratios, predicted, truth)
    ref.log(
        f"  Unassigned: best probability below {chosen.threshold:.3f} or farther than "
        f"{chosen.multiplier:.2f} × the type's radius; on {rates['cells']} held-out reference "
        f"cells: {rates['unassigned']:.1%} Unassigned, accuracy {rates['accuracy']:.3f}"
    )
    calibrated_on = WITHIN_BATCHES
    if batches is not None:
        names = ", ".join(np.unique(batches))
        calibrated_on = ACROSS_BATCHES.format(
            n=len(np.unique(batches)), column=ref.spec.batch, names=names
        )
    return {**chosen.to_record(), "held_out": rates, "calibrated_on": calibrated_on}


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
