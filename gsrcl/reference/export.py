"""Export a reference model from a finished run, for `python3 -m gsrcl annotate`.

For each cell type of a dataset: the encoder chosen across the folds (the fold whose checkpoint
scored best on the validation cells; earliest fold on ties) and a classifier refit on that
encoder's embeddings of every labelled cell, with calibrated probabilities. Layout and checks:
`gsrcl.reference.model`.
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

from gsrcl.config.settings import Dataset, Experiment
from gsrcl.data import dataset as data
from gsrcl.errors import UserError
from gsrcl.evaluate.classifiers import calibrated_classifier
from gsrcl.evaluate.workers import Workers
from gsrcl.files import safe_name
from gsrcl.model.checkpoints import load_encoder
from gsrcl.model.train import embed
from gsrcl.reference import model as reference
from gsrcl.reference import neighbourhood
from gsrcl.runner import jobs
from gsrcl.runner.environment import package_versions
from gsrcl.runner.run_folder import RunFolder


def export_model(
    experiment: Experiment,
    dataset: str | None = None,
    method: str | None = None,
    out: Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Write the reference model of `dataset` (by `method`, default the config's export.method)
    from the run's results; return its folder."""
    run = RunFolder.of(experiment)
    spec = _dataset(experiment, dataset)
    method = _method(experiment, run, spec.name, method or experiment.export.method)
    chosen = _chosen_encoders(experiment, run, spec.name, method)
    chosen.update(_unvalidated(run, spec.name, chosen, log))
    folder = Path(out) if out else run.model_path(spec.name, method)
    reference.check_replaceable(folder)
    log(f"export: {spec.name}, {method}, {len(chosen)} cell types → {folder}")
    log(describe_types(chosen))
    adata = data.load_dataset(spec)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        staging = Path(tmp) / "model"
        entries = _write_files(staging, experiment, adata, chosen, log)
        (staging / "genes.txt").write_text("\n".join(adata.var_names) + "\n")
        labels = adata.obs[data.LABEL].to_numpy(dtype=str)
        types = [e["name"] for e in entries]
        arrays = neighbourhood.fit(adata, labels, spec.values, types)
        neighbourhood.save(staging / reference.NEIGHBOURHOODS, arrays)
        reference.write_manifest(staging, _manifest(experiment, spec, method, adata, entries))
        reference.swap_in(staging, folder, Path(tmp))
    return folder


def _dataset(experiment: Experiment, name: str | None) -> Dataset:
    names = [d.name for d in experiment.datasets]
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        raise UserError(f"choose the dataset to export with --dataset, one of {names}")
    return experiment.datasets[names.index(name)]


def _method(experiment: Experiment, run: RunFolder, dataset: str, name: str) -> str:
    """The method asked for, or for "best" the contrastive method with the highest mean MCC."""
    methods = [m.name for m in experiment.methods]
    if not methods:
        raise UserError("the config has no contrastive method, so there is no encoder to export")
    if name != "best":
        if name not in methods:
            raise UserError(f"method {name!r} is not in the config; choose one of {methods}")
        return name
    summary = run.read_summary()
    scored = summary[(summary["dataset"] == dataset) & summary["method"].isin(methods)]
    if scored.empty:
        raise UserError(f"{run.path}'s summary holds no scored task of {dataset}; run it first")
    means = scored.groupby("method")["mcc_mean"].mean()
    return str(means.reindex(methods).idxmax())


def _chosen_encoders(experiment: Experiment, run: RunFolder, dataset: str, method: str) -> dict:
    """For each task: the fold whose chosen checkpoint scored best on the validation cells."""
    best: dict[str, dict] = {}
    for fold in range(experiment.split.folds):
        job = jobs.Job(dataset, method, fold)
        folder = run.job(job)
        state = folder.state(jobs.fingerprint(experiment, job))
        if state.status != "done":
            why = f": {state.reason}" if state.reason else ""
            raise UserError(
                f"job {job.id} is {state.status}{why}; run the experiment with this config "
                "(python3 runner.py) before exporting"
            )
        checksums = folder.checksums()
        for row in folder.metrics():
            if row["task"] not in best or row["validation_score"] > best[row["task"]]["score"]:
                path = folder.encoder_path(row["task"])
                best[row["task"]] = {
                    "fold": fold,
                    "epoch": row["epoch"],
                    "score": row["validation_score"],
                    "test_mcc": row["mcc"],
                    "path": path,
                    "digest": checksums[path.name],  # checked by `state`: no second read
                }
    return best


