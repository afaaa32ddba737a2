"""`python3 -m gsrcl export ...` and `python3 -m gsrcl annotate ...`.

python3 -m gsrcl export --config config.py [--dataset D] [--method M] [--out DIR]
python3 -m gsrcl annotate --model DIR --query FILE --out DIR [--threshold 0.5]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gsrcl.errors import UserError
from gsrcl.files import describe_os_error


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m gsrcl")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser(
        "export", help="write a reference model from a finished run, for `annotate`"
    )
    export.add_argument("--config", default="config.py", help="the run's config (config.py)")
    export.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    export.add_argument("--dataset", help="the dataset (needed when the config has several)")
    export.add_argument("--method", help="a contrastive method, or 'best' (config: export.method)")
    export.add_argument("--out", type=Path, help="default results/<exp>/models/<dataset>-<method>")

    annotate = commands.add_parser("annotate", help="label query cells with a reference model")
    annotate.add_argument("--model", required=True, help="a folder written by `export`")
    annotate.add_argument("--query", required=True, help="cells to label (.h5ad, .h5, CSV, ...)")
    annotate.add_argument("--out", required=True, type=Path, help="folder for the results")
    annotate.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="a cell whose best probability is below this is 'Unassigned' (default 0.5)",
    )
    annotate.add_argument("--use-raw", action="store_true", help=".h5ad: read .raw")
    annotate.add_argument("--layer", help=".h5ad: read this layer instead of X")
    annotate.add_argument("--transpose", action="store_true", help="CSV/TSV with genes as rows")
    annotate.add_argument("--chunk-size", type=int, default=2048, help="cells per chunk")
    annotate.add_argument("--no-umap", action="store_true", help="skip the UMAP figure")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "export":
            from gsrcl.configfile import load_experiment
            from gsrcl.export import export_model
            from gsrcl.run_folder import RunFolder

            experiment = load_experiment(args.config, args.overrides)
            with RunFolder.of(experiment).lock():  # no runner may change the jobs meanwhile
                folder = export_model(experiment, args.dataset, args.method, args.out)
            print(f"model in {folder}")
        else:
            from gsrcl.annotate import Query, annotate

            if args.chunk_size < 1:
                raise UserError("--chunk-size must be at least 1")
            query = Query(args.query, args.use_raw, args.layer, args.transpose)
            annotate(args.model, query, args.out, args.threshold, args.chunk_size, not args.no_umap)
        return 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # disk full, permission denied, a file vanished
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 74


if __name__ == "__main__":
    sys.exit(main())
