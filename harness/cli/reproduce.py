"""`metabench reproduce NAME`: train a paper table's locked set of recipes, then write its reproduction table."""

from __future__ import annotations

import json
import logging
import os

from metabench.harness.cli import DEFAULT_REPORTS
from metabench.harness.results import DEFAULT_STORE
from metabench.harness.run.paper_tables import names, plan

logger = logging.getLogger("metabench")


def register(commands) -> None:
    reproduce = commands.add_parser(
        "reproduce",
        help="run a paper table's locked recipes (those not yet completed in the store) and write reproduction.md",
        description=(
            "Train and evaluate every recipe of one paper table (a locked list of shipped configs and seeds), "
            "skipping runs the store already holds, then write OUT/reproduction.md and the leaderboard. "
            f"Tables: {', '.join(names())}. --budget F runs F times each recipe's meta-iterations; the table "
            "then names the iterations run beside the paper's."
        ),
    )
    reproduce.add_argument("name", help=f"the paper table: {', '.join(names())}")
    reproduce.add_argument("--budget", type=float, default=1.0, help="fraction of each run's meta-iterations (default: 1, the full protocol)")
    reproduce.add_argument("--store", default=DEFAULT_STORE, help=f"results store (default: {DEFAULT_STORE})")
    reproduce.add_argument("--out", default=DEFAULT_REPORTS, help=f"report folder (default: {DEFAULT_REPORTS})")
    reproduce.add_argument("--data-dir", help="folder holding the datasets (default: $METABENCH_DATA)")
    reproduce.add_argument("--cache-dir", help="folder for decoded-dataset caches")
    reproduce.add_argument("--workers", type=int, default=1, help="parallel runs in a local process pool")
    reproduce.add_argument("--dry-run", action="store_true", help="list the runs and which are already complete; run nothing")
    reproduce.add_argument("--json", action="store_true", help="print the counts as JSON")
    reproduce.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    reproduce.set_defaults(handler=_reproduce)


def _reproduce(args) -> int:
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.analysis.report import write_report
    from metabench.harness.results.store import ResultsStore
    from metabench.harness.run.executors import completed_hashes, run_sweep

    table = plan(args.name, args.budget)
    logger.info("%s: %d runs at budget %g.", table.title, len(table.runs), table.budget)
    with ResultsStore(args.store) as store:
        if args.dry_run:
            done = completed_hashes(store)
            for planned in table.runs:
                print(f"{planned.config_hash[:12]}  {'completed' if planned.config_hash in done else 'pending':9}  {planned.label}")
            print(f"{len(table.runs)} runs, {sum(p.config_hash in done for p in table.runs)} already completed")
            return 0
        counts = run_sweep(table.runs, store, workers=args.workers, data_dir=args.data_dir or os.environ.get("METABENCH_DATA"),
                           cache_dir=args.cache_dir, show_progress=not args.quiet)
        paths = write_report(store, args.out, reproduction=True)
    if args.json:
        print(json.dumps(counts))
    else:
        logger.info("Reproduction %s: %d completed, %d failed, %d already complete.", args.name,
                    counts["completed"], counts["failed"], counts["skipped"])
        for path in paths:
            print(path)
    return 1 if counts["failed"] else 0
