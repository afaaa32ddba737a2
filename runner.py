"""Run a GsRCL experiment.

python3 runner.py [--config FILE] [--set section.field=value ...]
                  [--resume | --force | --rerun-failed | --check | --report-only]

The same as the `gsrcl` command's run / check / report (`gsrcl --help`).
"""

from __future__ import annotations

import argparse
import sys

from gsrcl import cli


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run a GsRCL experiment defined in a config file.")
    cli.config_options(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip finished jobs (the default)")
    mode.add_argument("--force", action="store_true", help="rerun every job")
    mode.add_argument("--rerun-failed", action="store_true", help="rerun only the failed jobs")
    mode.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild summary.csv, summary.md and report.html from existing results",
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="validate the config and every dataset, print the plan, train nothing",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.check:
        return cli.guarded(lambda: cli.check(args.config, args.overrides))
    if args.report_only:
        return cli.guarded(lambda: cli.report(args.config, args.overrides))
    mode = "force" if args.force else "failed" if args.rerun_failed else "resume"
    return cli.guarded(lambda: cli.run(args.config, args.overrides, mode))


if __name__ == "__main__":
    sys.exit(main())
