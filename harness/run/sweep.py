"""Sweeps: a grid of algorithms x settings x seeds, expanded into resolved configs and run once each.

A sweep file names a base config and what to vary::

    base = "quickstart"                 # a config file (relative to the sweep file) or a shipped name
    seeds = [0, 1, 2]

    [set]                               # overrides for every run
    "train.meta_iterations" = 2000

    [axes]                              # each key takes every listed value (cartesian product)
    "evaluation.episodes" = [300, 600]

    [algorithms.maml]                   # one [algorithm] table per entry, replacing the base's
    name = "maml"
    inner_lr = 0.01

    [algorithms.multitask]
    name = "multitask"
    finetune_lr = 0.001
    set = { "evaluation.inner_steps" = [0, 10, 100], "evaluation.headline_steps" = 100 }

Each run is identified by the hash of its resolved config (:class:`PlannedRun`);
:mod:`metabench.harness.run.executors` runs the planned runs that have no completed result yet.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import tomllib
from importlib import resources
from pathlib import Path

from metabench.harness.config import ConfigError, apply_override, config_hash, read_raw_config, resolve_config
from metabench.harness.engines import select_backend
from metabench.harness.errors import MetabenchError

SWEEP_KEYS = {"base", "seeds", "set", "axes", "algorithms", "name"}


class SweepError(MetabenchError, ValueError):
    """A sweep file that cannot be expanded: unknown keys, a missing base, bad axes."""


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its label, resolved config and config hash."""

    label: str
    config: dict
    config_hash: str


SHIPPED_SWEEPS = "metabench.harness.sweeps"


def shipped_sweeps() -> list[str]:
    """Names of the sweeps that ship with metabench (``metabench sweep NAME``)."""
    return sorted(item.name[:-5] for item in resources.files(SHIPPED_SWEEPS).iterdir() if item.name.endswith(".toml"))


def load_sweep(path: str | os.PathLike) -> list[PlannedRun]:
    """Expand a sweep file (or a shipped sweep's name) into its runs (validated configs), in a stable order."""
    if not Path(path).exists() and str(path) in shipped_sweeps():
        path = resources.files(SHIPPED_SWEEPS).joinpath(f"{path}.toml")
    path = Path(path)
    try:
        sweep = tomllib.loads(path.read_text())
    except FileNotFoundError as error:
        raise SweepError(f"No sweep file {str(path)!r}; shipped sweeps: {shipped_sweeps()}.") from error
    except tomllib.TOMLDecodeError as error:
        raise SweepError(f"Malformed TOML in sweep file {str(path)!r}: {error}.") from error
    unknown = sorted(set(sweep) - SWEEP_KEYS)
    if unknown:
        raise SweepError(f"Unknown key {unknown[0]!r} in sweep file {str(path)!r}; allowed keys: {sorted(SWEEP_KEYS)}.")
    if "base" not in sweep:
        raise SweepError(f"Sweep file {str(path)!r} has no `base`; name a config file or a shipped config.")
    base = str(sweep["base"])
    local = path.parent / base
    base_raw, origin = read_raw_config(str(local) if local.is_file() else base)
    seeds = sweep.get("seeds", [base_raw.get("seed", 0)])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepError(f"Received seeds={seeds!r} in {str(path)!r}; expected a non-empty list of integers.")
    fixed = sweep.get("set", {})
    axes = sweep.get("axes", {})
    for name, table in (("set", fixed), ("axes", axes)):
        if not isinstance(table, dict):
            raise SweepError(f"[{name}] in {str(path)!r} must be a table of 'table.key' = value entries.")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"Axis {key!r} in {str(path)!r} must list at least one value; received {values!r}.")
    if "backend" in axes:
        raise SweepError(f"{str(path)!r} varies `backend` as an axis; run one sweep per backend (Keras picks one per process).")
    select_backend(str(fixed.get("backend", base_raw.get("backend", "tensorflow"))))  # before configs import Keras
    algorithms = sweep.get("algorithms") or {"base": None}
    runs = []
    for algorithm_label, algorithm in algorithms.items():
        per_algorithm = {}
        if algorithm is not None:
            algorithm = dict(algorithm)
            per_algorithm = algorithm.pop("set", {})
        for combination in itertools.product(*axes.values()) if axes else [()]:
            for seed in seeds:
                raw = copy.deepcopy(base_raw)
                if algorithm is not None:
                    raw["algorithm"] = copy.deepcopy(algorithm)
                overrides = {**fixed, **per_algorithm, **dict(zip(axes, combination)), "seed": seed}
                for key, value in overrides.items():
                    set_value(raw, key, value)
                where = f"{origin} in sweep {str(path)!r} ({algorithm_label}, seed {seed})"
                try:
                    config = resolve_config(raw, where)
                except ConfigError as error:
                    raise SweepError(f"Run {algorithm_label}, seed {seed} of {str(path)!r} is invalid: {error}") from error
                axis_text = "".join(f", {k}={v}" for k, v in zip(axes, combination))
                runs.append(PlannedRun(f"{algorithm_label}{axis_text}, seed {seed}", config, config_hash(config)))
    hashes = [run.config_hash for run in runs]
    if len(set(hashes)) != len(hashes):
        raise SweepError(f"Sweep {str(path)!r} expands to identical configs more than once; remove the duplicate entries.")
    return runs


def set_value(raw: dict, key: str, value) -> None:
    """Set ``key`` (``"seed"`` or ``"table.key"``) of a raw config to an already TOML-typed ``value``
    (set directly rather than re-parsed from text); the sweep's and the paper tables' overrides."""
    parts = key.split(".")
    if len(parts) == 1:
        raw[key] = value
    elif len(parts) == 2:
        raw.setdefault(parts[0], {})[parts[1]] = value
    else:
        apply_override(raw, f"{key}={value}")  # raises the usual "table.key" error
