"""Run a GsRCL experiment.

python3 runner.py [--config FILE] [--set section.field=value ...]
                  [--resume | --force | --rerun-failed | --check | --report-only]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from gsrcl.errors import Stopped, UserError
from gsrcl.files import describe_os_error


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run a GsRCL experiment defined in a config file.")
    parser.add_argument("--config", default="config.py", help="config file (default: config.py)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set contrastive.epochs=20 (repeatable)",
    )
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


def emit(line: str) -> None:
    """Progress to stdout; errors and warnings to stderr."""
    print(line, file=sys.stderr if line.lstrip().startswith(("error:", "warning:")) else sys.stdout)


def _stop(signum: int, frame) -> None:
    raise Stopped()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, _stop)
    try:
        from gsrcl.configfile import load_experiment
        from gsrcl.pipeline import check, report_only, run_experiment

        experiment = load_experiment(args.config, args.overrides)
        if args.check:
            return check(experiment, log=emit)
        if args.report_only:
            return report_only(experiment, log=emit)
        mode = "force" if args.force else "failed" if args.rerun_failed else "resume"
        return run_experiment(experiment, mode=mode, log=emit)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # disk full, permission denied, a file vanished
        print(f"error: {describe_os_error(error)} (finished jobs are kept)", file=sys.stderr)
        return 74  # EX_IOERR
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): finished jobs are kept; rerun to continue", file=sys.stderr)
        return 130
    except Stopped:
        print("stopped (SIGTERM): finished jobs are kept; rerun to continue", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
