"""The labelling's constants, chosen on the references alone.

    python3 bench/constants.py              # writes docs/constants.md
    python3 bench/constants.py --quick      # fewer values of each constant (a reduced run)

The rule (docs/annotation.md, bench/crossbatch.py): a constant of the labelling is chosen on the
references alone, each reference's own donors held out in turn; the query figures of
bench/crossbatch.py judge what was chosen and never choose it.

References: the Baron human ones of bench/crossbatch.py (two donors each; its query donor is
never read). Baron mouse's reference is one mouse (mouse 2 is the query), with no donor of its
own to hold out, so it does not vote. Each donor of a reference is held out in turn and labelled
from the other one alone:

- the Unassigned multiplier's floor (`gsrcl.reference.rule.MIN_MULTIPLIER`) and the
  neighbourhood's principal components (`gsrcl.reference.neighbourhood.COMPONENTS`): the held-out
  donor's cells of the types the other donor has should lie inside their type's neighbourhood,
  the multiplier being what `rule.choose` makes of the other donor's own held-out ratios with
  that floor (a reference of one batch); and the held-out donor's cells of a type removed from
  the other donor (each type with at least NOVEL_CELLS cells in both, in turn, the space refitted
  without it) should lie outside the neighbourhood of the type a classifier fitted without it
  calls them (`logreg-scaled` at fixed settings). Judged as the rule is built
  (`gsrcl/reference/rule.py`: the neighbourhood has the Unassigned budget, 2 % of the cells of
  known types, because only it catches a type the reference never saw): a value is admissible
  when the held-out donors' cells of known types it leaves Unassigned stay within the budget on
  every reference; the admissible value that catches most of the removed types' cells is the
  choice. Floors are scored at the default components, components at the default floor.
- the logistic regression's balance floor (`gsrcl.config.presets.SCALED_LOGISTIC`): accuracy and
  macro-F1 of the most probable type on the held-out donors (bench/class_weights.py's measure and
  code), each floor searched over C, beside the default grid (floors 20 and 50, searched); the
  value with the highest mean of the two is the choice.

Each reference's figure is the mean over its held-out donors. The default is kept unless the
choice beats it on every reference (catches more, or scores higher); the page says which value
is chosen and whether the default agrees. `--page` rebuilds the page from the figures of the last
run (results/constants/).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from class_weights import held_out, spec_for  # noqa: E402
from crossbatch import cases, markdown  # noqa: E402

from gsrcl.data.preprocess import fit_features  # noqa: E402
from gsrcl.evaluate.balanced import BalancedLogisticRegression  # noqa: E402
from gsrcl.reference import neighbourhood, rule  # noqa: E402

PAGE = ROOT / "docs" / "constants.md"
FIGURES = ROOT / "results" / "constants"
NOVEL_CELLS = 10
FLOORS = [0.0, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0]  # 0: the held-out ratios' percentile alone
COMPONENTS = [10, 20, 30, 50, 75, 100]
BALANCE_FLOORS = [1, 5, 10, 20, 50, 100]
QUICK = {"floors": [0.0, 2.0, 3.0, 4.0], "components": [20, 50, 100], "balance": [1, 10, 20, 50]}
DEFAULT_GRID = "20 or 50, searched (default)"


@dataclass(frozen=True)
class Check:
    """The neighbourhood check of one held-out donor, at one number of components: the ratios
    of its cells of known types and of each removed type, and the other donor's own held-out
    ratios each multiplier is chosen from."""

    known: np.ndarray
    own: np.ndarray
    novel: dict[str, tuple[np.ndarray, np.ndarray]]  # type → (its cells' ratios, own ratios)

    def score(self, floor: float) -> dict:
        inside = float(np.mean(self.known <= _multiplier(self.own, floor)))
        caught = float(
            np.mean([np.mean(r > _multiplier(o, floor)) for r, o in self.novel.values()])
        )
        return {"inside": inside, "caught": caught, "score": (inside + caught) / 2}


def _multiplier(own: np.ndarray, floor: float) -> float:
    """The multiplier `rule.choose` sets from a one-batch reference's held-out ratios."""
    return rule.choose(np.ones(len(own)), own, floor=floor).multiplier


def _labels(cells: ad.AnnData) -> np.ndarray:
    return cells.obs["cell_type"].to_numpy(dtype=str)


def _regions(train: ad.AnnData, components: int):
    """The neighbourhoods of `train`'s types, and its cells' held-out ratios (each judged
    without itself)."""
    labels, types = _labels(train), sorted(set(_labels(train)))
    space = neighbourhood.fit_space(train, "counts", components)
    arrays = neighbourhood.fit(space, labels, types)
    regions = neighbourhood.Neighbourhoods(arrays, list(train.var_names), "counts")
    order = np.repeat(np.arange(len(types)), [int((labels == t).sum()) for t in types])
    return regions, types, regions.held_out_ratios(order, order)