def _unvalidated(run: RunFolder, dataset: str, chosen: dict, log) -> dict[str, dict]:
    """The types too small for the CV split (never scored, so no chosen encoder): each gets the
    encoder most scored types chose and a classifier fitted on all its cells, marked not
    validated. A type of one cell cannot be fitted; it is named and left out."""
    if not chosen:
        return {}
    main = Counter(pick["digest"] for pick in chosen.values()).most_common(1)[0][0]
    shared = next(pick for pick in chosen.values() if pick["digest"] == main)
    added = {}
    for task in (run.read_splits(dataset) or {"tasks": []})["tasks"]:
        if task["scored"] or task["name"] in chosen:
            continue
        if task["cells"] < 2:
            log(f"  {task['name']}: 1 cell, too few for a classifier; the model does not know it")
            continue
        added[task["name"]] = {**shared, "score": None, "test_mcc": None, "validated": False}
    return added


def describe_types(picks: dict[str, dict]) -> str:
    """Which types a model knows, and which of them were not validated (too few cells)."""
    unvalidated = [t for t, pick in picks.items() if not pick.get("validated", True)]
    text = f"  knows {len(picks)} cell types: {', '.join(picks)}"
    if unvalidated:
        text += f"; not validated (too few cells for the CV): {', '.join(unvalidated)}"
    return text


def _write_files(staging: Path, experiment: Experiment, adata, chosen: dict, log) -> list[dict]:
    """Copy each distinct encoder once; fit (the types side by side) and save each type's
    calibrated classifier."""
    (staging / "encoders").mkdir(parents=True)
    (staging / "classifiers").mkdir()
    labels = adata.obs[data.LABEL].to_numpy(dtype=str)
    evaluation = experiment.evaluation
    embeddings: dict[str, np.ndarray] = {}
    digests = {task: pick["digest"] for task, pick in chosen.items()}
    for pick in chosen.values():
        digest = pick["digest"]
        if digest not in embeddings:
            shutil.copyfile(pick["path"], staging / _encoder_name(digest))
            encoder, saved = load_encoder(pick["path"])
            x, _ = saved.input.prepare(adata)
            embeddings[digest] = embed(encoder, torch.from_numpy(x))

    def refit(task: str) -> tuple[object, float]:
        start = time.perf_counter()
        model = calibrated_classifier(
            evaluation.classifier,
            embeddings[digests[task]],
            labels == task,
            evaluation.inner_folds,
            evaluation.metric,
            experiment.seed,
        )
        return model, time.perf_counter() - start

    with Workers(torch.get_num_threads()) as workers:
        fitted = dict(zip(chosen, workers.map(refit, list(chosen)), strict=True))
    entries = []
    for task, pick in chosen.items():
        model, seconds = fitted[task]
        classifier_name = f"classifiers/{safe_name(task)}.skops"
        skops.io.dump(model, staging / classifier_name)
        cells = int((labels == task).sum())
        log(
            f"  {task}: fold {pick['fold']}, epoch {pick['epoch']}, classifier refit on "
            f"{len(labels)} cells ({cells} of the type) in {seconds:.1f} s"
        )
        entries.append(
            {
                "name": task,
                "encoder": _encoder_name(digests[task]),
                "classifier": classifier_name,
                "fold": pick["fold"],
                "epoch": pick["epoch"],
                "validation_score": pick["score"],
                "validated": pick.get("validated", True),
                "test_mcc": pick["test_mcc"],
                "cells": cells,
                "classifier_params": _params(model),
            }
        )
    return entries


def _encoder_name(digest: str) -> str:
    return f"encoders/{digest[:16]}.pt"


def _params(model) -> dict:
    params = model.calibrated_classifiers_[0].estimator.get_params()
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
