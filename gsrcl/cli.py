"""The `gsrcl` command, `python3 -m gsrcl` and `python3 runner.py`: thin wrappers over the API.

gsrcl run      [--config FILE] [--set K=V ...] [--force | --rerun-failed]
gsrcl check    [--config FILE] [--set K=V ...]
gsrcl report   [--config FILE] [--set K=V ...]
gsrcl export   [--config FILE] [--set K=V ...] [--dataset D] [--method M] [--out DIR]
gsrcl annotate --model DIR --query FILE --out DIR [--threshold P] ...
gsrcl reference --data FILE --labels COLUMN --out DIR [--batch COLUMN] [--method best]
                [--values counts|log]
gsrcl --version

Every failure the user can act on ends in one `error:` line and a non-zero exit status, never a
traceback: 2 for a mistake in the config or the input, 74 for a file that cannot be written or
read, 130 / 143 for Ctrl-C / SIGTERM (finished jobs are kept).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from gsrcl import stopping
from gsrcl.errors import Stopped, UserError
from gsrcl.files import describe_os_error
from gsrcl.runner import startup


def emit(line: str) -> None:
    """Progress to stdout; errors and warnings to stderr."""
    print(line, file=sys.stderr if line.lstrip().startswith(("error:", "warning:")) else sys.stdout)


def guarded(command: Callable[[], int]) -> int:
    """Run a command, turning every failure a user can act on into one line and a status.
    Ctrl-C and SIGTERM stop it within seconds, even inside a native call (`gsrcl.stopping`)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with stopping.handled():
        try:
            return command()
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except OSError as error:  # disk full, permission denied, a file vanished
            print(f"error: {describe_os_error(error)} (finished jobs are kept)", file=sys.stderr)
            return 74  # EX_IOERR
        except KeyboardInterrupt:
            return stopping.stopped(signal.SIGINT)
        except Stopped:
            return stopping.stopped(signal.SIGTERM)


# ---- the commands ----


def run(config: str, overrides: list[str], mode: str = "resume") -> int:
    startup.import_worker_modules()  # first, and timed: the estimate counts a worker's start
    from gsrcl.config.configfile import load_experiment
    from gsrcl.runner.pipeline import run_experiment

    return run_experiment(load_experiment(config, overrides), mode=mode, log=emit)


def check(config: str, overrides: list[str]) -> int:
    startup.import_worker_modules()
    from gsrcl.config.configfile import load_experiment
    from gsrcl.runner.pipeline import check as check_plan

    return check_plan(load_experiment(config, overrides), log=emit)


def report(config: str, overrides: list[str]) -> int:
    from gsrcl.config.configfile import load_experiment
    from gsrcl.runner.pipeline import report_only

    return report_only(load_experiment(config, overrides), log=emit)


def export(args: argparse.Namespace) -> int:
    from gsrcl.config.configfile import load_experiment
    from gsrcl.reference.export import export_model
    from gsrcl.runner.run_folder import RunFolder

    experiment = load_experiment(args.config, args.overrides)
    with RunFolder.of(experiment).lock():  # no runner may change the jobs meanwhile
        folder = export_model(
            experiment,
            args.dataset,
            args.method,
            args.out,
            log=emit,
            keep_candidates=args.keep_candidates,
        )
    emit(f"model in {folder}")
    return 0


def reference(args: argparse.Namespace) -> int:
    startup.import_worker_modules()
    from gsrcl.api import build_reference, reference_experiment
    from gsrcl.reference.model import check_replaceable
    from gsrcl.runner import pipeline

    options = dict(
        values=args.values,
        method=args.method,
        results_dir=args.results,
        epochs=args.epochs,
        steps=args.steps,
        folds=args.folds,
        seed=args.seed,
        batch=args.batch,
        keep_candidates=args.keep_candidates,
    )
    if args.check:
        check_replaceable(args.out)  # as the real command would, before planning
        experiment = reference_experiment(args.data, args.labels, args.out, **options)
        return pipeline.check(experiment, emit)
    model = build_reference(args.data, args.labels, args.out, log=emit, **options)
    emit(f"model in {model.folder}")
    return 0


def annotate(args: argparse.Namespace) -> int:
    from gsrcl.reference.annotation import Query, annotate_file

    if args.chunk_size < 1:
        raise UserError("--chunk-size must be at least 1")
    query = Query(args.query, args.use_raw, args.layer, args.transpose)
    annotate_file(
        args.model, query, args.out, args.threshold, args.chunk_size, not args.no_umap, say=emit
    )
    return 0


# ---- the parser ----


def version() -> str:
    try:
        return metadata.version("gsrcl-runner")
    except metadata.PackageNotFoundError:  # run from a checkout that was not installed
        return "not installed (run from a checkout)"


def keep_candidates_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-candidates",
        action="store_true",
        help="with 'best', also write every other method's model built to choose it (OUT-<method>)",
    )


