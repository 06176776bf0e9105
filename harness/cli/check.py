"""`metabench check`: did the candidate regress against a baseline file? Answered as an exit code.

Exit status: 0 unchanged or improved (and equivalent, with ``--equivalence``), 1 regressed (or not
equivalent), 2 could not compare (different episodes, settings or seeds, a missing run, repeats
of one seed that differ, bad arguments). A multi-seed baseline is checked against the same seeds:
``--config`` runs the candidate at every baseline seed, ``--run`` takes one run per baseline seed.
See :mod:`metabench.harness.analysis.comparison` for the decision rule.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from metabench.harness.results import DEFAULT_STORE

logger = logging.getLogger("metabench")


def register(commands) -> None:
    check = commands.add_parser(
        "check",
        help="compare a candidate with a baseline file on identical episodes; exit 1 when it regressed",
        description=(
            "Pair the candidate's per-episode metrics with the baseline's, on exactly the baseline's episodes, "
            "and decide: regressed (worse by more than --tolerance, one-sided paired t-test significant at --alpha), "
            "improved, or unchanged; with --equivalence, also whether the change lies within +/- MARGIN (TOST). "
            "Differences are in percentage points of accuracy, percent of the baseline's mean MSE, or units of return "
            "(reinforcement learning; higher is better, like accuracy). "
            "Both sides hold the same seeds: a --config candidate is run at every seed of the baseline, and --run "
            "takes one completed run per baseline seed; the per-seed averages are paired. "
            "Exit status: 0 unchanged/improved/equivalent, 1 regressed or not equivalent, 2 could not compare. "
            "Without --run or --config the config recorded in the baseline is run again, at each of its seeds."
        ),
    )
    check.add_argument("--baseline", required=True, metavar="FILE", help="baseline JSON written by `metabench baseline save`")
    source = check.add_mutually_exclusive_group()
    source.add_argument("--run", dest="runs", action="append", metavar="RUN_ID",
                        help="a completed candidate run in --store (repeatable: one run per seed of the baseline, exactly "
                        "the baseline's seeds)")
    source.add_argument("--config", metavar="CONFIG.toml|NAME",
                        help="a candidate config to meta-train and evaluate now, once per seed of the baseline")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a value of the candidate config (repeatable; not seed: the seeds are the baseline's)")
    check.add_argument("--store", help=f"results store: read --run from it (default: {DEFAULT_STORE}); record the "
                       "--config run in it (default: a temporary store, deleted afterwards)")
    check.add_argument("--tolerance", type=float, default=0.5,
                       help="largest change that is not a regression: percentage points of accuracy, percent of "
                       "the baseline's mean MSE, or units of return (default: 0.5)")
    check.add_argument("--alpha", type=float, default=0.05, help="significance level of the one-sided tests (default: 0.05)")
    check.add_argument("--equivalence", type=float, metavar="MARGIN",
                       help="also require equivalence within +/- MARGIN (TOST; same unit as --tolerance)")
    check.add_argument("--inner-steps", type=int, help="inner-step count to compare (default: each setting's headline count)")
    check.add_argument("--data-dir", help="folder holding the datasets (default: $METABENCH_DATA)")
    check.add_argument("--cache-dir", help="folder for decoded-dataset caches")
    check.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    check.add_argument("--no-progress", action="store_true", help="no progress bar while the candidate trains")
    check.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    check.set_defaults(handler=_check)


def _check(args) -> int:
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.analysis.comparison import EXIT_CANNOT_COMPARE, cannot_compare_errors
    from metabench.harness.testing.check import check

    try:
        result = check(
            args.baseline,
            config=args.config,
            overrides=args.overrides,
            runs=args.runs,
            store=args.store,
            tolerance=args.tolerance,
            alpha=args.alpha,
            equivalence=args.equivalence,
            inner_steps=args.inner_steps,
            data_dir=args.data_dir or os.environ.get("METABENCH_DATA"),
            cache_dir=args.cache_dir,
            show_progress=not (args.no_progress or args.json),
        )
    except cannot_compare_errors() as error:  # no answer: said here (with --json, also as JSON) rather than by the CLI
        print(f"metabench: error: could not compare: {error}", file=sys.stderr)
        if args.json:
            print(json.dumps({"decision": None, "equivalence": None, "exit_code": EXIT_CANNOT_COMPARE, "error": str(error)}))
        return EXIT_CANNOT_COMPARE
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, allow_nan=False))
    else:
        print(result.explanation())
    return result.exit_code
