"""Labelling a new donor: every method, "best" and CellTypist 1.7.1, on real batch shifts.

    python3 bench/crossbatch.py            # every case (about an hour on 2 CPU cores)
    python3 bench/crossbatch.py mouse      # cases whose name starts so; docs/annotation.md is
                                           # written only when every case ran (the page so far
                                           # is in results/crossbatch/annotation.md)

Cases (`../shared/data`):
- mouse: Baron Mouse, reference mouse 1, query mouse 2 (a reference of one batch: the Unassigned
  rule is calibrated within it);
- human1, human2, human3: Baron human, that donor the query and the other two the reference,
  with their batch column (`batch="batch"`: the rule and "best" judged leave-one-donor-out);
- unseen: Tabula Muris immune, a reference of 70 % of the cells of every type but granulocytes;
  the query is the other 30 % and every granulocyte (a type the reference never saw).

Each reference is made with `gsrcl.build_reference` (the runner's jobs, CPU-sized settings;
results under results/crossbatch/<case>/, a rerun resumes); every method of its run is exported
(the models built to choose "best", kept: `keep_candidates=True`)
and labels the query with the defaults of `gsrcl.annotate`. CellTypist runs in a venv of its own
made here (it needs scikit-learn < 1.8), trained on the same reference, with its defaults and
with `feature_selection=True` (which draws from numpy's global random state: run with seeds
0-4, each figure the median over them, the draws shown); where it cannot be installed its columns
are left out, with a note.
Per model: accuracy (Unassigned counts as wrong, but is right for a type the model never saw),
macro-F1 over the query's types, both for the most probable type too, Unassigned among cells of
types the model knows, types known, recall per type, and for the unseen case the share of
granulocytes Unassigned.

The rule for constants: these query figures judge the defaults and never set them. Every
constant of the labelling (the Unassigned multiplier's floor, the neighbourhood's principal
components, the logistic regression's balance floors, and any added later) is chosen on the
references alone, each reference's own donors held out in turn (bench/constants.py,
docs/constants.md; bench/class_weights.py), never on a query of this bench.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gsrcl  # noqa: E402
from gsrcl.reference.annotation import UNASSIGNED  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FOLDER = ROOT / "results" / "crossbatch"
CELLTYPIST = "celltypist==1.7.1"
UNSEEN = "Granulocyte"
TARGET_ACCURACY = {"mouse": 0.955}
RULE = (
    "The query figures judge the defaults and never set them: every constant of the labelling "
    "(the Unassigned multiplier's floor, the neighbourhood's principal components, the logistic "
    "regression's balance floors, and any added later) is chosen on the references alone, each "
    "reference's own donors held out in turn (`python3 bench/constants.py`, docs/constants.md; "
    "bench/class_weights.py), never on a query of this bench."
)


@dataclass
class Case:
    name: str
    reference: ad.AnnData
    query: ad.AnnData
    batch: str | None
    about: str


def _read(name: str) -> ad.AnnData:
    cells = ad.read_h5ad(DATA / name)
    cells.obs_names_make_unique()
    cells.obs["cell_type"] = cells.obs["cell_type"].astype(str)
    return cells


def cases() -> list[Case]:
    mouse = _read("baron_mouse.h5ad")
    by_mouse = mouse.obs["batch"].astype(str).to_numpy()
    found = [
        Case(
            "mouse",
            mouse[by_mouse == "mouse1"].copy(),
            mouse[by_mouse == "mouse2"].copy(),
            None,
            "Baron Mouse: reference mouse 1, query mouse 2",
        )
    ]
    human = _read("baron_human_3donors.h5ad")
    donors = human.obs["batch"].astype(str).to_numpy()
    for donor in sorted(set(donors)):
        others = " + ".join(sorted(set(donors) - {donor}))
        found.append(
            Case(
                donor,
                human[donors != donor].copy(),
                human[donors == donor].copy(),
                "batch",
                f"Baron human: reference {others} (batch column), query {donor}",
            )
        )
    immune = _read("tm_immune.h5ad")
    rng = np.random.default_rng(0)
    known = (immune.obs["cell_type"] != UNSEEN).to_numpy()
    in_reference = known & (rng.random(immune.n_obs) < 0.7)
    found.append(
        Case(
            "unseen",
            immune[in_reference].copy(),
            immune[~in_reference].copy(),
            None,
            f"Tabula Muris immune: reference 70 % of the cells but no {UNSEEN}; query the rest "
            f"and every {UNSEEN}",
        )
    )
    return found


def scores(truth: np.ndarray, predicted: np.ndarray, likeliest: np.ndarray, known: set) -> dict:
    """A model's figures on the query: a cell of a type the model knows is right with that type
    (Unassigned counts as wrong), a cell of a type it never saw is right as Unassigned."""
    of_known = np.isin(truth, list(known))
    types = sorted(set(truth) & known)
    right = np.where(of_known, predicted == truth, predicted == UNASSIGNED)
    row = {
        "accuracy": float(right.mean()),
        "macro-F1": _macro_f1(truth, predicted, types),
        "accuracy, most probable type": float((likeliest == truth).mean()),
        "macro-F1, most probable type": _macro_f1(truth, likeliest, types),
        "Unassigned (known types)": float((predicted[of_known] == UNASSIGNED).mean()),
    }
    if UNSEEN in truth and UNSEEN not in known:
        row[f"{UNSEEN} Unassigned (unseen type)"] = float(
            (predicted[truth == UNSEEN] == UNASSIGNED).mean()
        )
    for cell_type in sorted(set(truth), key=lambda t: -(truth == t).sum()):
        cells = truth == cell_type
        row[f"recall {cell_type} ({cells.sum()})"] = float((predicted[cells] == cell_type).mean())
    return row


def _macro_f1(truth: np.ndarray, predicted: np.ndarray, types: list[str]) -> float:
    """Macro-F1 over the query's types the reference has (an unseen type has no right label)."""
    return float(f1_score(truth, predicted, labels=types, average="macro", zero_division=0))


