"""Config validation: every bad key or value is refused up front, with a message naming it."""

import copy
import subprocess
import sys

import pytest

from metabench.harness.config import ConfigError, apply_override, config_hash, load_config, resolve_config, shipped_configs
from metabench.harness.registry import ALGORITHMS, RegistryError


def _sinusoid(**tables):
    raw = {"dataset": {"name": "sinusoid"}, "model": {"name": "mlp"}, "algorithm": {"name": "maml"}}
    for table, values in tables.items():
        raw.setdefault(table, {}).update(values)
    return raw


def test_shipped_configs_all_resolve():
    names = shipped_configs()
    assert {"quickstart", "quickstart_omniglot", "sinusoid_maml", "omniglot_5way1shot_maml"} <= set(names)
    for name in names:
        config = load_config(name)
        assert config["algorithm"]["name"] in ALGORITHMS.names()


def test_validating_a_config_imports_neither_keras_nor_tensorflow():
    """`metabench list` and validation read our components' defaults from source: a fresh process stays light."""
    code = (
        "import sys; from metabench.harness.config import load_config, config_hash; "
        "config = load_config('omniglot_5way1shot_baseline', ['algorithm.name=mamlpp', 'model.name=conv4']); "
        "config_hash(config); load_config('sinusoid_reptile'); "
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_paper_protocol_values_in_shipped_configs():
    sinusoid = load_config("sinusoid_maml")
    assert sinusoid["model"]["hidden"] == [40, 40]
    assert (sinusoid["train"]["shots"], sinusoid["algorithm"]["inner_lr"], sinusoid["algorithm"]["inner_steps"]) == (10, 0.01, 1)
    assert (sinusoid["train"]["meta_batch_size"], sinusoid["train"]["meta_lr"]) == (25, 0.001)
    assert sinusoid["evaluation"]["shots"] == [5, 10] and {1, 5, 10} <= set(sinusoid["evaluation"]["inner_steps"])
    omniglot = load_config("omniglot_5way1shot_maml")
    assert (omniglot["train"]["ways"], omniglot["train"]["shots"], omniglot["train"]["queries"]) == (5, 1, 15)
    assert (omniglot["algorithm"]["inner_lr"], omniglot["algorithm"]["inner_steps"]) == (0.4, 1)
    assert omniglot["evaluation"]["headline_steps"] == 3 and omniglot["train"]["meta_batch_size"] == 32


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"Unknown key algorithm\.'inner_l'.*Did you mean 'inner_lr'"):
        resolve_config(_sinusoid(algorithm={"inner_l": 0.1}))


def test_unknown_top_level_table_key():
    with pytest.raises(ConfigError, match=r"Unknown key 'sed'.*Did you mean 'seed'"):
        resolve_config(dict(_sinusoid(), sed=3))


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"train\.meta_iterations='many' \(str\); expected an integer, written in TOML as 1000"):
        resolve_config(_sinusoid(train={"meta_iterations": "many"}))


def test_choices_are_listed():
    with pytest.raises(ConfigError, match=r"train\.rotations='sideways'.*allowed values"):
        resolve_config(_sinusoid(train={"rotations": "sideways"}))


def test_an_annealed_outer_step_needs_iterations_and_a_floor_below_its_start():
    with pytest.raises(ConfigError, match=r"train\.meta_optimizer='nesterov'.*allowed values"):
        resolve_config(_sinusoid(train={"meta_optimizer": "nesterov"}))
    with pytest.raises(ConfigError, match=r"meta_lr_min=2\.0 with train\.meta_lr=1\.0; the linear schedule anneals down"):
        resolve_config(_sinusoid(train={"meta_optimizer": "sgd", "meta_lr": 1.0, "meta_lr_schedule": "linear", "meta_lr_min": 2.0}))
    with pytest.raises(ConfigError, match=r"meta_iterations=0.*not with train\.meta_lr_schedule = \"linear\""):
        resolve_config(_sinusoid(train={"meta_iterations": 0, "meta_lr_schedule": "linear"}))
    reptile = resolve_config(_sinusoid(train={"meta_optimizer": "sgd", "meta_lr": 1.0, "meta_lr_schedule": "linear", "meta_lr_min": 0.0}))
    assert (reptile["train"]["meta_optimizer"], reptile["train"]["meta_lr_schedule"]) == ("sgd", "linear")


