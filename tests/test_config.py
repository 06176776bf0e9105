"""Config validation: every bad key or value is refused up front, with a message naming it."""

import copy

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
