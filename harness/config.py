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
what is allowed, raised before any data is read or any training starts. A component's options and
defaults are those of its signature (``metabench.harness.registry``); validating a config imports
neither Keras nor TensorFlow.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import tomllib
from importlib import resources
from pathlib import Path

from metabench.harness.errors import MetabenchError
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
        "meta_optimizer": "adam",  # the outer optimizer: "adam", or "sgd" (plain steps: Reptile's interpolation)
        "meta_lr_schedule": "constant",  # "cosine" / "linear": annealing to meta_lr_min over meta_iterations
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
        "prequential": False,  # true: also the online (prequential) evaluation, support examples one at a time
        # The drifting sinusoid stream (docs/configs.md#drifting-task-stream): "" off, else the online learner
        "stream": "",  # "finetune": online fine-tuning of the trained weights; "ftml": Follow the Meta Leader
        "stream_tasks": 500,  # T, tasks in the stream
        "stream_shots": 5,  # K support points per task (what the learner adapts on before predicting)
        "stream_queries": 10,  # Q query points per task (predicted, then their labels are revealed)
        "stream_drift": 0.02,  # std of each task's amplitude and phase step, as a fraction of their range
        "stream_jump_probability": 0.02,  # chance that a task jumps to a fresh amplitude and phase
        "stream_updates": 5,  # per task: gradient steps (finetune) or meta-updates on the seen tasks (ftml)
        "stream_update_lr": 0.01,  # finetune: the SGD step size (ftml meta-updates with Adam at train.meta_lr)
        "stream_last": 0.2,  # the fraction of the stream's tasks that is its "last part"
        "stream_retest": 50,  # the first N tasks, re-tested at the end (forgetting)
    },
    "engine": {"xla": False, "deterministic": False, "parallel_tasks": 1, "task_map": "auto"},
}
FIXED_CHOICES = {
    "train": {"rotations": ["none", "per_task", "classes"], "meta_optimizer": ["adam", "sgd"],
              "meta_lr_schedule": ["constant", "cosine", "linear"]},
    "evaluation": {"rotations": ["", "none", "per_task", "classes"], "stream": ["", "finetune", "ftml"]},
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

logger = logging.getLogger(__name__)


class ConfigError(MetabenchError, ValueError):
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

    Validation imports no Keras (the registry reads our components' defaults from their source), so
    ``load_config`` is safe anywhere; a caller that then builds the run reads ``raw["backend"]``
    here and selects it before anything imports Keras.
    """
    text, origin = read_config_text(source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"Malformed TOML in {origin}: {error}. Fix the file's syntax.") from error
    apply_overrides(raw, overrides)
    return raw, origin


def parse_value(text: str):
    """A ``--set`` value as TOML (``3``, ``0.4``, ``true``, ``[1, 2]``, ``"x"``), else the bare string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> None:
    """Apply ``--set`` overrides to ``raw`` in place.

    Setting ``algorithm.name`` to another algorithm than the config's starts from that algorithm's
    own defaults: the config's other ``[algorithm]`` options are dropped (and logged) unless they
    are also given with ``--set``; an option given with ``--set`` that the new algorithm does not
    take is then an unknown key when the config is resolved.
    """
    given = raw.get("algorithm")
    before = dict(given) if isinstance(given, dict) else None
    keys = [apply_override(raw, override) for override in overrides]
    after = raw.get("algorithm")
    if before is None or not isinstance(after, dict) or after.get("name") == before.get("name"):
        return
    explicit = {key[1] for key in keys if len(key) == 2 and key[0] == "algorithm"}
    dropped = sorted(k for k in before if k != "name" and k not in explicit)
    for key in dropped:
        after.pop(key, None)
    if dropped:
        logger.info(
            "--set algorithm.name=%s replaces %s: dropped the config's [algorithm] option(s) %s; %s starts from its "
            "own defaults (set an option of it with --set algorithm.OPTION=VALUE).",
            after.get("name"), before.get("name"), ", ".join(dropped), after.get("name"),
        )


def apply_override(raw: dict, override: str) -> tuple[str, ...]:
    """Apply ``section.key=value`` (or ``key=value`` at top level) to ``raw`` in place; returns the key's parts."""
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
    return tuple(parts)


def _check_value(where: str, value, default, choices) -> object:
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is list and not isinstance(value, list):
        value = [value]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"Received {where}={value!r} ({type(value).__name__}); expected {_toml_kind(where, expected, default)}.")
    if expected is list and default:
        item_type = type(default[0])
        converted = []
        for item in value:
            if item_type is float and isinstance(item, int) and not isinstance(item, bool):
                item = float(item)
            if not isinstance(item, item_type) or isinstance(item, bool) != isinstance(default[0], bool):
                items = {int: "integers", float: "numbers", str: "strings", bool: "bools"}.get(item_type, item_type.__name__)
                kind = _toml_kind(where, list, default).replace("a list,", f"a list of {items},", 1)
                raise ConfigError(f"Received {where}={value!r}; expected {kind}.")
            converted.append(item)
        value = converted
    if choices is not None and value not in choices:
        raise ConfigError(f"Received {where}={value!r}; allowed values: {choices}.")
    return value


def _toml_kind(where: str, expected: type, default) -> str:
    """What a value of ``default``'s type is and how TOML (a config file, or ``--set``) writes one."""
    names = {bool: "a bool", int: "an integer", float: "a number", str: "a string", list: "a list"}
    if expected is bool:
        written, example = "true or false", "true"
    elif expected is list or (expected is str and default):
        written = example = json.dumps(default if default else [1, 2])
    elif expected is str:
        written = example = '"text"'
    else:
        written = example = repr(default)
    quote = "'" if " " in example or '"' in example else ""
    return (f"{names.get(expected, 'a ' + expected.__name__)}, written in TOML as {written} "
            f"(e.g. --set {quote}{where}={example}{quote})")


def _resolve_table(where: str, given: dict, defaults: dict, choices: dict, component: str = "") -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, defaults, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        owner = f" ({component} takes no such option)" if component else ""
        raise ConfigError(f"Unknown key {where}{key!r}{owner}.{hint} Allowed keys: {sorted(defaults)}.")
    resolved = {}
    for key, default in defaults.items():
        value = given.get(key, copy.deepcopy(default))
        resolved[key] = _check_value(f"{where}{key}", value, default, choices.get(key))
    return resolved


def resolve_component(table: str, given: dict, origin: str = "config") -> dict:
    """A ``[dataset]``, ``[model]`` or ``[algorithm]`` table (``name`` and options) validated against what
    its registered component takes, every default filled in; raises ``ConfigError`` or ``RegistryError``."""
    registry = COMPONENT_TABLES[table]
    given = dict(given)
    if "name" not in given:
        raise ConfigError(f"{origin} has no {table}.name; choose one of {registry.names()}.")
    name = given.pop("name")
    entry = registry.get(name)
    return {"name": name, **_resolve_table(f"{table}.", given, entry.defaults, entry.choices, f"{table} {name!r}")}


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
    for table in COMPONENT_TABLES:
        if not isinstance(raw.get(table, {}), dict):
            raise ConfigError(f"In {origin}, {table!r} must be a table ([{table}]).")
        resolved[table] = resolve_component(table, raw.get(table, {}), origin)
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
    if train["meta_iterations"] < 0 or (train["meta_iterations"] == 0 and train["meta_lr_schedule"] != "constant"):
        raise ConfigError(
            f"Received train.meta_iterations={train['meta_iterations']}; expected an integer >= 0 (0: no meta-training, "
            f"the initialisation is evaluated; not with train.meta_lr_schedule = \"{train['meta_lr_schedule']}\", which "
            "decays over the iterations)."
        )
    if evaluation["stream"]:
        _check_stream(evaluation)
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
    if train["meta_lr_schedule"] != "constant" and not 0 <= train["meta_lr_min"] <= train["meta_lr"]:
        raise ConfigError(
            f"Received train.meta_lr_min={train['meta_lr_min']} with train.meta_lr={train['meta_lr']}; the "
            f"{train['meta_lr_schedule']} schedule anneals down to meta_lr_min, so it must lie in [0, meta_lr]."
        )
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


def _check_stream(evaluation: dict) -> None:
    """The ``evaluation.stream_*`` options of a config with a stream learner."""
    for key in ("stream_tasks", "stream_shots", "stream_queries", "stream_updates"):
        if evaluation[key] < 1:
            raise ConfigError(f"Received evaluation.{key}={evaluation[key]}; expected a positive integer.")
    if evaluation["stream_tasks"] < 2:
        raise ConfigError(f"Received evaluation.stream_tasks={evaluation['stream_tasks']}; a stream needs at least 2 tasks.")
    for key in ("stream_drift", "stream_jump_probability"):
        if not 0.0 <= evaluation[key] <= 1.0:
            raise ConfigError(f"Received evaluation.{key}={evaluation[key]}; expected a number in [0, 1].")
    if not 0.0 < evaluation["stream_last"] <= 1.0:
        raise ConfigError(f"Received evaluation.stream_last={evaluation['stream_last']}; expected a fraction in (0, 1] of the stream's tasks.")
    if not 1 <= evaluation["stream_retest"] <= evaluation["stream_tasks"]:
        raise ConfigError(
            f"Received evaluation.stream_retest={evaluation['stream_retest']}; expected 1 to evaluation.stream_tasks="
            f"{evaluation['stream_tasks']} (the first tasks, re-tested at the end of the stream)."
        )
    if not evaluation["stream_update_lr"] > 0:
        raise ConfigError(f"Received evaluation.stream_update_lr={evaluation['stream_update_lr']}; expected a positive step size.")


#: Options added after configs were first hashed, with the value that means "as before": while an
#: option holds it, it (and the keys that only matter when it is on) stays out of the hash, so
#: adding the option changed no existing config's hash, stored result or saved baseline.
HASH_NEUTRAL = (
    (("engine", "task_map"), "auto", ()),
    (("train", "meta_optimizer"), "adam", ()),
    (("train", "nan_retries"), 0, (("train", "nan_lr_factor"),)),
    (("evaluation", "ensemble_top_k"), 0, (("evaluation", "validation_split"), ("evaluation", "validation_episodes"))),
    (("algorithm", "test_statistics"), "running", ()),
    (("model", "conv"), "native", ()),
    # Reference-fidelity options (issue 20): MAML++ and Closer Look as their authors' code runs them.
    (("model", "activation"), "relu", ()),
    (("model", "bn_epsilon"), 0.001, ()),
    (("model", "bn_scale"), True, ()),
    (("model", "features"), "flatten", ()),
    (("model", "head_init"), "glorot_uniform", ()),
    # Mixed precision (issue 19): off, a model computes in float32 as before.
    (("model", "dtype_policy"), "float32", ()),
    (("algorithm", "adapt_batch_norm"), True, ()),
    (("algorithm", "bn_final_query_set"), "own", ()),
    (("algorithm", "dampening"), 0.0, ()),
    (("algorithm", "batch_size"), 0, ()),
    (("algorithm", "weight_norm"), False, ()),
    (("algorithm", "pretrain_on"), "support_and_query", ()),
    (("dataset", "preprocess"), "lanczos_inverted", ()),
    # Reptile as its reference code runs it (issue 16): one Adam state carried across tasks.
    (("algorithm", "adam_state"), "per_task", ()),
    (("algorithm", "minibatch_order"), "fixed", ()),
    # Prequential (online) evaluation (issue 18): off, a run evaluates as before.
    (("evaluation", "prequential"), False, ()),
    # The drifting task stream (issue 18): off, a run evaluates as before and its stream options are not read.
    (("evaluation", "stream"), "", tuple(("evaluation", key) for key in (
        "stream_tasks", "stream_shots", "stream_queries", "stream_drift", "stream_jump_probability", "stream_updates",
        "stream_update_lr", "stream_last", "stream_retest"))),
)


def without_neutral(table: str, values: dict) -> dict:
    """``values`` (a config's ``[table]``) without the options at their :data:`HASH_NEUTRAL` value:
    what identifies it wherever an option added later must leave old identities alone (the config
    hash, and the evaluation-set fingerprint for ``[dataset]``)."""
    neutral = {key: value for (where, key), value, _ in HASH_NEUTRAL if where == table}
    return {k: v for k, v in values.items() if not (k in neutral and v == neutral[k])}


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