def gsrcl_rows(case: Case, folder: Path) -> tuple[dict, dict, str, float]:
    """Every method's model and "best" on the query; their rules; the chosen method; minutes."""
    start = time.perf_counter()
    best = gsrcl.build_reference(
        folder / "reference.h5ad",
        "cell_type",
        folder / "model",
        results_dir=folder,
        batch=case.batch,
        keep_candidates=True,  # each method's model, built to choose "best", is labelled with too
    )
    minutes = (time.perf_counter() - start) / 60
    chosen = best.manifest["method"]
    truth = case.query.obs["cell_type"].to_numpy(dtype=str)
    unlabelled = case.query.copy()
    unlabelled.obs = unlabelled.obs[[]]
    rows, rules = {}, {}
    for method in best.manifest["selection"]["table"]:
        kept = folder / f"model-{method}"
        exported = best if method == chosen else gsrcl.ReferenceModel.load(kept)
        table = gsrcl.annotate(unlabelled, exported, say=lambda _: None).table
        known = set(exported.cell_types["name"])
        label = f"{method} = best" if method == chosen else method
        rows[label] = scores(
            truth, table["predicted"].to_numpy(), table["most_probable"].to_numpy(), known
        )
        rows[label]["types known"] = _types_known(known, case.reference)
        rules[label] = exported.manifest["unassigned"]
    return rows, rules, best.manifest["selection"], minutes


def _types_known(known: set, reference: ad.AnnData) -> str:
    counts = reference.obs["cell_type"].value_counts()
    single = [t for t in counts.index if counts[t] < 2 and t not in known]
    note = f" ({', '.join(single)}: 1 reference cell)" if single else ""
    return f"{len(known)} / {len(counts)}{note}"


