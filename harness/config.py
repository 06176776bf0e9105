"""Run configs: TOML files, ``--set`` overrides, validation before anything runs, and the config hash.

A config has top-level keys ``name``, ``seed`` and ``backend`` and the tables below. The
``[dataset]``, ``[model]`` and ``[algorithm]`` tables take a ``name`` plus the options that component
registers (``metabench list`` shows them); the other tables are fixed::

    seed = 0
    [dataset]      name = "omniglot", image_size = 28, split_scheme = "maml"
    [model]        name = "conv4", filters = 64
    [algorithm]    name = "maml", inner_lr = 0.4, inner_steps = 1
    [train]        split, ways, shots, queries, rotations, meta_iterations, meta_batch_size, meta_lr, ...,
                   checkpoint_every, keep_checkpoints, nan_retries, nan_lr_factor
    [evaluation]   split, episodes, seed, shots (one or a list), inner_steps (list), headline_steps, ...
    [engine]       xla, deterministic, parallel_tasks

Every key is checked: an unknown key or a value of the wrong type is an error naming the key and
what is allowed, raised before any data is read or any training starts.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import tomllib
from importlib import resources
from pathlib import Path

from metabench.harness.registry import ALGORITHMS, DATASETS, MODELS, Registry

TOP_LEVEL = {"name": "", "label": "", "seed": 0, "backend": "tensorflow"}
TOP_LEVEL_CHOICES = {"backend": ["tensorflow", "jax"]}

FIXED_TABLES = {
    "train": {
        "split": "train",
        "ways": 0,  # 0: regression (no classes)
        "shots": 1,
        "queries": 15,
        "rotations": "none",
        "meta_iterations": 1000,
        "meta_batch_size": 32,
        "meta_lr": 0.001,
        "meta_lr_schedule": "constant",  # or "cosine": cosine annealing to meta_lr_min over meta_iterations
        "meta_lr_min": 0.00001,
        "clip_meta_grad": 0.0,  # 0: no clipping; else clip each meta-gradient value to [-c, c]
        "log_every": 50,
        "checkpoint_every": 1000,  # save a checkpoint every N meta-iterations (0: only at the end and on SIGINT/SIGTERM)
        "keep_checkpoints": False,  # keep the run's checkpoints after it completes (default: delete them)
        "nan_retries": 0,  # on a NaN/inf loss, retry up to N times from the last checkpoint with a lower meta_lr
        "nan_lr_factor": 0.5,  # each retry multiplies meta_lr (and meta_lr_min) by this factor
    },
    "evaluation": {
        "split": "test",
        "episodes": 600,
        "seed": 1,
        "ways": 0,  # 0: the training ways
        "shots": [0],  # 0: the training shots
        "queries": 0,  # 0: the training queries
        "rotations": "",  # "": the training rotations
        "inner_steps": [0, 1],
        "headline_steps": -1,  # -1: the largest of inner_steps
        "batch_size": 50,
        "ensemble_top_k": 0,  # >0: also evaluate the top-k checkpoints by validation accuracy, logits averaged
        "validation_split": "val",
        "validation_episodes": 200,
    },
    "engine": {"xla": False, "deterministic": False, "parallel_tasks": 1, "task_map": "auto"},
}
FIXED_CHOICES = {
    "train": {"rotations": ["none", "per_task", "classes"], "meta_lr_schedule": ["constant", "cosine"]},
    "evaluation": {"rotations": ["", "none", "per_task", "classes"]},
    "engine": {"task_map": ["auto", "loop", "vectorized", "unrolled"]},
}
COMPONENT_TABLES: dict[str, Registry] = {"dataset": DATASETS, "model": MODELS, "algorithm": ALGORITHMS}
#: keys that change how a run is shown or kept, not what it computes; left out of the config hash
NOT_HASHED = {("name",), ("label",), ("train", "log_every"), ("train", "checkpoint_every"), ("train", "keep_checkpoints")}
#: keys a recipe leaves out besides the display keys: the training seed (runs of one recipe are its seeds)
NOT_IN_RECIPE = {("seed",)}
#: seeds are unsigned 32-bit integers (what NumPy's and Keras's generators accept everywhere)
SEED_LIMIT = 2**32
SHIPPED_CONFIGS = "metabench.harness.configs"


class ConfigError(ValueError):
    """A config that cannot be run: malformed TOML, an unknown key, a wrong type or value."""


def shipped_configs() -> dict[str, str]:
    """Shipped config names -> their first comment line."""
    found = {}
    for item in sorted(resources.files(SHIPPED_CONFIGS).iterdir(), key=lambda p: p.name):
        if item.name.endswith(".toml"):
            first = item.read_text().splitlines()[0] if item.read_text() else ""
            found[item.name[:-5]] = first.lstrip("# ").strip()
    return found


def read_config_text(source: str) -> tuple[str, str]:
    """The TOML text of ``source``: a file path, or the name of a shipped config. Returns (text, origin)."""
    path = Path(source)
    if path.is_file():
        return path.read_text(), str(path)
    if path.suffix == "" and source in shipped_configs():
        return resources.files(SHIPPED_CONFIGS).joinpath(f"{source}.toml").read_text(), f"shipped config {source!r}"
    if path.exists():
        raise ConfigError(f"Config {source!r} is not a file.")
    raise ConfigError(
        f"No config file {source!r} and no shipped config of that name. Shipped configs: "
        f"{sorted(shipped_configs())} (see `metabench list`)."
    )


def load_config(source: str, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Read, override and validate a config; returns the resolved config with every default filled in."""
    raw, origin = read_raw_config(source, overrides)
    return resolve_config(raw, origin)


