"""The ``metabench`` command: parses arguments, hands each subcommand to its module in ``harness.commands``."""

from __future__ import annotations

import argparse
import logging
import os
import sys


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
    from metabench.harness.commands import baseline, bench, check, episodes, listing, report, run, stats, sweep
    from metabench.harness.commands import bundles, reproduce

    parser = argparse.ArgumentParser(prog="metabench", description="Benchmark few-shot meta-learning on fixed, fingerprinted episodes.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (run, report, stats, sweep, check, baseline, bench, episodes, listing, bundles, reproduce):
        command.register(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
