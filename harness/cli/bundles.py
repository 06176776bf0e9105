"""`metabench export` and `metabench import`: result bundles, the portable record of completed runs.

``metabench export RUN_ID... --out FILE`` (or ``--all``) writes the runs of a results store to a
bundle (gzipped JSON lines, docs/bundles.md); ``metabench import FILE...`` verifies bundles and
loads them into a store, skipping the runs it already holds. An invalid bundle, a run that is not
completed or a run id held with different content is an error (exit status 2) naming the file,
line and run; nothing of a file that fails is imported.
"""

from __future__ import annotations

from pathlib import Path

from metabench.harness.errors import UsageError
from metabench.harness.results import DEFAULT_STORE


def register(commands) -> None:
    export = commands.add_parser(
        "export",
        help="write completed runs of the results store to a result bundle (.jsonl.gz)",
        description=(
            "Write the named completed runs (or every completed run, --all) to FILE, a result bundle: "
            "gzipped JSON lines holding each run's resolved config, recipe hash, evaluation-set identity, "
            "library versions, git commit, timings, training curve and every per-episode value at every "
            "evaluated inner-step count, each run with its content sha256. See docs/bundles.md."
        ),
    )
    export.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs to export, in this order")
    export.add_argument("--all", action="store_true", help="export every completed run of the store")
    export.add_argument("--out", required=True, metavar="FILE", help="the bundle to write (name ending in .jsonl.gz)")
    export.add_argument("--store", default=DEFAULT_STORE, help=f"results store (default: {DEFAULT_STORE})")
    export.set_defaults(handler=_export)

    load = commands.add_parser(
        "import",
        help="verify result bundles and load their runs into the results store",
        description=(
            "Verify each bundle (format, schema, finite values, content hashes, and that each run's config "
            "and recipe hashes are those of its config), then load its runs into the store, one transaction "
            "per file. Runs the store already holds with the same content are skipped; a run id it holds "
            "with different content is an error. A folder stands for its *.jsonl.gz files."
        ),
    )
    load.add_argument("files", nargs="+", metavar="FILE", help="bundles (.jsonl.gz) or folders of bundles")
    load.add_argument("--store", default=DEFAULT_STORE, help=f"results store, created if missing (default: {DEFAULT_STORE})")
    load.set_defaults(handler=_import)


def _export(args) -> int:
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.results.bundles import export_runs
    from metabench.harness.results.store import ResultsStore, StoreError

    if bool(args.run_ids) == bool(args.all):
        which = "both run ids and --all" if args.all else "no run id"
        raise UsageError(f"received {which}; name the runs to export (RUN_ID...) or pass --all.")
    if not Path(args.store).exists():
        raise StoreError(f"no results store at {args.store!r}; pass --store PATH.")
    with ResultsStore(args.store) as store:
        written = export_runs(store, None if args.all else args.run_ids, args.out)
    print(f"{args.out}: {len(written)} run(s) ({', '.join(written)})")
    return 0


def _import(args) -> int:
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.results.bundles import import_bundles
    from metabench.harness.results.store import ResultsStore

    with ResultsStore(args.store) as store:
        counts = import_bundles(store, args.files)
    print(f"{args.store}: imported {counts['imported']} run(s), skipped {counts['skipped']} already held")
    return 0
