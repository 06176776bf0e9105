"""`metabench conformance NAME`: run the contract suite on any registered algorithm, plugins included.

Builds the algorithm from the registry with its defaults and any ``--set OPTION=VALUE``, then runs
every check of :func:`metabench.harness.testing.conformance.algorithm_checks` (learns, deterministic, no
query-label leak, query order, ways at evaluation, save/restore) on the tiny task families of that
module, printing each check's pass or failure and why. Exit status: 0 every check passed, 1 one
failed, 2 the algorithm or an option cannot be used.
"""

from __future__ import annotations

import json
import time

from metabench.harness.config import ConfigError, apply_override, resolve_component
from metabench.harness.engines import select_backend
from metabench.harness.errors import MetabenchError, UsageError
from metabench.harness.registry import ALGORITHMS


def register(commands) -> None:
    conformance = commands.add_parser(
        "conformance",
        help="run the contract suite (harness.testing.conformance) on a registered algorithm; exit 1 when a check fails",
        description=(
            "Run every check of the contract all algorithms pass (metabench.harness.testing.conformance) on the registered "
            "algorithm NAME, ours or a plugin's: it learns a tiny task family, is deterministic for a seed, never "
            "lets query labels into adaptation, predicts each query from its input (not its position), handles "
            "other ways at evaluation when it claims to, and restores its meta-parameters exactly. The toy tasks "
            "train in seconds, so the registered defaults may need a larger step size (e.g. maml: --set "
            "inner_lr=0.4 for classification, 0.1 for regression). Exit status: 0 all passed, 1 a check failed, "
            "2 NAME or an option cannot be used."
        ),
    )
    conformance.add_argument("name", metavar="NAME", help="a registered algorithm (see `metabench list`)")
    conformance.add_argument("--set", dest="options", action="append", default=[], metavar="OPTION=VALUE",
                             help="an option of the algorithm, as a TOML value, e.g. --set inner_lr=0.4 (repeatable)")
    conformance.add_argument("--kind", choices=["classification", "regression"], action="append",
                             help="task kind to check (repeatable; default: every kind the algorithm handles)")
    conformance.add_argument("--eval-steps", type=int, default=5,
                             help="inner steps of adaptation the checks evaluate (default: 5)")
    conformance.add_argument("--iterations", type=int, metavar="N",
                             help="meta-iterations of each check's training (default: 150 classification, 300 regression)")
    conformance.add_argument("--json", action="store_true", help="print the results as one JSON document")
    conformance.set_defaults(handler=_conformance)


def _conformance(args) -> int:
    select_backend("tensorflow")  # what the checks' configs run on; before the algorithm imports Keras
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.testing.conformance import algorithm_checks

    raw = {"algorithm": {"name": args.name}}
    for option in args.options:
        key = option.split("=", 1)[0].strip()
        apply_override(raw, option if key.startswith("algorithm.") else f"algorithm.{option}")
    resolved = resolve_component("algorithm", raw["algorithm"], f"metabench conformance {args.name}")
    options = {k: v for k, v in resolved.items() if k != "name"}
    entry = ALGORITHMS.get(args.name)
    given = ", ".join(f"{k}={v!r}" for k, v in options.items())
    if args.eval_steps < 1:
        raise UsageError(f"Received --eval-steps {args.eval_steps}; expected a positive inner-step count, e.g. 5.")
    if args.iterations is not None and args.iterations < 1:
        raise UsageError(f"Received --iterations {args.iterations}; expected a positive number of meta-iterations.")

    def factory():
        return entry.factory(**options)

    try:
        factory()
    except ValueError as error:
        if isinstance(error, MetabenchError):
            raise
        raise ConfigError(f"algorithm {args.name!r} refused its options ({given or 'the defaults'}): {error}") from error

    lengths = {}
    if args.iterations is not None:
        lengths = {"classification_iterations": args.iterations, "regression_iterations": args.iterations}
    if not args.json:
        print(f"conformance of {args.name} (from {entry.source}) with {given or 'no options'}:", flush=True)
    results = []
    for check_id, check in algorithm_checks(factory, kinds=args.kind, eval_steps=args.eval_steps, **lengths):
        started = time.perf_counter()
        try:
            check()
            error = None
        except AssertionError as failure:
            error = str(failure) or "assertion failed"
        except Exception as failure:  # the algorithm broke: a failed check, not a crash of the command
            error = f"{type(failure).__name__}: {failure}"
        seconds = time.perf_counter() - started
        results.append({"check": check_id, "passed": error is None, "error": error, "seconds": round(seconds, 3)})
        if not args.json:
            print(f"  {'PASS' if error is None else 'FAIL'}  {check_id} ({seconds:.1f} s)"
                  + ("" if error is None else f": {error}"), flush=True)
    passed = sum(r["passed"] for r in results)
    if args.json:
        print(json.dumps({"algorithm": args.name, "source": entry.source, "options": options,
                          "passed": passed == len(results), "checks": results}))
    else:
        print(f"{passed} of {len(results)} checks passed")
    return 0 if passed == len(results) else 1
