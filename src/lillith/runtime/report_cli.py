"""``lillith report``: its sub-command (the report itself is :mod:`lillith.report`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML report and PNGs of a replay output; print what was written."""
    from lillith.report.render import write_report

    done = write_report(Path(args.scores), Path(args.out),
                        labels=None if args.labels is None else Path(args.labels),
                        state=args.state)
    print(json.dumps(done))
    return 0


def add_report_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report`` to the command line's sub-commands."""
    p = sub.add_parser("report", help="plots and an HTML page of a replay's scores "
                                      "(needs matplotlib: the report extra)")
    p.add_argument("scores", help="a lillith replay output CSV")
    p.add_argument("--out", required=True, help="output directory (index.html and PNGs)")
    p.add_argument("--labels", default=None,
                   help="labelled windows: a NAB labels JSON or a CSV with label columns "
                        "(SKAB's anomaly / changepoint)")
    p.add_argument("--state", default=None,
                   help="state directory: the SOM's U-matrix and hit map, the lineage")
    p.set_defaults(func=cmd_report)
