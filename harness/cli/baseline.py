"""`metabench baseline save|show`: write completed runs as a baseline file, or summarize one.

``save RUN_ID... --out FILE [--store PATH]`` writes the runs' per-episode results: the runs must be
of one recipe (configs differing only in the seed; else the error names the keys that differ),
and are kept one per seed (a repeat of a seed that agrees bit for bit counts once; one that differs
is a determinism failure). ``metabench check`` compares such a baseline with the same seeds.
``show FILE`` prints what a baseline holds. Exit status 2 when a run or file cannot be used.
"""

from __future__ import annotations

import json
from pathlib import Path

from metabench.harness.results import DEFAULT_STORE


def register(commands) -> None:
    baseline = commands.add_parser("baseline", help="save completed runs as a baseline file for `metabench check`, or show one")
    actions = baseline.add_subparsers(dest="baseline_command", required=True)
    save = actions.add_parser("save", help="write completed runs' per-episode results as a baseline JSON file",
                              description="Write the per-episode results of one or more completed runs of one recipe "
                              "(configs differing only in the seed), one per seed, as a versioned JSON baseline, to commit "
                              "and check against. `metabench check` compares it with the same seeds.")
    save.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="completed runs (see `metabench report` or `metabench run --json`)")
    save.add_argument("--out", required=True, metavar="FILE", help="the baseline file to write, e.g. tests/baselines/maml_sinusoid.json")
    save.add_argument("--store", default=DEFAULT_STORE, help=f"results store holding the runs (default: {DEFAULT_STORE})")
    save.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    save.set_defaults(handler=_save)
    show = actions.add_parser("show", help="summarize a baseline file")
    show.add_argument("file", metavar="FILE")
    show.add_argument("--json", action="store_true", help="print the summary as JSON")
    show.set_defaults(handler=_show)


def _save(args) -> int:
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.results.baseline_file import Baseline
    from metabench.harness.results.store import ResultsStore, StoreError

    if not Path(args.store).is_file():
        raise StoreError(f"no results store at {args.store}; pass --store the store that holds the runs.")
    with ResultsStore(args.store) as store:
        baseline = Baseline.from_store(store, args.run_ids)
    path = baseline.save(args.out)
    print(path)
    return 0


def _show(args) -> int:
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.results.baseline_file import Baseline

    baseline = Baseline.load(args.file)
    summary = {
        "file": args.file,
        "algorithm": baseline.algorithm,
        "dataset": baseline.dataset,
        "backend": baseline.backend,
        "deterministic": baseline.deterministic,
        "config_hash": baseline.config_hash,
        "recipe_hash": baseline.recipe_hash,
        "seeds": baseline.seeds,
        "created_by": baseline.created_by,
        "versions": baseline.versions,
        "runs": [{"run_id": r.run_id, "seed": r.seed, "git_commit": r.git_commit} for r in baseline.runs],
        "settings": [
            {
                "setting": s.describe(),
                "fingerprint": s.fingerprint,
                "metric": s.metric,
                "episodes": s.episodes,
                "headline_steps": s.headline_steps,
                "mean": {str(k): float(v.mean()) for k, v in s.values.items()},
            }
            for s in baseline.settings
        ],
    }
    if args.json:
        print(json.dumps(summary, indent=2, allow_nan=False, default=str))
        return 0
    print(f"{args.file}: {baseline.algorithm} on {baseline.dataset} ({baseline.backend}"
          f"{', deterministic' if baseline.deterministic else ''}), recipe {baseline.recipe_hash[:12]}, "
          f"config {baseline.config_hash[:12]}, {baseline.created_by}")
    print("  runs: " + ", ".join(f"{r.run_id} (seed {r.seed})" for r in baseline.runs))
    for note in baseline.repeats:
        print(f"  note: {note}; counted once")
    print("  versions: " + ", ".join(f"{k} {v}" for k, v in sorted(baseline.versions.items())))
    for s in baseline.settings:
        means = ", ".join(
            f"{k} steps {100 * v.mean():.2f}%" if s.metric == "accuracy" else f"{k} steps {v.mean():.4f}"
            for k, v in sorted(s.values.items())
        )
        print(f"  {s.describe()}, {s.episodes} episodes, fingerprint {s.fingerprint[:12]}: {s.metric} {means} "
              f"(headline: {s.headline_steps} steps)")
    return 0
