"""Export a reference model from a run on part of tm_immune, then label the held-back cells."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import gsrcl
from gsrcl.config.presets import LOGISTIC, svm
from gsrcl.config.settings import (
    Contrastive,
    Dataset,
    Evaluation,
    Experiment,
    Export,
    Method,
    Split,
)
from gsrcl.errors import UserError
from gsrcl.reference.annotation import UNASSIGNED, Query, annotate_file
from gsrcl.reference.export import (
    ENCODER_OPTIMISM,
    SELECTION_NAMED,
    SELECTION_WITHIN,
    export_model,
)
from gsrcl.reference.model import sha256
from gsrcl.runner.pipeline import run_experiment
from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
UNKNOWN = "Granulocyte"  # held out of the reference: the query's unknown type


def _reference_experiment(name, dataset, folder, width, epochs, classifier, export) -> Experiment:
    """SimCLR + noise on `folder`/reference.h5ad, 2 folds, no baselines: a quick reference run."""
    return Experiment(
        name=name,
        datasets=(Dataset(name=dataset, path=str(folder / "reference.h5ad")),),
        methods=(
            Method(
                loss="simclr", augmentation="noise", encoder=width, head=(width[1], width[1] // 2)
            ),
        ),
        contrastive=Contrastive(epochs=epochs, validate_every=epochs // 2, lr=1e-3),
        split=Split(folds=2),
        evaluation=Evaluation(classifier=classifier, baselines=(), inner_folds=3),
        export=export,
        results_dir=str(folder / "results"),
    ).validate()


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    """Reference: 70% of the cells of four types; query: the other 30% and every Granulocyte."""
    folder = tmp_path_factory.mktemp("annotate")
    full = ad.read_h5ad(shared_file("tm_immune.h5ad"))
    rng = np.random.default_rng(0)
    known = (full.obs["cell_type"] != UNKNOWN).to_numpy()
    in_reference = known & (rng.random(full.n_obs) < 0.7)
    full[in_reference].write_h5ad(folder / "reference.h5ad")
    query = full[~in_reference].copy()
    query.obs = query.obs[[]]  # the query carries no labels
    query.write_h5ad(folder / "query.h5ad")
    experiment = _reference_experiment(
        "reference", "tm_immune", folder, (128, 64), 20, svm(balanced=True), Export(after_run=True)
    )
    assert run_experiment(experiment, log=lambda line: None) == 0
    model = folder / "results" / "reference" / "models" / "tm_immune-simclr-noise"
    out = folder / "labelled"
    table = annotate_file(model, Query(str(folder / "query.h5ad")), out, say=lambda line: None)
    truth = full.obs["cell_type"].to_numpy(dtype=str)[~in_reference]
    return {
        "folder": folder,
        "model": model,
        "out": out,
        "table": table,
        "truth": truth,
        "experiment": experiment,
    }


def test_held_back_cells_get_their_types_and_an_unknown_type_is_not_forced(annotated):
    table, truth = annotated["table"], annotated["truth"]
    known = truth != UNKNOWN
    accuracy = float((table["predicted"].to_numpy()[known] == truth[known]).mean())
    majority = pd.Series(truth[known]).value_counts(normalize=True).iloc[0]
    print(
        f"accuracy on {known.sum()} held-back cells {accuracy:.3f} (majority class {majority:.3f})"
    )
    assert accuracy > 0.9 > majority + 0.3
    unknown = table[~known]
    unassigned = float((unknown["predicted"] == UNASSIGNED).mean())
    of_known = float((table["predicted"].to_numpy()[known] == UNASSIGNED).mean())
    print(f"{UNKNOWN}: {unassigned:.0%} Unassigned; known types: {of_known:.1%} Unassigned")
    # a type the reference never saw is not forced into a known one, while the known types are
    # labelled. This tiny encoder (20 epochs) gives about 20 of the 68 granulocytes to NK or T
    # cells at a probability near 0.5, and in the neighbourhood's 50 components they lie within
    # 1.6 NK radii: 66 % Unassigned with the SVM settings chosen with each snapshot (72 % when
    # export searched them again on every cell; 85 % with the 20 components used before, which
    # took 4 % of a new mouse's known cells for novelty). The bench's unseen case measures the
    # defaults' model: 100 % (docs/annotation.md).
    assert unassigned >= 0.6
    assert of_known <= 0.02


def test_the_unassigned_rule_is_chosen_on_held_out_reference_cells(annotated):
    manifest = json.loads((annotated["model"] / "manifest.json").read_text())
    chosen = manifest["unassigned"]
    assert 0 < chosen["threshold"] <= 0.5 and chosen["multiplier"] >= 3
    assert chosen["held_out"]["unassigned"] <= 0.05
    assert chosen["held_out"]["cells"] == manifest["reference_cells"]
    lines = []
    model = gsrcl.ReferenceModel.load(annotated["model"])
    query = ad.read_h5ad(annotated["folder"] / "query.h5ad")
    default = gsrcl.annotate(query, model, say=lines.append)
    assert default.threshold == chosen["threshold"]
    assert any(f"below {chosen['threshold']:.3f}" in line for line in lines)
    strict = gsrcl.annotate(query, model, threshold=0.99, say=lambda _: None)  # --threshold
    assert (strict.table["predicted"] == UNASSIGNED).sum() > (
        default.table["predicted"] == UNASSIGNED
    ).sum()


def test_outputs_hold_probabilities_labels_embedding_and_figure(annotated):
    out = annotated["out"]
    saved = pd.read_csv(out / "predictions.csv")
    types = ["B cell", "T cell", "NK cell", "Monocyte"]
    first = ["cell", "predicted", "probability", "outside_reference", "distance_ratio"]
    first += ["most_probable", "unassigned_because"]
    assert list(saved.columns[:7]) == first
    assert sorted(c.removeprefix("p_") for c in saved.columns[7:]) == sorted(types)
    saved["unassigned_because"] = saved["unassigned_because"].fillna("")
    assigned = saved["predicted"] != UNASSIGNED
    assert (saved["most_probable"][assigned] == saved["predicted"][assigned]).all()
    assert (saved["unassigned_because"][assigned] == "").all()
    assert set(saved["unassigned_because"][~assigned]) <= {
        "low probability",
        "outside the reference",
        "low probability; outside the reference",
    }
    assert (saved["outside_reference"] == saved["unassigned_because"].str.contains("outside")).all()
    probabilities = saved[[f"p_{t}" for t in types]].to_numpy()
    assert ((0 <= probabilities) & (probabilities <= 1)).all()
    assert np.allclose(saved["probability"], probabilities.max(axis=1), atol=1e-6)
    labelled = ad.read_h5ad(out / "query.h5ad")
    assert list(labelled.obs_names) == list(saved["cell"].astype(str))
    assert (labelled.obs["gsrcl_prediction"].astype(str).to_numpy() == saved["predicted"]).all()
    most_probable = labelled.obs["gsrcl_most_probable"].astype(str).to_numpy()
    assert (most_probable == saved["most_probable"]).all()
    assert labelled.obsm["X_gsrcl"].shape == (labelled.n_obs, 64)
    assert (out / "umap.png").stat().st_size > 10_000


def test_a_threshold_of_one_leaves_every_cell_unassigned(annotated, tmp_path):
    table = annotate_file(
        annotated["model"],
        Query(str(annotated["folder"] / "query.h5ad")),
        tmp_path,
        threshold=1.0,
        umap=False,
        say=lambda line: None,
    )
    assert (table["predicted"] == UNASSIGNED).all()


def test_manifest_lists_every_file_with_its_checksum(annotated):
    model = annotated["model"]
    manifest = json.loads((model / "manifest.json").read_text())
    files = {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == files - {"manifest.json"}
    assert all(sha256(model / name) == digest for name, digest in manifest["files"].items())
    assert {"torch", "scikit-learn", "skops"} <= set(manifest["versions"])
    assert [t["name"] for t in manifest["cell_types"]] == [
        "B cell",
        "T cell",
        "NK cell",
        "Monocyte",
    ]


def _copy(model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    return copy


def _refused(model, query, match):
    with pytest.raises(UserError, match=match):
        annotate_file(
            model, Query(str(query)), model.parent / "out", umap=False, say=lambda _: None
        )


def test_tampered_or_foreign_model_files_are_refused(annotated, tmp_path):
    query = annotated["folder"] / "query.h5ad"
    manifest = json.loads((annotated["model"] / "manifest.json").read_text())
    classifier = manifest["cell_types"][0]["classifier"]
    encoder = manifest["cell_types"][0]["encoder"]

    tampered = _copy(annotated["model"], tmp_path / "a")
    with open(tampered / classifier, "r+b") as file:
        file.seek(100)
        byte = file.read(1)
        file.seek(100)
        file.write(bytes([byte[0] ^ 1]))
    _refused(tampered, query, "does not match its checksum")

    # a pickle posing as the encoder, its checksum forged in the manifest: torch refuses to load it
    foreign = _copy(annotated["model"], tmp_path / "b")
    (foreign / encoder).write_bytes(pickle.dumps(shutil.rmtree))
    forged = json.loads((foreign / "manifest.json").read_text())
    forged["files"][encoder] = sha256(foreign / encoder)
    (foreign / "manifest.json").write_text(json.dumps(forged))
    _refused(foreign, query, "not a GsRCL encoder file")

    (foreign / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    _refused(foreign, query, "not a GsRCL reference model manifest")
    _refused(annotated["folder"], query, "no manifest.json")


def test_a_query_in_the_wrong_scale_or_with_other_gene_names_is_refused(annotated, tmp_path):
    query = ad.read_h5ad(annotated["folder"] / "query.h5ad")
    logged = query.copy()
    logged.X = sp.csr_matrix(np.log1p(logged.X.toarray()))
    logged.write_h5ad(tmp_path / "logged.h5ad")
    _refused(annotated["model"], tmp_path / "logged.h5ad", "trained on raw counts")

    renamed = query.copy()
    renamed.var_names = [f"ENSMUSG{i:011d}" for i in range(renamed.n_vars)]
    renamed.write_h5ad(tmp_path / "renamed.h5ad")
    _refused(annotated["model"], tmp_path / "renamed.h5ad", "lacks 100% of the reference's genes")


def test_a_query_of_no_cells_or_of_a_bare_matrix_gets_one_clear_message(annotated):
    model = gsrcl.ReferenceModel.load(annotated["model"])
    query = ad.read_h5ad(annotated["folder"] / "query.h5ad")
    with pytest.raises(UserError, match="holds no cells"):
        gsrcl.annotate(query[:0].copy(), model)
    with pytest.raises(TypeError, match="AnnData or the path.*not a ndarray"):
        gsrcl.annotate(query.X.toarray(), model)


def test_export_command_on_a_finished_run_names_a_method_not_in_the_config(annotated):
    with pytest.raises(UserError, match="not in the config"):
        export_model(annotated["experiment"], method="supcon-noise")


def test_the_command_line_labels_a_query_and_answers_bad_input_with_a_message(annotated, tmp_path):
    command = [sys.executable, "-m", "gsrcl", "annotate", "--model", str(annotated["model"])]
    query = ["--query", str(annotated["folder"] / "query.h5ad")]
    done = subprocess.run(
        [*command, *query, "--out", str(tmp_path), "--no-umap"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    cells = len(annotated["table"])
    assert f"labelled {cells} cells" in done.stdout
    assert "the rule was calibrated on held-out cells of the reference's own batches" in done.stdout
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == cells
    missing = subprocess.run(
        [*command, "--query", str(tmp_path / "none.h5ad"), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("error: query")
    assert "Traceback" not in missing.stderr
    a_file = subprocess.run(
        [*command, *query, "--out", str(tmp_path / "predictions.csv")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert a_file.returncode == 2, a_file.stderr
    assert "predictions.csv is a file; give a folder" in a_file.stderr
    assert "jobs" not in a_file.stderr and "Traceback" not in a_file.stderr


def _forged(model, tmp_path, name, change):
    """A copy of the model whose manifest `change(manifest, folder)` edits."""
    copy = _copy(model, tmp_path / name)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest, copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_manifest_cannot_reach_outside_its_folder_or_break_the_loader(annotated, tmp_path):
    query, model = annotated["folder"] / "query.h5ad", annotated["model"]
    encoder = json.loads((model / "manifest.json").read_text())["cell_types"][0]["encoder"]
    outside = tmp_path / "elsewhere.pt"
    shutil.copyfile(model / encoder, outside)  # a valid encoder, checksum matching

    def absolute(manifest, folder):
        manifest["cell_types"][0]["encoder"] = str(outside)
        manifest["files"][str(outside)] = sha256(outside)

    def dotdot(manifest, folder):
        name = "../../elsewhere.pt"
        manifest["cell_types"][0]["encoder"] = name
        manifest["files"][name] = sha256(outside)

    def symlink(manifest, folder):
        (folder / encoder).unlink()
        (folder / encoder).symlink_to(outside)

    _refused(_forged(model, tmp_path, "abs", absolute), query, "outside the model folder")
    _refused(_forged(model, tmp_path, "up", dotdot), query, "outside the model folder")
    _refused(_forged(model, tmp_path, "link", symlink), query, "leads outside the model folder")

    def no_dataset(manifest, folder):
        del manifest["dataset"]

    def files_list(manifest, folder):
        manifest["files"] = list(manifest["files"])

    _refused(_forged(model, tmp_path, "key", no_dataset), query, "'dataset' is missing")
    _refused(_forged(model, tmp_path, "list", files_list), query, "'files' must map")
    deep = _copy(model, tmp_path / "deep")
    (deep / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    _refused(deep, query, "not valid JSON")
    huge = _copy(model, tmp_path / "huge")
    with open(huge / "manifest.json", "a") as file:
        file.write(" " * (9 << 20))
    _refused(huge, query, "too large")
    binary = _forged(model, tmp_path, "bin", lambda m, f: None)
    (binary / "genes.txt").write_bytes(bytes(range(128, 256)) * 4)
    manifest = json.loads((binary / "manifest.json").read_text())
    manifest["files"]["genes.txt"] = sha256(binary / "genes.txt")
    (binary / "manifest.json").write_text(json.dumps(manifest))
    _refused(binary, query, "genes.txt is not text")


def test_a_classifier_of_another_scikit_learn_type_is_refused(annotated, tmp_path):
    import skops.io
    from sklearn.linear_model import LogisticRegression

    query, model = annotated["folder"] / "query.h5ad", annotated["model"]
    swapped = _copy(model, tmp_path / "swap")
    manifest = json.loads((swapped / "manifest.json").read_text())
    classifier = manifest["cell_types"][0]["classifier"]
    other = LogisticRegression().fit(np.eye(4), [False, True, False, True])
    skops.io.dump(other, swapped / classifier)
    manifest["files"][classifier] = sha256(swapped / classifier)
    (swapped / "manifest.json").write_text(json.dumps(manifest))
    _refused(swapped, query, "holds a LogisticRegression, not a classifier GsRCL exports")


def test_export_never_deletes_a_folder_it_did_not_write(annotated, tmp_path):
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.txt").write_text("four years of work")
    with pytest.raises(UserError, match="not a GsRCL model folder"):
        export_model(annotated["experiment"], out=user, log=lambda _: None)
    assert (user / "thesis.txt").read_text() == "four years of work"
    # a model folder it wrote is replaced whole, with the user's umask
    again = export_model(annotated["experiment"], out=tmp_path / "model", log=lambda _: None)
    before = json.loads((again / "manifest.json").read_text())["created"]
    export_model(annotated["experiment"], out=again, log=lambda _: None)
    assert (again / "manifest.json").exists() and before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "thesis"]  # no leftovers
    mask = os.umask(0)
    os.umask(mask)
    assert (annotated["out"] / "predictions.csv").stat().st_mode & 0o777 == 0o666 & ~mask


def test_the_notebook_api_labels_an_anndata_in_memory(annotated):
    import gsrcl

    query = ad.read_h5ad(annotated["folder"] / "query.h5ad")
    before = query.copy()
    model = gsrcl.ReferenceModel.load(annotated["model"])
    annotation = gsrcl.annotate(query, model, say=lambda _: None)
    assert annotation.table.equals(annotated["table"])  # the same labels as the file path
    assert np.array_equal(query.X.toarray(), before.X.toarray()) and query.obs.empty  # untouched
    labelled = annotation.to_adata(key_added="ref", umap=True)
    assert list(labelled.obs["ref_prediction"].astype(str)) == list(annotated["table"]["predicted"])
    assert labelled.obsm["X_ref"].shape == (query.n_obs, 64)
    assert labelled.obsm["X_ref_umap"].shape == (query.n_obs, 2)
    assert np.allclose(model.embed(query), annotation.embedding, atol=1e-5)
    types = model.cell_types
    assert set(types["name"]) == {"B cell", "T cell", "NK cell", "Monocyte"}
    assert (types["cells"] > 0).all() and types["validation_score"].notna().all()
    from_path = gsrcl.annotate(annotated["folder"] / "query.h5ad", annotated["model"], say=print)
    assert from_path.table.equals(annotation.table)


def test_the_gsrcl_command_answers_help_and_version():
    for flag in ("--help", "--version"):
        done = subprocess.run(
            [sys.executable, "-m", "gsrcl", flag], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0 and "gsrcl" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "gsrcl", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert all(c in done.stdout for c in ("run", "check", "report", "export", "annotate"))


def test_reference_check_plans_and_estimates_without_training_or_writing(tmp_path):
    import scanpy as sc

    pbmc = sc.datasets.pbmc68k_reduced()
    path = tmp_path / "pbmc.h5ad"
    ad.AnnData(pbmc.raw.X, obs=pbmc.obs[["bulk_labels"]], var=pbmc.raw.var[[]]).write_h5ad(path)
    command = ["reference", "--data", str(path), "--labels", "bulk_labels", "--values", "log"]
    command += ["--out", str(tmp_path / "model"), "--results", str(tmp_path / "results")]
    done = subprocess.run(
        [sys.executable, "-m", "gsrcl", *command, "--epochs", "4", "--folds", "3", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "folds: 3 " in done.stdout and "6 jobs planned" in done.stdout
    assert "estimate: the run takes ~" in done.stdout and "the export ~" in done.stdout
    assert not (tmp_path / "model").exists() and not (tmp_path / "results").exists()


def test_a_large_reference_gets_two_folds_unless_told(tmp_path, monkeypatch):
    from gsrcl.api import reference_experiment
    from gsrcl.config import presets

    path = tmp_path / "cells.h5ad"
    ad.AnnData(np.ones((30, 4), np.float32), obs=pd.DataFrame({"t": ["a"] * 30})).write_h5ad(path)

    def folds(**given) -> int:
        return reference_experiment(path, "t", tmp_path / "m", **given).split.folds

    assert folds() == 5 and folds(folds=3) == 3
    monkeypatch.setattr(presets, "LARGE_REFERENCE", 29)  # 30 cells are past it
    assert folds() == 2 and folds(folds=4) == 4
    assert reference_experiment(tmp_path / "cells.csv", "t", tmp_path / "m").split.folds == 5


def test_a_type_too_small_for_the_split_is_still_in_the_model_marked_not_validated(tmp_path):
    full = ad.read_h5ad(shared_file("tm_immune.h5ad"))
    kinds = full.obs["cell_type"].astype(str).to_numpy()
    keep = {"B cell": 200, "T cell": 150, "NK cell": 60, "Monocyte": 3, "Granulocyte": 1}
    rows = np.concatenate([np.flatnonzero(kinds == t)[:n] for t, n in keep.items()])
    full[rows].write_h5ad(tmp_path / "reference.h5ad")
    experiment = _reference_experiment("small", "tm", tmp_path, (64, 32), 10, svm(), Export())
    with_logreg = replace(experiment.evaluation, baselines=(LOGISTIC,))
    experiment = replace(experiment, evaluation=with_logreg).validate()
    assert run_experiment(experiment, log=lambda _: None) == 0
    lines = []
    folder = export_model(experiment, method="simclr-noise", log=lines.append)
    text = "\n".join(lines)
    assert "Granulocyte: 1 cell, too few for a classifier" in text
    assert "not validated (too few cells for the CV): Monocyte" in text
    import gsrcl

    model = gsrcl.ReferenceModel.load(folder)
    types = model.cell_types.set_index("name")
    assert set(types.index) == {"B cell", "T cell", "NK cell", "Monocyte"}
    assert types.loc["Monocyte", "cells"] == 3 and not types.loc["Monocyte", "validated"]
    assert types.loc["B cell", "validated"]
    monocytes = full[np.flatnonzero(kinds == "Monocyte")[3:]].copy()
    said = []
    annotation = gsrcl.annotate(monocytes, model, say=said.append)
    assert any("not validated (too few reference cells for the CV): Monocyte" in s for s in said)
    print(annotation.table["predicted"].value_counts())
    assert "p_Monocyte" in annotation.table
    # one multi-class model knows the type of one cell too (no one-against-the-rest fit needed)
    multiclass = gsrcl.ReferenceModel.load(
        export_model(experiment, method="baseline-logreg", log=lambda _: None)
    )
    single = multiclass.cell_types.set_index("name").loc["Granulocyte"]
    assert single["cells"] == 1 and not single["validated"]
    granulocytes = full[np.flatnonzero(kinds == "Granulocyte")[1:40]].copy()
    table = gsrcl.annotate(granulocytes, multiclass, say=lambda _: None).table
    assert np.isfinite(table["p_Granulocyte"]).all()


def test_one_command_makes_a_reference_model_from_a_labelled_file(tmp_path):
    import scanpy as sc

    pbmc = sc.datasets.pbmc68k_reduced()
    cells = pbmc.raw.to_adata()
    cells.obs["cell_type"] = pbmc.obs["bulk_labels"].astype(str).to_numpy()
    cells.write_h5ad(tmp_path / "pbmc.h5ad")
    command = [sys.executable, "-m", "gsrcl", "reference", "--data", str(tmp_path / "pbmc.h5ad")]
    options = ["--labels", "cell_type", "--values", "log", "--out", str(tmp_path / "model")]
    small = ["--epochs", "4", "--folds", "2", "--results", str(tmp_path / "results")]
    kept = ["--keep-candidates"]
    done = subprocess.run(
        [*command, *options, *small, *kept], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "knows 10 cell types" in done.stdout and f"model in {tmp_path / 'model'}" in done.stdout
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    # "best" is the method of the run, baselines included, whose model labels the reference's
    # held-out cells best; every candidate's CV and held-out scores are kept
    selection = manifest["selection"]
    assert selection["rule"] == SELECTION_WITHIN + ENCODER_OPTIMISM
    table = selection["table"]
    baselines = {"baseline-svm", "baseline-svm-or-balanced", "baseline-logreg"}
    assert set(table) == baselines | {"baseline-logreg-scaled", "simclr-noise"}
    mean = {m: (v["held_out_accuracy"] + v["held_out_macro_f1"]) / 2 for m, v in table.items()}
    chosen = manifest["method"]
    assert chosen == max(mean, key=mean.__getitem__)
    assert all({"mcc", "held_out_accuracy", "held_out_macro_f1"} <= set(v) for v in table.values())
    assert len(manifest["cell_types"]) == 10
    truth = cells.obs["cell_type"].to_numpy()
    # a named method is exported from the same (finished) run
    named = ["--method", "baseline-svm", "--out", str(tmp_path / "named")]
    done = subprocess.run([*command, *options[:4], *named, *small], cwd=ROOT, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert gsrcl.ReferenceModel.load(tmp_path / "named").manifest["selection"]["rule"] == (
        SELECTION_NAMED
    )
    # the candidates were kept beside the chosen one; each kind labels cells: one multi-class
    # model on lognorm or on scaled genes, one per type
    for method in table:
        model = gsrcl.ReferenceModel.load(
            tmp_path / ("model" if method == chosen else f"model-{method}")
        )
        assert model.kind == ("encoder" if method == "simclr-noise" else "expression")
        annotation = gsrcl.annotate(cells, model, say=lambda _: None)
        predicted = annotation.table["predicted"].to_numpy()
        assert (predicted == truth).mean() > 0.7, model.manifest["method"]
        assert annotation.embedding.shape[0] == cells.n_obs