def predicted_novel(train: ad.AnnData, held: ad.AnnData) -> dict[str, tuple[ad.AnnData, str]]:
    """For each type removed in turn from `train` (at least NOVEL_CELLS cells in both donors):
    the other donor, and the type a classifier fitted without it calls each held-out cell of it
    (`logreg-scaled` at fixed settings: what export would predict, whatever the constants)."""
    labels, truth = _labels(train), _labels(held)
    counts = pd.Series(labels).value_counts()
    removed = [t for t in sorted(set(labels)) if counts[t] >= NOVEL_CELLS]
    found = {}
    for name in [t for t in removed if (truth == t).sum() >= NOVEL_CELLS]:
        rest = train[labels != name].copy()
        features = fit_features("scaled", rest, "counts")
        model = BalancedLogisticRegression(C=0.1, balance_floor=20, max_iter=1000, tol=1e-3)
        model.fit(features.transform(rest), _labels(rest))
        cells = held[truth == name].copy()
        found[name] = (rest, cells, model.predict(features.transform(cells)))
    return found


def check(train: ad.AnnData, held: ad.AnnData, components: int, novel_cases: dict) -> Check:
    regions, types, own = _regions(train, components)
    truth = _labels(held)
    known = np.isin(truth, types)
    index = np.searchsorted(types, truth[known])
    ratios = regions.ratios(regions.coordinates(held[known]), index)
    novel = {}
    for name, (rest, cells, predicted) in novel_cases.items():
        without, kept, own_without = _regions(rest, components)
        xy = without.coordinates(cells)
        novel[name] = (without.ratios(xy, np.searchsorted(kept, predicted)), own_without)
    return Check(ratios, own, novel)


def donor_pairs(case) -> list[tuple[str, ad.AnnData, ad.AnnData]]:
    """(held-out donor, the other donor's cells, the held-out donor's cells) of a reference."""
    donors = case.reference.obs[case.batch].to_numpy(dtype=str)
    return [
        (donor, case.reference[donors != donor].copy(), case.reference[donors == donor].copy())
        for donor in sorted(set(donors))
    ]


def neighbourhood_rows(references, floors: list[float], components: list[int]) -> list[dict]:
    rows = []
    for case in references:
        for donor, train, held in donor_pairs(case):
            novel_cases = predicted_novel(train, held)
            for n in components:
                result = check(train, held, n, novel_cases)
                values = floors if n == neighbourhood.COMPONENTS else [rule.MIN_MULTIPLIER]
                for floor in values:
                    row = {"reference": case.name, "held out": donor, "components": n}
                    rows.append({**row, "floor": floor, **result.score(floor)})
                    print(f"{case.name} {donor} {n:3} {floor:.1f} {rows[-1]['score']:.3f}")
    return rows


def balance_rows(references, floors: list[int]) -> list[dict]:
    specs = {f"floor {f}": spec_for({"balance_floor": f}) for f in floors}
    specs[DEFAULT_GRID] = spec_for({})
    rows = []
    for case in references:
        for name, (accuracy, macro) in held_out(case.reference, case.batch, specs).items():
            score = (accuracy + macro) / 2
            rows.append(
                {"reference": case.name, "balance floor": name, "accuracy": accuracy}
                | {"macro-F1": macro, "score": score}
            )
            print(f"{case.name} {name} {score:.3f}", flush=True)
    return rows


def _verdict(best, default, beats: bool, what: str) -> str:
    if best == default:
        return f"the default ({default}) is the choice: it agrees with the reference-only choice"
    if beats:
        return (
            f"{best} {what} than the default ({default}) on every reference: the reference-only "
            "choice is clear and differs from the default"
        )
    return (
        f"{best} {what} on the mean but not on every reference: no clear case against the "
        f"default ({default}), which stays"
    )


def balance_choice(rows: pd.DataFrame, default) -> tuple[pd.DataFrame, str]:
    """Each value's mean of accuracy and macro-F1 per reference and over them; the verdict."""
    table = rows.pivot_table(index="balance floor", columns="reference", values="score", sort=False)
    references = list(table.columns)
    table["mean"] = table.mean(axis=1)
    best = table["mean"].idxmax()
    beats = bool((table.loc[best, references] > table.loc[default, references]).all())
    return table, _verdict(best, default, beats, "scores higher")