def celltypist_venv() -> Path | None:
    """A venv holding CellTypist 1.7.1 (made once), or None where it cannot be installed."""
    venv = FOLDER / "celltypist-venv"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", CELLTYPIST, "scikit-learn<1.8"],
            check=True,
        )
    except (subprocess.CalledProcessError, OSError) as error:
        print(f"CellTypist cannot be installed here ({error}); its columns are left out")
        return None
    return python


def celltypist_rows(case: Case, folder: Path, python: Path) -> dict:
    out = folder / "celltypist.csv"
    subprocess.run(
        [
            str(python),
            str(ROOT / "bench" / "celltypist_labels.py"),
            str(folder / "reference.h5ad"),
            str(folder / "query.h5ad"),
            str(out),
        ],
        check=True,
    )
    labels = pd.read_csv(out, index_col=0)
    truth = case.query.obs["cell_type"].to_numpy(dtype=str)
    known = set(case.reference.obs["cell_type"])
    runs: dict[str, list[dict]] = {}
    for column in labels.columns:  # "<setting>, seed <n>"
        predicted = labels[column].to_numpy(dtype=str)
        runs.setdefault(column.split(", seed")[0], []).append(
            scores(truth, predicted, predicted, known)
        )
    return {
        _celltypist_label(setting, len(seeded)): {
            **_median_row(seeded),
            "types known": _types_known(known, case.reference),
        }
        for setting, seeded in runs.items()
    }


def _celltypist_label(setting: str, seeds: int) -> str:
    return f"CellTypist 1.7.1 ({setting}" + (f", median of {seeds} seeds)" if seeds > 1 else ")")


def _median_row(seeded: list[dict]) -> dict:
    """Each figure's median over a setting's seeds; with several seeds, also the draws of the
    two headline figures (CellTypist's unseeded run is one of them, chosen by chance)."""
    row = {key: float(np.median([run[key] for run in seeded])) for key in seeded[0]}
    if len(seeded) > 1:
        for metric in ("accuracy", "macro-F1"):
            row[f"{metric} per seed"] = " / ".join(f"{run[metric]:.3f}" for run in seeded)
    return row


def run_case(case: Case, python: Path | None) -> dict:
    folder = FOLDER / case.name
    folder.mkdir(parents=True, exist_ok=True)
    case.reference.write_h5ad(folder / "reference.h5ad")
    case.query.write_h5ad(folder / "query.h5ad")
    start = time.perf_counter()
    rows, rules, selection, minutes = gsrcl_rows(case, folder)
    if python is not None:
        rows.update(celltypist_rows(case, folder, python))
    whole = (time.perf_counter() - start) / 60
    print(f"{case.name}: {whole:.1f} min")
    return {
        "case": case,
        "rows": rows,
        "rules": rules,
        "selection": selection,
        "minutes": (minutes, whole),
    }


def markdown(table: pd.DataFrame) -> str:
    """A pipe table, numbers to three decimals, a figure a row does not have left blank."""
    text = lambda v: "" if pd.isna(v) else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| | " + " | ".join(table.columns) + " |", "|---" * (len(table.columns) + 1) + "|"]
    lines += [f"| {i} | " + " | ".join(text(v) for v in row) + " |" for i, row in table.iterrows()]
    return "\n".join(lines)


def targets(results: list[dict]) -> pd.DataFrame:
    """The issue's targets for "best" with its defaults, each case against CellTypist's best."""
    lines = {}
    for result in results:
        name, rows = result["case"].name, result["rows"]
        best = next(row for label, row in rows.items() if label.endswith("= best"))
        celltypist = [row for label, row in rows.items() if label.startswith("CellTypist")]
        if celltypist:
            for metric in ("accuracy", "macro-F1"):
                bar = max(row[metric] for row in celltypist)
                lines[f"{name}: {metric} ≥ CellTypist's best setting ({bar:.3f})"] = _line(
                    best[metric], best[metric] >= bar
                )
        if name in TARGET_ACCURACY:
            bar = TARGET_ACCURACY[name]
            lines[f"{name}: accuracy ≥ {bar}"] = _line(best["accuracy"], best["accuracy"] >= bar)
        share = best["Unassigned (known types)"]
        limit = 0.05 if name == "unseen" else 0.02
        lines[f"{name}: Unassigned among known types ≤ {limit}"] = _line(share, share <= limit)
        known, total = best["types known"].split(" (")[0].split(" / ")
        lines[f"{name}: every type of the reference known"] = (
            best["types known"],
            "yes" if known == total else "no",
        )
        unseen = best.get(f"{UNSEEN} Unassigned (unseen type)")
        if unseen is not None:
            lines[f"{name}: {UNSEEN} (never seen) Unassigned ≥ 0.8"] = _line(unseen, unseen >= 0.8)
    return pd.DataFrame(lines, index=["reached", "met"]).T


