"""``paramcorrupt report``: a Markdown report with PNG figures from results JSONL files."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "report",
        help="write a Markdown report with figures (Table 1, heatmaps, curves, Theorem 1) from results files",
        description="Read one or more results files (probe's, the demo's; rows are pooled) and write OUT/report.md "
        "with its figures in OUT/figures: Table 1 (random vs gradient-based corruption), heatmaps by group and "
        "eps, curves along eps, Theorem 1 against the random trials, and the hardware faults' tables. Every row "
        "read is shown, or named in the report's Notes with the reason; figures an earlier report left in OUT "
        "are deleted.",
    )
    parser.add_argument(
        "results",
        type=Path,
        nargs="+",
        metavar="RESULTS.jsonl",
        help="results file(s) of a sweep or of the demo; rows are pooled",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: report/ next to the first results file)",
    )
    parser.add_argument("--title", default=None, help="heading of the report")
    parser.set_defaults(run=run)


def _verify(results: list[Path]) -> None:
    """Refuse a sweep's results file that a resume would refuse (a damaged, foreign or repeated
    row, a header edited after its rows), naming the file and the line, before any report."""
    from paramcorrupt.probe.store import verify_results

    for path in results:
        if path.is_dir() and (path / "results.jsonl").is_file():
            path = path / "results.jsonl"
        if path.exists() and not path.is_dir():
            problems = verify_results(path)
            if problems:
                raise CLIError(f"{path}: {problems[0]}; the report shows only files whose rows can be trusted")


def run(args: argparse.Namespace) -> int:
    try:
        from paramcorrupt.probe.report import write_report
    except ImportError as error:  # pragma: no cover - matplotlib is a declared extra
        raise CLIError(f"cannot load the report module: {error}") from None
    _verify(args.results)
    try:
        path = write_report(args.results, args.out, title=args.title)
    except ImportError as error:  # pragma: no cover
        raise CLIError(str(error)) from None
    except OSError as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise CLIError(f"cannot write the report: {error}") from None
    print(path)
    return 0