@pytest.mark.parametrize("key", ["shots", "queries", "meta_batch_size"])
def test_non_positive_counts_are_refused(key):
    with pytest.raises(ConfigError, match=rf"train\.{key}=0; expected a positive integer"):
        resolve_config(_sinusoid(train={key: 0}))


def test_unknown_algorithm_suggests_the_closest():
    with pytest.raises(RegistryError, match=r"Unknown algorithm 'mamll'\. Did you mean 'maml'\?"):
        resolve_config(dict(_sinusoid(), algorithm={"name": "mamll"}))


def test_malformed_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nmeta_iterations = 3\n")
    with pytest.raises(ConfigError, match=r"Malformed TOML in .*bad\.toml"):
        load_config(str(bad))


def test_missing_config_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"No config file 'nope\.toml'.*quickstart"):
        load_config("nope.toml")


def test_overrides_parse_toml_values_and_bare_strings():
    raw = _sinusoid()
    apply_override(raw, "algorithm.inner_lr=0.1")
    apply_override(raw, "evaluation.inner_steps=[0, 2]")
    apply_override(raw, "dataset.name=sinusoid")
    config = resolve_config(raw)
    assert config["algorithm"]["inner_lr"] == 0.1
    assert config["evaluation"]["inner_steps"] == [0, 2]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override(raw, "algorithm.inner_lr")


def test_headline_steps_must_be_recorded():
    with pytest.raises(ConfigError, match=r"headline_steps=3; it must be one of evaluation.inner_steps=\[0, 1\]"):
        resolve_config(_sinusoid(evaluation={"headline_steps": 3}))


def test_config_hash_ignores_display_keys_only():
    base = resolve_config(_sinusoid())
    renamed = resolve_config(dict(_sinusoid(train={"log_every": 7}), name="other"))
    changed = resolve_config(_sinusoid(algorithm={"inner_lr": 0.02}))
    assert config_hash(base) == config_hash(renamed)
    assert config_hash(base) != config_hash(changed)
    assert len(config_hash(base)) == 64


def test_an_option_added_later_leaves_existing_hashes_alone_at_its_neutral_value():
    native = load_config("omniglot_5way1shot_maml")
    assert native["model"]["conv"] == "native"
    before_the_option = copy.deepcopy(native)
    del before_the_option["model"]["conv"]  # a config resolved before conv4 had the option
    assert config_hash(native) == config_hash(before_the_option)
    matmul = load_config("omniglot_5way1shot_maml", ["model.conv=matmul"])
    assert config_hash(matmul) != config_hash(native)


# ------------------------------------------------------------------ every key of a resolved config in the hash

# The keys a config's hashes may leave out, declared here on purpose and not read from harness.config:
# adding a key to those sets there, or dropping one from the hash any other way, fails a test below.
DISPLAY_KEYS = {("name",), ("label",), ("train", "log_every"), ("train", "checkpoint_every"), ("train", "keep_checkpoints")}
SEED_ONLY_IN_CONFIG_HASH = {("seed",)}  # runs of one recipe are its seeds: in config_hash, not recipe_hash
# keys that only matter while another option is off its neutral value (HASH_NEUTRAL's dependents)
ACTIVE_ONLY_WITH = {
    ("train", "nan_lr_factor"): (("train", "nan_retries"), 0),
    ("evaluation", "validation_split"): (("evaluation", "ensemble_top_k"), 0),
    ("evaluation", "validation_episodes"): (("evaluation", "ensemble_top_k"), 0),
    **{("evaluation", key): (("evaluation", "stream"), "") for key in (
        "stream_tasks", "stream_shots", "stream_queries", "stream_drift", "stream_jump_probability", "stream_updates",
        "stream_update_lr", "stream_last", "stream_retest")},
}


