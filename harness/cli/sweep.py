"""`metabench sweep`: run a grid of configs once each, locally or on Ray, then refresh the report."""

from __future__ import annotations

import json
import logging
import os

from metabench.harness.cli import DEFAULT_REPORTS
from metabench.harness.results import DEFAULT_STORE

logger = logging.getLogger("metabench")


def register(commands) -> None:
    sweep = commands.add_parser("sweep", help="run every config of a sweep file that has no completed result yet")
    sweep.add_argument("sweep", help="the sweep file (TOML; see `harness/run/sweep.py` or the README)")
    sweep.add_argument("--executor", choices=["local", "ray"], default="local", help="where runs execute (default: local)")
    sweep.add_argument("--workers", type=int, default=1, help="parallel runs (local process pool, or Ray CPUs when Ray is started here)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and which are already complete; run nothing")
    sweep.add_argument("--store", default=DEFAULT_STORE, help=f"results store (default: {DEFAULT_STORE})")
    sweep.add_argument("--data-dir", help="folder holding the datasets (default: $METABENCH_DATA)")
    sweep.add_argument("--cache-dir", help="folder for decoded-dataset caches")
    sweep.add_argument("--ray-address", help="an existing Ray cluster (default: start a local one)")
    sweep.add_argument("--retries", type=int, default=2, help="Ray retries per failed run before it is recorded as failed")
    sweep.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each Ray task requests")
    sweep.add_argument("--no-report", action="store_true", help="do not run `metabench report` at the end")
    sweep.add_argument("--out", default=DEFAULT_REPORTS, help=f"report folder (default: {DEFAULT_REPORTS})")
    sweep.add_argument("--json", action="store_true", help="print the counts as JSON")
    sweep.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    sweep.set_defaults(handler=_sweep)


def _sweep(args) -> int:
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.analysis.report import write_report
    from metabench.harness.results.store import ResultsStore
    from metabench.harness.run.executors import completed_hashes, run_sweep
    from metabench.harness.run.sweep import load_sweep

    runs = load_sweep(args.sweep)
    data_dir = args.data_dir or os.environ.get("METABENCH_DATA")
    with ResultsStore(args.store) as store:
        if args.dry_run:
            done = completed_hashes(store)
            for planned in runs:
                status = "completed" if planned.config_hash in done else "pending"
                print(f"{planned.config_hash[:12]}  {status:9}  {planned.label}")
            print(f"{len(runs)} runs, {sum(p.config_hash in done for p in runs)} already completed")
            return 0
        counts = run_sweep(runs, store, executor=args.executor, workers=args.workers, data_dir=data_dir,
                           cache_dir=args.cache_dir, ray_address=args.ray_address, retries=args.retries,
                           show_progress=not args.quiet, num_gpus=args.gpus_per_run)
        if not args.no_report:
            write_report(store, args.out)
            logger.info("Report written to %s", args.out)
    if args.json:
        print(json.dumps(counts))
    else:
        logger.info("Sweep: %(completed)d completed, %(failed)d failed, %(skipped)d already complete", counts)
    return 1 if counts["failed"] else 0
