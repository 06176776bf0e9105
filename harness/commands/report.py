"""`metabench report`: write the leaderboard from the results store."""

from __future__ import annotations

import sys
from pathlib import Path

from metabench.harness.commands import DEFAULT_REPORTS, DEFAULT_STORE


def register(commands) -> None:
    report = commands.add_parser("report", help="write the leaderboard from the results store")
    report.add_argument("--store", default=DEFAULT_STORE, help=f"results store (default: {DEFAULT_STORE})")
    report.add_argument("--out", default=DEFAULT_REPORTS, help=f"output folder (default: {DEFAULT_REPORTS})")
    report.set_defaults(handler=_report)


def _report(args) -> int:
    from metabench.harness.report import write_leaderboard
    from metabench.harness.store import ResultsStore

    if not Path(args.store).exists():
        print(f"metabench: error: no results store at {args.store!r}; run `metabench run` first or pass --store PATH.", file=sys.stderr)
        return 2
    with ResultsStore(args.store) as store:
        paths = write_leaderboard(store, args.out)
    for path in paths:
        print(path)
    return 0
