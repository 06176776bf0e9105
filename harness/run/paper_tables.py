"""Locked sets of recipes that reproduce one paper table (``metabench reproduce NAME``).

A set is a shipped TOML file in ``metabench.harness.reproductions``: a ``title`` and a list of
``[[runs]]``, each a shipped config (``config``), overrides (``set``, ``table.key = value``) and
``seeds``. :func:`plan` expands it into the sweep's :class:`~metabench.harness.run.sweep.PlannedRun`
list, so a reproduction is trained, skipped when already done, and stored exactly as a sweep is.
A budget below 1 scales every run's ``train.meta_iterations``; the reproduction table then names
the iterations run against the paper's, so a reduced budget is never hidden.
"""

from __future__ import annotations

import dataclasses
import tomllib
from importlib import resources

from metabench.harness.config import ConfigError, config_hash, read_raw_config, resolve_config
from metabench.harness.run.sweep import PlannedRun, SweepError, set_value

PAPER_TABLES = "metabench.harness.reproductions"
RUN_KEYS = {"config", "set", "seeds"}


@dataclasses.dataclass(frozen=True)
class PaperTable:
    """A locked set: its name, title and planned runs (budget applied)."""

    name: str
    title: str
    budget: float
    runs: list


def names() -> list[str]:
    """The shipped paper tables (``metabench reproduce NAME``)."""
    return sorted(item.name[:-5] for item in resources.files(PAPER_TABLES).iterdir() if item.name.endswith(".toml"))


def plan(name: str, budget: float = 1.0) -> PaperTable:
    """The runs of paper table ``name`` at ``budget`` (a fraction in (0, 1] of each run's meta-iterations).

    Raises:
        SweepError: an unknown name, a budget outside (0, 1], or a malformed table file.
    """
    if name not in names():
        raise SweepError(f"No paper table {name!r}; shipped ones: {names()} (metabench reproduce NAME).")
    if not 0.0 < budget <= 1.0:
        raise SweepError(f"Received --budget {budget}; expected a fraction in (0, 1] of each run's meta-iterations, e.g. 0.1.")
    table = tomllib.loads(resources.files(PAPER_TABLES).joinpath(f"{name}.toml").read_text())
    runs = []
    for index, entry in enumerate(table.get("runs", [])):
        unknown = sorted(set(entry) - RUN_KEYS)
        if unknown or "config" not in entry:
            raise SweepError(f"Paper table {name!r}, runs[{index}]: expected keys {sorted(RUN_KEYS)} with a config; got {sorted(entry)}.")
        for seed in entry.get("seeds", [0]):
            raw, origin = read_raw_config(entry["config"])
            for key, value in {**entry.get("set", {}), "seed": seed}.items():
                set_value(raw, key, value)
            try:
                config = resolve_config(raw, f"{origin} in paper table {name!r}")
            except ConfigError as error:
                raise SweepError(f"Paper table {name!r}, runs[{index}] (seed {seed}) is invalid: {error}") from error
            label = f"{entry['config']}{''.join(f', {k}={v}' for k, v in entry.get('set', {}).items())}, seed {seed}"
            if budget < 1.0:
                full = config["train"]["meta_iterations"]
                config["train"]["meta_iterations"] = max(1, round(full * budget))
                label += f" ({config['train']['meta_iterations']:,} of {full:,} iterations)"
            runs.append(PlannedRun(label, config, config_hash(config)))
    return PaperTable(name, str(table.get("title", name)), budget, runs)