def _line(value: float, met: bool) -> tuple[float, str]:
    return value, "yes" if met else "no"


def rules_table(rules: dict[str, dict]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            label: {
                "threshold": rule["threshold"],
                "multiplier": rule["multiplier"],
                **{f"held-out {k}": v for k, v in rule["held_out"].items()},
            }
            for label, rule in rules.items()
        }
    ).T


def page(results: list[dict]) -> str:
    total = sum(r["minutes"][1] for r in results)
    lines = [
        "# Labelling a new donor",
        "",
        f"Produced by `python3 bench/crossbatch.py` ({total:.0f} min on 2 CPU cores). Each "
        "reference is made with `gsrcl.build_reference` (the runner's jobs, CPU-sized settings: "
        'SimCLR + Gaussian noise beside the baselines, 5-fold CV; `batch="batch"` where the '
        "reference has several donors) and every method of its run is exported and labels the "
        "query with the defaults of `gsrcl.annotate`; CellTypist 1.7.1 is trained on the same "
        "reference (in a venv of its own) with its defaults and with `feature_selection=True`; the "
        "latter ranks genes with an unseeded SGD fit, so it is run with numpy seeds 0-4 and each "
        "of its figures is the median over them (the draws beside it), and \"CellTypist's best "
        'setting" is the better of the defaults and that median. '
        "Accuracy counts Unassigned as wrong; macro-F1 is over the query's types the reference "
        'has; "most probable type" is the label before the Unassigned rule (`most_probable` in '
        "predictions.csv). CellTypist's best-match mode never says Unassigned.",
        "",
        RULE,
        "",
        '## Against the targets ("best", defaults)',
        "",
        markdown(targets(results)),
        "",
    ]
    for result in results:
        case = result["case"]
        reference_minutes, whole = result["minutes"]
        selection = result["selection"]
        lines += [
            f"## {case.name}: {case.about}",
            "",
            f"Reference {case.reference.n_obs} cells, query {case.query.n_obs} cells; "
            f'{whole:.0f} min, of which the reference run and the export of "best" '
            f"{reference_minutes:.0f} min.",
            "",
            markdown(pd.DataFrame(result["rows"])),
            "",
            f'"best" = {selection["chosen"]}: {selection["rule"]}.',
            "",
            markdown(pd.DataFrame(selection["table"]).T),
            "",
            "The Unassigned rule of each model (`gsrcl/reference/rule.py`), and what it does to "
            "the reference's held-out cells; calibrated on "
            + next(iter(result["rules"].values()))["calibrated_on"]
            + ":",
            "",
            markdown(rules_table(result["rules"])),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    wanted = sys.argv[1:]
    chosen = [c for c in cases() if not wanted or c.name.startswith(tuple(wanted))]
    FOLDER.mkdir(parents=True, exist_ok=True)
    python = celltypist_venv()
    results = []
    for case in chosen:  # the page so far after each case: a stopped run keeps its figures
        results.append(run_case(case, python))
        text = page(results)
        (FOLDER / "annotation.md").write_text(text)
    print(text)
    if not wanted:
        (ROOT / "docs" / "annotation.md").write_text(text)


if __name__ == "__main__":
    main()
