"""The ``metabench`` command: run, report, list."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

DEFAULT_STORE = "reports/results.sqlite"
DEFAULT_REPORTS = "reports"

logger = logging.getLogger("metabench")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, not ours
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("metabench: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as error:
        print(f"metabench: error: {error}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from metabench.datasets.base import DatasetError
    from metabench.harness.config import ConfigError
    from metabench.harness.engines import EngineError
    from metabench.harness.episodes import EpisodeError
    from metabench.harness.registry import RegistryError
    from metabench.harness.runner import TrainingDiverged
    from metabench.harness.store import StoreError

    return (ConfigError, DatasetError, EngineError, EpisodeError, RegistryError, StoreError, TrainingDiverged)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metabench", description="Benchmark few-shot meta-learning on fixed, fingerprinted episodes.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="meta-train and evaluate one config, recording it in the results store")
    run.add_argument("config", nargs="?", help="a config file or a shipped config name (default: quickstart; "
                     "quickstart_omniglot when a data dir is given)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set train.meta_iterations=500 (repeatable)")
    run.add_argument("--data-dir", help="folder holding the datasets (default: $METABENCH_DATA)")
    run.add_argument("--cache-dir", help="folder for decoded-dataset caches (default: $METABENCH_CACHE or the user cache dir)")
    run.add_argument("--store", default=DEFAULT_STORE, help=f"results store (default: {DEFAULT_STORE})")
    run.add_argument("--backend", choices=["tensorflow", "jax"], help="override the config's backend")
    run.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    run.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    run.set_defaults(handler=_run)

    report = commands.add_parser("report", help="write the leaderboard from the results store")
    report.add_argument("--store", default=DEFAULT_STORE, help=f"results store (default: {DEFAULT_STORE})")
    report.add_argument("--out", default=DEFAULT_REPORTS, help=f"output folder (default: {DEFAULT_REPORTS})")
    report.set_defaults(handler=_report)

    listing = commands.add_parser("list", help="registered algorithms, datasets, models and the shipped configs")
    listing.set_defaults(handler=_list)
    return parser


def _run(args) -> int:
    from metabench.harness.config import apply_override, load_config

    data_dir = args.data_dir or os.environ.get("METABENCH_DATA")
    source = args.config or ("quickstart_omniglot" if data_dir else "quickstart")
    overrides = list(args.overrides) + ([f"backend={args.backend}"] if args.backend else [])
    config = load_config(source, overrides)
    if args.print_config:
        from metabench.harness.config import dump_toml

        print(dump_toml(config), end="")
        return 0
    from metabench.harness import runner
    from metabench.harness.store import ResultsStore

    logger.info("Running %s (%s on %s); results go to %s", source, config["algorithm"]["name"], config["dataset"]["name"], args.store)
    with ResultsStore(args.store) as store:
        summary = runner.run(config, store=store, data_dir=args.data_dir, cache_dir=args.cache_dir, show_progress=not args.no_progress)
    if args.json:
        print(json.dumps({"run_id": summary.run_id, "metric": summary.metric, "mean": summary.mean,
                          "ci95": summary.ci95, "episodes": summary.episodes, "inner_steps": summary.inner_steps}))
    else:
        _print_summary(summary)
    return 0


def _print_summary(summary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {summary.run_id}: {summary.metric} on the fixed evaluation episodes (95% CI: 1.96 s/sqrt(n))")
    table.add_column("setting")
    table.add_column("inner steps")
    table.add_column(summary.metric)
    for setting in summary.settings:
        ways = f"{setting['ways']}-way " if setting["ways"] else ""
        name = f"{ways}{setting['shots']}-shot ({setting['split']}, fp {setting['fingerprint'][:12]})"
        for steps, value in setting["by_inner_steps"].items():
            shown = f"{value:.4f}" if summary.metric == "mse" else f"{100 * value:.2f}%"
            if steps == setting["inner_steps"]:
                ci = setting["ci95"] if summary.metric == "mse" else 100 * setting["ci95"]
                shown += f" ± {ci:.4f}" if summary.metric == "mse" else f" ± {ci:.2f}"
            table.add_row(name, str(steps), shown)
    Console(stderr=False).print(table)


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


def _list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from metabench.harness.config import shipped_configs
    from metabench.harness.registry import ALGORITHMS, DATASETS, MODELS

    console = Console()
    for title, registry in (("algorithms", ALGORITHMS), ("datasets", DATASETS), ("models", MODELS)):
        table = Table(title=title)
        for column in ("name", "options (defaults)", "summary", "from"):
            table.add_column(column)
        for entry in registry.entries():
            options = ", ".join(f"{k}={v!r}" for k, v in entry.defaults.items())
            table.add_row(entry.name, options, entry.summary, entry.source)
        console.print(table)
    table = Table(title="shipped configs (metabench run NAME)")
    table.add_column("name")
    table.add_column("description")
    for name, description in shipped_configs().items():
        table.add_row(name, description)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