def neighbourhood_choice(rows: pd.DataFrame, column: str, default) -> tuple[pd.DataFrame, str]:
    """Per value and reference, the known types' cells Unassigned and the removed types' cells
    caught; the admissible value (within the budget on every reference) that catches most."""
    rows = rows.assign(unassigned=1 - rows["inside"])
    means = rows.groupby([column, "reference"], sort=False)[["unassigned", "caught"]].mean()
    unassigned, caught = means["unassigned"].unstack(), means["caught"].unstack()
    admissible = (unassigned <= rule.BUDGET).all(axis=1)
    table = pd.concat(
        [unassigned.add_suffix(": known Unassigned"), caught.add_suffix(": new caught")], axis=1
    )
    table["mean caught"] = caught.mean(axis=1)
    table["within the budget"] = admissible.map({True: "yes", False: "no"})
    # what weighing a known type's cell and a new type's cell alike would choose, for the page
    table["equal weight"] = ((1 - unassigned + caught) / 2).mean(axis=1)
    if not admissible.any():
        return table, f"no value keeps the budget on every reference; the default ({default}) stays"
    best = table.loc[admissible, "mean caught"].idxmax()
    table, verdict = _budget_verdict(table, admissible, best, default, caught)
    equal = table["equal weight"].idxmax()
    if equal != best:
        verdict += (
            f" (weighing a known type's cell and a new type's cell alike, the \"equal weight\" "
            f"column, would choose {equal}, spending more than the budget)"
        )
    return table, verdict


def _budget_verdict(table, admissible, best, default, caught) -> tuple[pd.DataFrame, str]:
    if not admissible[default]:
        return table, (
            f"the default ({default}) leaves more than the budget Unassigned on some reference; "
            f"{best} is the choice and differs from the default"
        )
    beats = bool((caught.loc[best] > caught.loc[default]).all())
    return table, _verdict(best, default, beats, "catches more")


def page(neighbourhoods: pd.DataFrame, balance: pd.DataFrame, minutes: float, quick: bool) -> str:
    at_components = neighbourhoods[neighbourhoods["components"] == neighbourhood.COMPONENTS]
    at_floor = neighbourhoods[neighbourhoods["floor"] == rule.MIN_MULTIPLIER]
    sections = [
        (
            "The Unassigned multiplier's floor",
            *neighbourhood_choice(at_components, "floor", rule.MIN_MULTIPLIER),
        ),
        (
            "The neighbourhood's components",
            *neighbourhood_choice(at_floor, "components", neighbourhood.COMPONENTS),
        ),
        ("The logistic regression's balance floor", *balance_choice(balance, DEFAULT_GRID)),
    ]
    reduced = " A reduced run (`--quick`): fewer values of each constant." if quick else ""
    lines = [
        "# The labelling's constants, chosen on the references alone",
        "",
        f"Written by `python3 bench/constants.py{' --quick' if quick else ''}` ({minutes:.0f} "
        f"min on 2 CPU cores; how and why: its docstring).{reduced} Each Baron human reference "
        "of bench/crossbatch.py (two donors) with each of its donors held out in turn and "
        "labelled from the other; no query cell of bench/crossbatch.py is read. For the floor "
        "and the components: the held-out donor's cells of known types left Unassigned by the "
        "neighbourhood (the budget: at most 2 % on every reference) and of a removed type caught "
        "outside it; for the balance floor, the mean of accuracy and macro-F1 of the most "
        "probable type. Each reference is named by its bench/crossbatch.py query donor, as in "
        "docs/annotation.md; its figure is the mean over its two held-out donors.",
        "",
    ]
    for title, table, verdict in sections:
        lines += [f"## {title}", "", f"Verdict: {verdict}.", "", markdown(table.round(3)), ""]
    detail = neighbourhoods.set_index("reference").round(3)
    lines += ["## Every figure of the neighbourhood check", "", markdown(detail), ""]
    lines += [
        "## Every figure of the balance floor",
        "",
        markdown(balance.set_index("reference").round(3)),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    floors, components, balance = (
        (QUICK["floors"], QUICK["components"], QUICK["balance"])
        if quick
        else (FLOORS, COMPONENTS, BALANCE_FLOORS)
    )
    if "--page" in sys.argv[1:]:
        saved = {
            name: pd.read_csv(FIGURES / f"{name}.csv") for name in ("neighbourhood", "balance")
        }
        minutes = float((FIGURES / "minutes.txt").read_text())
        text = page(saved["neighbourhood"], saved["balance"], minutes, quick)
    else:
        start = time.perf_counter()
        references = [case for case in cases() if case.batch is not None]
        FIGURES.mkdir(parents=True, exist_ok=True)  # each part's figures kept as soon as made
        neighbourhoods = pd.DataFrame(neighbourhood_rows(references, floors, components))
        neighbourhoods.to_csv(FIGURES / "neighbourhood.csv", index=False)
        weights = pd.DataFrame(balance_rows(references, balance))
        weights.to_csv(FIGURES / "balance.csv", index=False)
        minutes = (time.perf_counter() - start) / 60
        (FIGURES / "minutes.txt").write_text(f"{minutes:.1f}")
        text = page(neighbourhoods, weights, minutes, quick)
    PAGE.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