def _leaves(config: dict, prefix: tuple = ()):
    """Every leaf key path of a resolved config, as found in the config itself (a new key is covered)."""
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key)


def _get(config: dict, path: tuple):
    for part in path:
        config = config[part]
    return config


def _set(config: dict, path: tuple, value) -> dict:
    changed = copy.deepcopy(config)
    node = changed
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return changed


def _changed(value):
    """Another value of the same type as ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, str):
        return value + "-changed"
    if isinstance(value, list):
        return [*value, _changed(value[-1]) if value else 1]
    raise TypeError(f"a config value of type {type(value).__name__} ({value!r}): teach _changed to change it")


def _hash_coverage_failures(config: dict) -> list[str]:
    """For every leaf of ``config``, what is wrong with how its change moves config_hash and recipe_hash."""
    from metabench.harness.config import recipe_hash

    failures = []
    hashes = (config_hash(config), recipe_hash(config))
    for path in _leaves(config):
        changed = _set(config, path, _changed(_get(config, path)))
        moved = (config_hash(changed) != hashes[0], recipe_hash(changed) != hashes[1])
        controller = ACTIVE_ONLY_WITH.get(path)
        if path in DISPLAY_KEYS or (controller and _get(config, controller[0]) == controller[1]):
            expected = (False, False)
        elif path in SEED_ONLY_IN_CONFIG_HASH:
            expected = (True, False)
        else:
            expected = (True, True)
        if moved != expected:
            failures.append(f"{'.'.join(path)}: changing it moved (config_hash, recipe_hash) = {moved}, expected {expected}")
    return failures


def _every_neutral_option_on(config: dict) -> dict:
    """``config`` with every HASH_NEUTRAL option off its neutral value, so the keys that depend on one count."""
    from metabench.harness.config import HASH_NEUTRAL

    for (table, key), neutral, _ in HASH_NEUTRAL:
        if key in config.get(table, {}) and config[table][key] == neutral:
            config = _set(config, (table, key), _changed(neutral))
    return config


def test_the_keys_left_out_of_the_hashes_are_exactly_the_declared_ones():
    from metabench.harness.config import HASH_NEUTRAL, NOT_HASHED, NOT_IN_RECIPE

    assert NOT_HASHED == DISPLAY_KEYS, "a key left out of the hashes must be a display key, declared in this test too"
    assert NOT_IN_RECIPE == SEED_ONLY_IN_CONFIG_HASH
    dependents = {dependent: (where, neutral) for where, neutral, deps in HASH_NEUTRAL for dependent in deps}
    assert dependents == ACTIVE_ONLY_WITH


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_key_of_a_shipped_config_moves_its_hashes_but_the_display_keys(name):
    config = load_config(name)
    assert ("train", "meta_iterations") in set(_leaves(config))
    assert _hash_coverage_failures(config) == []
    assert _hash_coverage_failures(_every_neutral_option_on(config)) == []


def test_an_option_at_its_neutral_value_hashes_as_if_it_did_not_exist():
    from metabench.harness.config import HASH_NEUTRAL

    for name in shipped_configs():
        config = _every_neutral_option_on(load_config(name))
        for (table, key), neutral, dependents in HASH_NEUTRAL:
            if key not in config.get(table, {}):
                continue
            at_neutral = _set(config, (table, key), neutral)
            without = copy.deepcopy(at_neutral)
            del without[table][key]
            for dependent_table, dependent in dependents:
                without[dependent_table].pop(dependent)
            assert config_hash(at_neutral) == config_hash(without), (name, table, key)
            assert config_hash(at_neutral) != config_hash(config), (name, table, key)


def test_the_hash_coverage_check_bites_on_a_key_left_out_of_the_hash(monkeypatch):
    from metabench.harness import config as config_module

    config = load_config("quickstart")
    monkeypatch.setattr(config_module, "NOT_HASHED", config_module.NOT_HASHED | {("train", "meta_iterations")})
    failures = _hash_coverage_failures(config)
    assert [f.split(":")[0] for f in failures] == ["train.meta_iterations"]
