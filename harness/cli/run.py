"""`metabench run`: meta-train and evaluate one config, recording it in the results store."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

from rich.console import Console
from rich.table import Table

from metabench.harness.config import TOP_LEVEL, ConfigError, dump_toml, read_raw_config, resolve_config
from metabench.harness.engines import select_backend
from metabench.harness.results import DEFAULT_STORE

logger = logging.getLogger("metabench")

_RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")


def register(commands) -> None:
    run = commands.add_parser("run", help="meta-train and evaluate one config, recording it in the results store")
    run.add_argument("config", nargs="?", help="a config file or a shipped config name (default: quickstart; "
                     "quickstart_omniglot when a data dir is given)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set train.meta_iterations=500 (repeatable)")
    run.add_argument("--data-dir", help="folder holding the datasets (default: $METABENCH_DATA)")
    run.add_argument("--cache-dir", help="folder for decoded-dataset caches (default: $METABENCH_CACHE or the user cache dir)")
    run.add_argument("--store", default=DEFAULT_STORE, help=f"results store (default: {DEFAULT_STORE})")
    run.add_argument("--resume", nargs="?", const="latest", metavar="RUN_ID",
                     help="continue a run that did not complete from its last checkpoint, in the same store row: "
                          "RUN_ID (its stored config is used), or without a value the newest unfinished run of "
                          "this config (a new run when there is none)")
    run.add_argument("--checkpoint-dir", metavar="DIR",
                     help="folder of the runs' checkpoint folders, DIR/<run id>/ (default: checkpoints/ beside the store)")
    run.add_argument("--backend", choices=["tensorflow", "jax"], help="override the config's backend")
    run.add_argument("--json", action="store_true",
                     help="print the summary as one JSON document on stdout: run_id, metric, the first setting's "
                          "mean, ci95, episodes and inner_steps, and settings (every setting's result)")
    run.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    run.set_defaults(handler=_run)


def _run(args) -> int:
    data_dir = args.data_dir or os.environ.get("METABENCH_DATA")
    source = args.config or ("quickstart_omniglot" if data_dir else "quickstart")
    overrides = list(args.overrides) + ([f"backend={args.backend}"] if args.backend else [])
    resume = args.resume
    if resume is not None and resume != "latest" and not _RUN_ID.fullmatch(resume):
        raise ConfigError(
            f"Received --resume {resume!r}, which is not a run id (YYYYmmdd-HHMMSS-xxxxxxxx). To resume the newest "
            f"unfinished run of a config, put the config first: `metabench run {resume} --resume`."
        )
    if resume not in (None, "latest") and args.config is None and not overrides:
        config = _stored_config(args.store, resume)
        source = f"run {resume}"
    else:
        raw, origin = read_raw_config(source, overrides)
        select_backend(str(raw.get("backend", TOP_LEVEL["backend"])))  # before validation imports Keras
        config = resolve_config(raw, origin)
    if args.print_config:
        print(dump_toml(config), end="")
        return 0
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.results.store import ResultsStore
    from metabench.harness.run.lifecycle import run

    logger.info("Running %s (%s on %s); results go to %s", source, config["algorithm"]["name"], config["dataset"]["name"], args.store)
    with ResultsStore(args.store) as store:
        summary = run(config, store=store, data_dir=args.data_dir, cache_dir=args.cache_dir,
                      show_progress=not args.no_progress, resume=resume, checkpoint_dir=args.checkpoint_dir)
    if args.json:
        print(json.dumps(_finite_or_null(summary.as_dict()), allow_nan=False))
    else:
        _print_summary(summary)
    return 0


def _finite_or_null(value):
    """``value`` with NaN and infinities as ``None``, so the summary is strict JSON (a diverged setting reads null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


def _stored_config(store_path: str, run_id: str) -> dict:
    """The config run ``run_id`` was started with, validated again."""
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.results.store import ResultsStore, StoreError

    if not Path(store_path).exists():
        raise StoreError(f"Cannot resume run {run_id}: there is no results store at {store_path!r}. Pass the run's --store.")
    with ResultsStore(store_path) as store:
        stored = store.get_run(run_id)["config"]
    select_backend(stored.get("backend", "tensorflow"))
    return resolve_config(stored, f"the stored config of run {run_id}")


def _print_summary(summary) -> None:
    table = Table(title=f"run {summary.run_id}: {summary.metric} on the fixed evaluation episodes (95% CI: 1.96 s/sqrt(n))")
    table.add_column("setting")
    table.add_column("inner steps")
    table.add_column(summary.metric)
    for setting in summary.settings:
        ways = f"{setting['ways']}-way " if setting["ways"] else ""
        name = f"{ways}{setting['shots']}-shot ({setting['split']}, fp {setting['fingerprint'][:12]})"
        metric = setting.get("metric", summary.metric)
        if metric != summary.metric:  # a prequential result: say which, and what its "steps" count
            name += f" {metric}" + (" (by examples seen)" if metric.endswith("_by_seen") else "")
        if setting.get("ensemble"):  # a checkpoint ensemble, beside the last checkpoint's row of the same set
            name += " " + setting["ensemble"].split(" checkpoints")[0] + " ensemble"
        percent = "accuracy" in metric  # a fraction shown in percent; MSE and return as they are
        for steps, value in setting["by_inner_steps"].items():
            shown = f"{100 * value:.2f}%" if percent else f"{value:.4f}"
            if steps == setting["inner_steps"]:
                ci = 100 * setting["ci95"] if percent else setting["ci95"]
                shown += f" ± {ci:.2f}" if percent else f" ± {ci:.4f}"
            table.add_row(name, str(steps), shown)
    Console(stderr=False).print(table)
