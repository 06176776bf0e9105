"""Defaults have one source, the signature: the registry reads ours from source (no Keras) and
plugins' with ``inspect``; the two readings agree, and a default a config cannot hold is refused."""

import importlib
import inspect
import textwrap

import pytest

from metabench.harness import registry
from metabench.harness.registry import ALGORITHMS, DATASETS, MODELS, DefaultsError, Registry


def _typed(defaults: dict) -> dict:
    """Option -> (type, value): 0 and 0.0 are equal in Python but not as config options."""
    return {key: (type(value), value) for key, value in defaults.items()}


def _signature_of(target: str) -> dict:
    """The keyword defaults of ``target``, imported, as ``inspect.signature`` sees them."""
    module, name = target.split(":")
    component = getattr(importlib.import_module(module), name)
    defaults = {p.name: p.default for p in inspect.signature(component).parameters.values() if p.default is not p.empty}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in defaults.items()}


@pytest.mark.parametrize("entry", [*ALGORITHMS.entries(), *MODELS.entries()], ids=lambda entry: entry.name)
def test_the_source_reading_of_each_builtin_equals_its_signature(entry):
    assert entry.target, f"built-in {entry.name!r} is registered by target"
    assert _typed(entry.defaults) == _typed(_signature_of(entry.target))
    assert not any(key in inspect.signature(entry.factory).parameters for key in entry.defaults)  # options pass through


@pytest.mark.parametrize("entry", DATASETS.entries(), ids=lambda entry: entry.name)
def test_dataset_options_are_the_signature_without_the_run_arguments(entry):
    dataset = {"sinusoid": "Sinusoid", "omniglot": "Omniglot", "miniimagenet": "MiniImageNet",
               "point_navigation": "PointNavigation"}[entry.name]
    signature = _signature_of(f"metabench.datasets.{entry.name}:{dataset}")
    expected = {k: v for k, v in signature.items() if k not in registry.DATASET_RUN_ARGUMENTS}
    assert _typed(entry.defaults) == _typed(expected) and entry.defaults


def _module(tmp_path, monkeypatch, source: str) -> str:
    """A module ``fake_components`` holding ``source``, importable from ``tmp_path``; returns its name."""
    (tmp_path / "fake_components.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._module_tree.cache_clear()
    return "fake_components"


def test_a_subclass_without_init_takes_its_base_classes_from_the_same_module(tmp_path, monkeypatch):
    module = _module(tmp_path, monkeypatch, """
        import keras  # never imported: the module is only parsed

        class Base:
            def __init__(self, *, lr=0.1, steps=-1, sizes=(40, 40), mode="a", flag=False):
                pass

        class Child(Base):
            kind = "cosine"

        def build(shape, outputs, *, width=64, eps=1e-3):
            pass
    """)
    assert registry.source_defaults(f"{module}:Child") == {"lr": 0.1, "steps": -1, "sizes": [40, 40], "mode": "a", "flag": False}
    assert registry.source_defaults(f"{module}:build") == {"width": 64, "eps": 0.001}
    assert registry.source_defaults(f"{module}:Base", skip=("mode",)) == {"lr": 0.1, "steps": -1, "sizes": [40, 40], "flag": False}


@pytest.mark.parametrize(
    "source, message",
    [
        ("import math\nclass A:\n    def __init__(self, *, phase=math.pi): ...\n",
         r"fake_components:A: option 'phase' defaults to math\.pi, which is not a literal; write the value itself"),
        ("class A:\n    def __init__(self, *, lr=None): ...\n",
         r"option 'lr' defaults to None, which a config cannot write\. Default it to a value of its type"),
        ("class A:\n    def __init__(self, *, lr=0.1, **options): ...\n",
         r"fake_components:A takes \*\*options; name each option as a keyword argument"),
        ("from elsewhere import Base\nclass A(Base):\n    pass\n",
         r"class A has no __init__, and its first base class is not defined in the same module"),
        ("class B: ...\n", r"its module defines no class or function 'A' at top level"),
    ],
)  # fmt: skip
def test_a_default_the_registry_cannot_read_is_an_error_naming_it(tmp_path, monkeypatch, source, message):
    module = _module(tmp_path, monkeypatch, source)
    with pytest.raises(DefaultsError, match=message):
        registry.source_defaults(f"{module}:A")


def test_a_target_without_a_colon_or_module_is_refused_with_an_example():
    with pytest.raises(DefaultsError, match=r"Received target 'metabench\.algorithms\.maml\.MAML'; expected 'package\.module:Name'"):
        registry.source_defaults("metabench.algorithms.maml.MAML")
    with pytest.raises(DefaultsError, match=r"Cannot read the source of module 'metabench\.algorithms\.nothing'"):
        registry.source_defaults("metabench.algorithms.nothing:X")


class _Plugin:
    """A plugin algorithm."""

    config_choices = {"mode": ["a", "b"]}

    def __init__(self, *, lr=0.1, sizes=(1, 2), mode="a"):
        self.options = {"lr": lr, "sizes": sizes, "mode": mode}


class _OldPlugin:
    """A plugin written before signatures were read: it takes **options and declares them."""

    config_defaults = {"lr": 0.5}

    def __init__(self, **options):
        self.options = options


class _EntryPoint:
    def __init__(self, name, factory):
        self.name, self.value, self.dist, self._factory = name, f"tests:{name}", None, factory

    def load(self):
        return self._factory


def test_plugins_register_their_signature_or_their_declared_defaults_and_their_choices(monkeypatch):
    points = [_EntryPoint("plugin", _Plugin), _EntryPoint("old_plugin", _OldPlugin)]
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: points)
    plugins = Registry("algorithm", "metabench.algorithms", lambda r: None)
    assert plugins.get("plugin").defaults == {"lr": 0.1, "sizes": [1, 2], "mode": "a"}
    assert plugins.get("plugin").choices == {"mode": ["a", "b"]} and plugins.get("plugin").summary == "A plugin algorithm."
    assert plugins.get("old_plugin").defaults == {"lr": 0.5}


def test_a_plugin_whose_options_cannot_be_read_is_skipped_with_a_warning(monkeypatch, caplog):
    class Unreadable:
        def __init__(self, *, callback=None):
            pass

    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: [_EntryPoint("unreadable", Unreadable)])
    plugins = Registry("algorithm", "metabench.algorithms", lambda r: None)
    assert plugins.names() == []
    assert "Skipping algorithm plugin 'unreadable'" in caplog.text and "option 'callback' defaults to None" in caplog.text


def test_a_builtin_that_cannot_be_read_fails_every_look_up_not_just_the_first():
    def broken(r):
        r.register_target("broken", "metabench.algorithms.maml.MAML")

    builtins = Registry("algorithm", "metabench.algorithms", broken)
    for _ in range(2):
        with pytest.raises(DefaultsError, match="expected 'package.module:Name'"):
            builtins.names()