def config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.py", help="config file (default: config.py)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set contrastive.epochs=20 (repeatable)",
    )


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="gsrcl", description="Cell-type identification with GsRCL, run and compared fairly."
    )
    main.add_argument("--version", action="version", version=f"gsrcl {version()}")
    commands = main.add_subparsers(dest="command", required=True)

    run_parser = commands.add_parser("run", help="run (or resume) the experiment of a config")
    config_options(run_parser)
    mode = run_parser.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true", help="rerun every job")
    mode.add_argument(
        "--rerun-failed", action="store_true", help="rerun the jobs that are not done"
    )
    config_options(commands.add_parser("check", help="check the config and data, print the plan"))
    config_options(commands.add_parser("report", help="rebuild summary and report from results"))

    export_parser = commands.add_parser(
        "export", help="write a reference model from a finished run, for `annotate`"
    )
    config_options(export_parser)
    export_parser.add_argument("--dataset", help="the dataset (needed when the config has several)")
    export_parser.add_argument(
        "--method",
        help="a method of the run (baselines too), or 'best': the one whose model labels the "
        "reference's held-out cells best (config: export.method)",
    )
    export_parser.add_argument(
        "--out", type=Path, help="default results/<exp>/models/<dataset>-<method>"
    )
    keep_candidates_option(export_parser)

    reference_parser = commands.add_parser(
        "reference",
        help="train and export a reference model from a labelled file, no config",
        description="Train and export a reference model from a labelled file. How long: on 2 "
        "CPU cores, about 9 min for 1 836 cells x 20 125 genes (Baron human, three donors; "
        "docs/reference.md), growing with cells x genes (SimCLR's training) and cells squared "
        "(the SVMs; past evaluation.exact_max_cells approximate, their search on a sample: "
        "docs/scale.md); the command prints its own estimate, export included, before it "
        "starts.",
    )
    reference_parser.add_argument("--data", required=True, help="labelled cells (.h5ad, ...)")
    reference_parser.add_argument("--labels", required=True, help="the obs column of cell types")
    reference_parser.add_argument("--out", required=True, type=Path, help="the model folder")
    reference_parser.add_argument(
        "--values", choices=["counts", "log"], default="counts", help="raw counts (default) or log"
    )
    reference_parser.add_argument(
        "--batch",
        help="the obs column of each cell's batch (donor, sample): the Unassigned rule and 'best' "
        "are then judged on each batch held out, as a new batch will be",
    )
    reference_parser.add_argument("--method", default="best", help="a method's name, or 'best'")
    reference_parser.add_argument("--results", default="results", help="where the run's results go")
    reference_parser.add_argument("--epochs", type=int, default=100, help="SimCLR epochs (100)")
    reference_parser.add_argument(
        "--steps",
        type=int,
        help="SimCLR's budget of batches (default: as many as --epochs): past one batch of "
        "8192 training cells, as many whole epochs as fit in it",
    )
    reference_parser.add_argument(
        "--folds", type=int, default=None, help="CV folds (5; 2 past 50 000 cells)"
    )
    reference_parser.add_argument("--seed", type=int, default=0)
    reference_parser.add_argument(
        "--check", action="store_true", help="plan and estimate only (nothing trained or written)"
    )
    keep_candidates_option(reference_parser)

    annotate_parser = commands.add_parser(
        "annotate",
        help="label query cells with a model",
        description="Label query cells with a reference model: predictions.csv, query.h5ad (the "
        "query with its labels) and umap.png in --out. An .h5ad or .zarr query is read a chunk "
        "at a time; past 100 000 cells the results are compact: labels.h5ad holds the labels "
        "and embedding without the expression, and the UMAP shows a random 50 000 cells.",
    )
    annotate_parser.add_argument("--model", required=True, help="a folder written by `export`")
    annotate_parser.add_argument(
        "--query", required=True, help="cells to label (.h5ad, .loom, .zarr, .h5, CSV, ...)"
    )
    annotate_parser.add_argument("--out", required=True, type=Path, help="folder for the results")
    annotate_parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="a cell whose best probability is below this is 'Unassigned' (default: the "
        "model's, chosen at export so that at most 2%% of held-out reference cells are)",
    )
    annotate_parser.add_argument("--use-raw", action="store_true", help=".h5ad: read .raw")
    annotate_parser.add_argument("--layer", help=".h5ad: read this layer instead of X")
    annotate_parser.add_argument(
        "--transpose", action="store_true", help="CSV/TSV with genes as rows"
    )
    annotate_parser.add_argument(
        "--chunk-size",
        type=int,
        default=2048,
        help="cells labelled at a time; an .h5ad or .zarr query is read a chunk at a time too",
    )
    annotate_parser.add_argument("--no-umap", action="store_true", help="skip the UMAP figure")
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    commands = {
        "run": lambda: run(
            args.config,
            args.overrides,
            "force" if args.force else "failed" if args.rerun_failed else "resume",
        ),
        "check": lambda: check(args.config, args.overrides),
        "report": lambda: report(args.config, args.overrides),
        "export": lambda: export(args),
        "annotate": lambda: annotate(args),
        "reference": lambda: reference(args),
    }
    return guarded(commands[args.command])
