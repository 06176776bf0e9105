"""`metabench report`: the leaderboard, comparisons, ranks and figures from the results store."""

from __future__ import annotations

from pathlib import Path

from metabench.harness.cli import DEFAULT_REPORTS
from metabench.harness.errors import UsageError
from metabench.harness.results import DEFAULT_STORE


def register(commands) -> None:
    report = commands.add_parser(
        "report",
        help="write the leaderboard (md, csv, tex, html), comparisons and figures from the results store",
        description=(
            "Write OUT/leaderboard.md, .csv, .tex and .html (self-contained), comparisons.csv, "
            "across_settings.json and OUT/figures/ (CD diagram, metric vs inner steps, meta-training "
            "curves) from the completed runs of the store: one row per recipe (config without its seed) "
            "and episode set, seeds pooled. With --steps N every recipe is compared at inner step N instead "
            "of its headline count. With --reproduction also OUT/reproduction.md: our results beside the "
            "published numbers they reproduce."
        ),
    )
    source = report.add_mutually_exclusive_group()
    source.add_argument("--store", default=DEFAULT_STORE, help=f"results store (default: {DEFAULT_STORE})")
    source.add_argument("--from", dest="bundles", nargs="+", metavar="BUNDLES",
                        help="render from result bundles instead of a store: .jsonl.gz files or folders of them "
                             "(e.g. reports/runs, the committed runs behind reports/)")
    report.add_argument("--out", default=DEFAULT_REPORTS, help=f"output folder (default: {DEFAULT_REPORTS})")
    report.add_argument("--reproduction", action="store_true", help="also write reproduction.md (ours vs the papers)")
    report.add_argument("--published", metavar="TOML",
                        help="published numbers for --reproduction (default: the shipped published_results.toml)")
    report.add_argument("--alpha", type=float, default=0.05, help="significance level of the tests (default: 0.05)")
    report.add_argument("--steps", type=int, metavar="N",
                        help="compare every recipe at inner step N, not its headline count; recipes that did not "
                             "record N are left out (and named)")
    report.set_defaults(handler=_report)


def _report(args) -> int:
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.analysis.report import write_report
    from metabench.harness.analysis.reproduction import load_published
    from metabench.harness.results.bundles import open_bundles
    from metabench.harness.results.store import ResultsStore, StoreError

    if args.bundles is None and not Path(args.store).exists():
        raise StoreError(f"no results store at {args.store!r}; run `metabench run` first or pass --store PATH.")
    if not 0.0 < args.alpha < 1.0:
        raise UsageError(f"received --alpha {args.alpha}; expected a significance level strictly between 0 and 1, e.g. 0.05.")
    if args.steps is not None and args.steps < 0:
        raise UsageError(f"received --steps {args.steps}; expected an inner-step count >= 0, e.g. --steps 5.")
    published = None
    if args.reproduction:
        published = load_published(args.published)
    with open_bundles(args.bundles) if args.bundles else ResultsStore(args.store) as store:
        paths = write_report(
            store, args.out, alpha=float(args.alpha), reproduction=args.reproduction, published=published, steps=args.steps,
            source=" ".join(args.bundles) if args.bundles else None,
        )
    for path in paths:
        print(path)
    return 0