def read_raw_config(source: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, str]:
    """The parsed TOML of ``source`` with ``overrides`` applied, not yet validated; and its origin.

    Validation imports the registered components (hence Keras), so a caller that must pick the
    Keras backend first reads ``raw["backend"]`` here, selects it, then calls ``resolve_config``.
    """
    text, origin = read_config_text(source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"Malformed TOML in {origin}: {error}. Fix the file's syntax.") from error
    for override in overrides:
        apply_override(raw, override)
    return raw, origin


def parse_value(text: str):
    """A ``--set`` value as TOML (``3``, ``0.4``, ``true``, ``[1, 2]``, ``"x"``), else the bare string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict, override: str) -> None:
    """Apply ``section.key=value`` (or ``key=value`` at top level) to ``raw`` in place."""
    if "=" not in override:
        raise ConfigError(f"Received --set {override!r}; expected KEY=VALUE, e.g. --set algorithm.inner_lr=0.1.")
    key, text = override.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts) or len(parts) > 2:
        raise ConfigError(f"Received --set {override!r}; keys are 'key' or 'table.key', e.g. train.meta_iterations.")
    target = raw
    if len(parts) == 2:
        target = raw.setdefault(parts[0], {})
        if not isinstance(target, dict):
            raise ConfigError(f"Received --set {override!r}, but {parts[0]!r} is not a table in the config.")
    target[parts[-1]] = parse_value(text.strip())


def _check_value(where: str, value, default, choices) -> object:
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is list and not isinstance(value, list):
        value = [value]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(
            f"Received {where}={value!r} ({type(value).__name__}); expected a {expected.__name__}"
            + (f" like {default!r}." if default not in ("", None) else ".")
        )
    if expected is list and default:
        item_type = type(default[0])
        converted = []
        for item in value:
            if item_type is float and isinstance(item, int) and not isinstance(item, bool):
                item = float(item)
            if not isinstance(item, item_type) or isinstance(item, bool) != isinstance(default[0], bool):
                raise ConfigError(f"Received {where}={value!r}; expected a list of {item_type.__name__}.")
            converted.append(item)
        value = converted
    if choices is not None and value not in choices:
        raise ConfigError(f"Received {where}={value!r}; allowed values: {choices}.")
    return value


def _resolve_table(where: str, given: dict, defaults: dict, choices: dict) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, defaults, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown key {where}{key!r}.{hint} Allowed keys: {sorted(defaults)}.")
    resolved = {}
    for key, default in defaults.items():
        value = given.get(key, copy.deepcopy(default))
        resolved[key] = _check_value(f"{where}{key}", value, default, choices.get(key))
    return resolved


def resolve_config(raw: dict, origin: str = "config") -> dict:
    """Validate ``raw`` (a parsed TOML dict) and fill defaults; raises ``ConfigError``."""
    tables = set(FIXED_TABLES) | set(COMPONENT_TABLES)
    top_given = {k: v for k, v in raw.items() if k not in tables}
    resolved = _resolve_table("", top_given, TOP_LEVEL, TOP_LEVEL_CHOICES)
    for table, defaults in FIXED_TABLES.items():
        given = raw.get(table, {})
        if not isinstance(given, dict):
            raise ConfigError(f"In {origin}, {table!r} must be a table ([{table}]).")
        resolved[table] = _resolve_table(f"{table}.", given, defaults, FIXED_CHOICES.get(table, {}))
    for table, registry in COMPONENT_TABLES.items():
        given = dict(raw.get(table, {}))
        if not isinstance(raw.get(table, {}), dict):
            raise ConfigError(f"In {origin}, {table!r} must be a table ([{table}]).")
        if "name" not in given:
            raise ConfigError(f"{origin} has no {table}.name; choose one of {registry.names()}.")
        name = given.pop("name")
        entry = registry.get(name)
        resolved[table] = {"name": name, **_resolve_table(f"{table}.", given, entry.defaults, entry.choices)}
    _check_numbers(resolved)
    return resolved


def _check_numbers(config: dict) -> None:
    train, evaluation = config["train"], config["evaluation"]
    for key, value in (("seed", config["seed"]), ("evaluation.seed", evaluation["seed"])):
        if not 0 <= value < SEED_LIMIT:
            raise ConfigError(f"Received {key}={value}; expected an integer with 0 <= seed < 2**32 ({SEED_LIMIT}).")
    positive = [
        ("train.shots", train["shots"]),
        ("train.queries", train["queries"]),
        ("train.meta_iterations", train["meta_iterations"]),
        ("train.meta_batch_size", train["meta_batch_size"]),
        ("train.log_every", train["log_every"]),
        ("evaluation.episodes", evaluation["episodes"]),
        ("evaluation.batch_size", evaluation["batch_size"]),
    ]
    for key, value in positive:
        if value < 1:
            raise ConfigError(f"Received {key}={value}; expected a positive integer.")
    for key, value in (("train.ways", train["ways"]), ("evaluation.ways", evaluation["ways"]), ("evaluation.queries", evaluation["queries"])):
        if value < 0:
            raise ConfigError(f"Received {key}={value}; expected a positive integer (or 0 for the default).")
    for key in ("checkpoint_every", "nan_retries"):
        if train[key] < 0:
            raise ConfigError(f"Received train.{key}={train[key]}; expected an integer >= 0 (0: off).")
    if not 0.0 < train["nan_lr_factor"] < 1.0:
        raise ConfigError(
            f"Received train.nan_lr_factor={train['nan_lr_factor']}; expected a factor strictly between 0 and 1 "
            "(each NaN retry multiplies the meta learning rate by it)."
        )
    if not train["meta_lr"] > 0:
        raise ConfigError(f"Received train.meta_lr={train['meta_lr']}; expected a positive learning rate.")
    if any(s < 0 for s in evaluation["shots"]) or not evaluation["shots"]:
        raise ConfigError(f"Received evaluation.shots={evaluation['shots']}; expected positive integers (0: the training shots).")
    steps = evaluation["inner_steps"]
    if not steps or any(s < 0 for s in steps):
        raise ConfigError(f"Received evaluation.inner_steps={steps}; expected a list of inner-step counts >= 0.")
    if evaluation["ensemble_top_k"] < 0:
        raise ConfigError(f"Received evaluation.ensemble_top_k={evaluation['ensemble_top_k']}; expected 0 (off) or a positive count.")
    if evaluation["ensemble_top_k"] and train["checkpoint_every"] < 1:
        raise ConfigError(
            "evaluation.ensemble_top_k ranks the checkpoints saved every train.checkpoint_every iterations; "
            f"set train.checkpoint_every > 0 (received {train['checkpoint_every']})."
        )
    headline = evaluation["headline_steps"]
    if headline != -1 and headline not in steps:
        raise ConfigError(f"Received evaluation.headline_steps={headline}; it must be one of evaluation.inner_steps={steps}.")


#: Options added after configs were first hashed, with the value that means "as before": while an
#: option holds it, it (and the keys that only matter when it is on) stays out of the hash, so
#: adding the option changed no existing config's hash, stored result or saved baseline.
HASH_NEUTRAL = (
    (("engine", "task_map"), "auto", ()),
    (("train", "nan_retries"), 0, (("train", "nan_lr_factor"),)),
    (("evaluation", "ensemble_top_k"), 0, (("evaluation", "validation_split"), ("evaluation", "validation_episodes"))),
    (("algorithm", "test_statistics"), "running", ()),
    (("model", "conv"), "native", ()),
)


def hashed_view(config: dict, *, leave_out=frozenset()) -> dict:
    """The part of a resolved config that decides what a run computes (what ``config_hash`` hashes).

    ``leave_out``: further ``(table, key)`` or ``(key,)`` paths to drop (``recipe_view`` drops the seed).
    """
    hashed = copy.deepcopy(config)
    for path in NOT_HASHED | set(leave_out):
        node = hashed
        for part in path[:-1]:
            node = node.get(part, {})
        node.pop(path[-1], None)
    for (table, key), neutral, dependents in HASH_NEUTRAL:
        node = hashed.get(table, {})
        if key in node and node[key] == neutral:
            node.pop(key)
            for dependent_table, dependent in dependents:
                hashed.get(dependent_table, {}).pop(dependent, None)
    return hashed


def config_hash(config: dict) -> str:
    """sha256 hex of the canonical JSON of ``hashed_view(config)``: display-only keys
    (:data:`NOT_HASHED`) and options at their :data:`HASH_NEUTRAL` value are left out."""
    return hashlib.sha256(json.dumps(hashed_view(config), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def recipe_view(config: dict) -> dict:
    """What a recipe is: the hashed view of a resolved config without the training seed."""
    return hashed_view(config, leave_out=NOT_IN_RECIPE)


def recipe_hash(config: dict) -> str:
    """sha256 hex of the canonical JSON of ``recipe_view(config)``.

    Runs pool as seeds of one result only when their recipe hashes are equal: two configs that
    differ in anything but the seed and the display keys (name, label, logging, checkpointing)
    are two recipes, reported, compared and checked apart.
    """
    return hashlib.sha256(json.dumps(recipe_view(config), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dump_toml(config: dict) -> str:
    """A resolved config as TOML text (what `metabench run --print-config` shows)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for table, values in config.items():
        if isinstance(values, dict):
            lines.append(f"\n[{table}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"
