"""Name -> factory registries for algorithms, datasets and models.

Filled by our own modules below and by other packages through the entry-point groups
``metabench.algorithms``, ``metabench.datasets`` and ``metabench.models``.

Defaults are written once, in the signature, as scikit-learn reads an estimator's parameters: a
component's config options are the parameters of its class's ``__init__`` (or of its function)
that have a default; an option's default is that default and its type the default's type (a
tuple reads as a list: TOML writes arrays). So a default is a bool, number, string or list, never
``None``, which a config cannot write: an option whose default means "the same as another option"
defaults to ``0`` or ``""`` and says so (MAML's ``eval_inner_lr=0.0``: ``inner_lr``), and a
setting no config chooses is a class attribute, not an ``__init__`` argument (Baseline++'s
cosine head). A dataset's :data:`DATASET_RUN_ARGUMENTS` (where its files are, whether it shows
progress) are passed by the harness and are not options.

Our algorithms and models are registered by target (``"metabench.algorithms.maml:MAML"``) and
imported when first built: they import Keras, whose backend must be chosen first, and neither
``metabench list`` nor config validation may load TensorFlow. So their defaults are read from
their module's source with ``ast`` (:func:`source_defaults`): each default must be a literal, and
a class with no ``__init__`` of its own takes its base class's, the base defined in the same
module. Our datasets (NumPy only, imported here) and plugins (loaded anyway) are read with
``inspect.signature`` (:func:`signature_defaults`); ``tests/test_registry.py`` checks that the
two readings of our algorithms and models agree.

A plugin's entry point names a class or function; it may declare ``config_choices`` (option ->
allowed values). For compatibility with plugins written before defaults were read from
signatures, a factory that declares ``config_defaults`` (option -> default) is taken at its word
instead of its signature: the one way to register a factory that takes ``**options``. Example, in
a plugin's ``pyproject.toml``::

    [project.entry-points."metabench.algorithms"]
    my_maml = "my_package.algo:MyMAML"
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
from pathlib import Path
from typing import Callable

from metabench.datasets.miniimagenet import MiniImageNet
from metabench.datasets.omniglot import Omniglot
from metabench.datasets.point_navigation import PointNavigation
from metabench.datasets.sinusoid import Sinusoid
from metabench.harness.errors import MetabenchError

logger = logging.getLogger(__name__)


#: a dataset's parameters that the harness passes itself (or leaves at their default): where its
#: files are and whether it shows progress; never config options
DATASET_RUN_ARGUMENTS = ("data_dir", "cache_dir", "show_progress")
#: the Python types of a config value: TOML's bool, integer, float, string and array
CONFIG_TYPES = (bool, int, float, str, list)


class RegistryError(MetabenchError, KeyError):
    """An unknown name; the message lists what is registered and the closest match."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


class DefaultsError(MetabenchError, TypeError):
    """A component whose option defaults cannot be read from its signature: the message names the
    component, the option and how to write it."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered component.

    Attributes:
        name: the name configs use.
        factory: ``factory(**options)`` builds it; datasets also receive ``data_dir`` and ``cache_dir``,
            models ``(input_shape, outputs)`` first.
        defaults: option -> default value; the value's type is the option's type.
        choices: option -> allowed values.
        summary: one line for ``metabench list``.
        source: ``"metabench"`` or the distribution that registered it.
        target: ``"package.module:Name"`` of one of ours registered by target (imported when first
            built, its defaults read from source); ``""`` otherwise.
    """

    name: str
    factory: Callable
    defaults: dict
    choices: dict
    summary: str = ""
    source: str = "metabench"
    target: str = ""


class Registry:
    """Registered components of one kind, looked up by name with a "did you mean" on a miss.

    ``run_arguments``: parameters the harness passes itself, left out of the options read from a
    signature (:data:`DATASET_RUN_ARGUMENTS` for datasets).
    """

    def __init__(self, kind: str, group: str, builtins: Callable[["Registry"], None], run_arguments=()):
        self.kind = kind
        self.group = group
        self.run_arguments = tuple(run_arguments)
        self._builtins = builtins
        self._entries: dict[str, Entry] | None = None

    def register(self, name, factory, defaults=None, choices=None, summary="", source="metabench", target="") -> None:
        """Register ``factory`` under ``name`` with the options ``defaults`` (option -> default) and ``choices``."""
        entries = self._entries if self._entries is not None else {}
        if name in entries:
            raise ValueError(f"A {self.kind} named {name!r} is already registered (by {entries[name].source}).")
        entries[name] = Entry(name, factory, dict(defaults or {}), dict(choices or {}), summary, source, target)
        self._entries = entries

    def register_target(self, name: str, target: str, choices=None, summary="", call: Callable | None = None) -> None:
        """Register our ``target`` (``"package.module:Name"``) without importing it.

        Its options and defaults are read from its module's source (:func:`source_defaults`); it is
        imported when first built. ``call(component, *args, **options)`` builds it where the
        registry's call differs from ``component(*args, **options)``.
        """
        defaults = source_defaults(target, skip=self.run_arguments)
        self.register(name, deferred_factory(target, call), defaults, choices, summary, target=target)

    def _load(self) -> dict[str, Entry]:
        if self._entries is None:
            self._entries = {}
            try:
                self._builtins(self)
            except Exception:
                self._entries = None  # half filled, it would hide this error from the next look-up
                raise
            for point in importlib.metadata.entry_points(group=self.group):
                self._register_entry_point(point)
        return self._entries

    def _register_entry_point(self, point) -> None:
        """Register a plugin's entry point with its signature's defaults; a broken one is skipped with a warning."""
        try:
            factory = point.load()
            defaults = plugin_defaults(factory, self.run_arguments)
        except Exception as error:  # a broken plugin must not break the harness
            logger.warning("Skipping %s plugin %r: cannot load %s or read its options (%s)", self.kind, point.name, point.value, error)
            return
        source = point.dist.name if point.dist else point.value
        summary = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""
        self.register(point.name, factory, defaults, getattr(factory, "config_choices", {}), summary, source)

    def names(self) -> list[str]:
        return sorted(self._load())

    def get(self, name: str) -> Entry:
        entries = self._load()
        if name not in entries:
            close = difflib.get_close_matches(str(name), entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RegistryError(f"Unknown {self.kind} {name!r}.{hint} Registered: {sorted(entries)}.")
        return entries[name]

    def entries(self) -> list[Entry]:
        return [self._load()[name] for name in self.names()]


# ------------------------------------------------------------------- defaults read from signatures


def source_defaults(target: str, skip=()) -> dict:
    """The option defaults of ``target`` (``"package.module:Name"``, a class or a function), read
    from its module's source with ``ast``, without importing it (and so without Keras).

    The options are the parameters of the function, or of the class's ``__init__``, that have a
    default, but those in ``skip``, in signature order. Raises ``DefaultsError`` on a default that
    is not a literal, on ``**options`` (options the signature does not name) and on a target that
    cannot be found.
    """
    module, name = split_target(target)
    function = _signature_node(_module_tree(module), name, target)
    if function.args.kwarg is not None:
        raise DefaultsError(
            f"{target} takes **{function.args.kwarg.arg}; name each option as a keyword argument with its default, "
            "so that configs can be checked against it."
        )
    return {parameter.arg: _literal(node, parameter.arg, target) for parameter, node in _defaulted(function.args)
            if parameter.arg not in skip}  # fmt: skip


def signature_defaults(factory: Callable, skip=()) -> dict:
    """The option defaults of ``factory`` (a class or a function, imported), read with ``inspect.signature``:
    its parameters that have a default, but those in ``skip``, in signature order."""
    owner = f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', repr(factory))}"
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError) as error:
        raise DefaultsError(f"{owner} has no signature to read its options from ({error}); declare config_defaults.") from error
    return {p.name: config_value(p.default, p.name, owner) for p in parameters if p.default is not p.empty and p.name not in skip}


def plugin_defaults(factory: Callable, skip=()) -> dict:
    """A plugin's option defaults: its signature's, or its ``config_defaults`` where it declares them
    (plugins written before defaults were read from signatures; a factory taking ``**options``)."""
    declared = getattr(factory, "config_defaults", None)
    if declared is not None:
        return dict(declared)
    return signature_defaults(factory, skip)


def config_value(value, option: str, owner: str):
    """``value``, the default of ``option`` of ``owner``, as a config value: tuples become lists (TOML
    writes arrays); ``None`` and values TOML cannot write raise ``DefaultsError`` saying what to write."""
    if isinstance(value, (tuple, list)):
        return [config_value(item, option, owner) for item in value]
    if value is None:
        raise DefaultsError(
            f"{owner}: option {option!r} defaults to None, which a config cannot write. Default it to a value of its "
            "type with a documented meaning (as MAML's eval_inner_lr=0.0 means inner_lr), or make it a class "
            "attribute if no config should choose it."
        )
    if not isinstance(value, CONFIG_TYPES):
        raise DefaultsError(
            f"{owner}: option {option!r} defaults to {value!r} ({type(value).__name__}); a config option's default is "
            "a bool, number, string or list of them."
        )
    return value


def split_target(target: str) -> tuple[str, str]:
    """``"package.module:Name"`` -> ``("package.module", "Name")``."""
    module, colon, name = target.partition(":")
    if not colon or not module or not name:
        raise DefaultsError(f"Received target {target!r}; expected 'package.module:Name', e.g. 'metabench.algorithms.maml:MAML'.")
    return module, name


def deferred_factory(target: str, call: Callable | None = None) -> Callable:
    """``factory(*args, **options)`` that imports ``target`` when called and builds it: ``call(component,
    *args, **options)`` if ``call`` is given, else ``component(*args, **options)``."""
    module, name = split_target(target)

    def factory(*args, **options):
        # Deferred: our algorithms and models import Keras, which reads its backend once, at import.
        component = getattr(importlib.import_module(module), name)
        return call(component, *args, **options) if call is not None else component(*args, **options)

    factory.__doc__ = f"Import {target} and build it."
    return factory


@functools.lru_cache(maxsize=None)
def _module_tree(module: str) -> ast.Module:
    """The parsed source of ``module``, found without importing it (its parent packages are imported)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.has_location or not str(spec.origin).endswith(".py"):
        raise DefaultsError(f"Cannot read the source of module {module!r}: no such .py module; check the target's module name.")
    return ast.parse(Path(spec.origin).read_text(), spec.origin)


def _signature_node(tree: ast.Module, name: str, target: str) -> ast.FunctionDef:
    """The top-level function ``name`` of ``tree``, or the ``__init__`` of class ``name``; a class
    without one takes its first base class's, which must be defined in the same module."""
    definitions = {node.name: node for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
    if name not in definitions:
        raise DefaultsError(f"{target}: its module defines no class or function {name!r} at top level; check the target's name.")
    node = definitions[name]
    while isinstance(node, ast.ClassDef):
        init = next((item for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "__init__"), None)
        if init is not None:
            return init
        base = node.bases[0] if node.bases else None
        if not isinstance(base, ast.Name) or base.id not in definitions or base.id == node.name:
            raise DefaultsError(
                f"{target}: class {node.name} has no __init__, and its first base class is not defined in the same "
                f"module to take one from; give {node.name} an __init__ whose keyword arguments are its options."
            )
        node = definitions[base.id]
    return node


def _defaulted(arguments: ast.arguments) -> list[tuple[ast.arg, ast.expr]]:
    """The (parameter, default) pairs of a signature: positional ones with a default, then keyword-only ones."""
    positional = arguments.posonlyargs + arguments.args
    pairs = list(zip(positional[len(positional) - len(arguments.defaults):], arguments.defaults))
    return pairs + [(arg, default) for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults) if default is not None]


def _literal(node: ast.expr, option: str, target: str):
    """The value of the default ``node`` of ``option``, which must be a literal."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError) as error:
        raise DefaultsError(
            f"{target}: option {option!r} defaults to {ast.unparse(node)}, which is not a literal; write the value "
            "itself (a bool, number, string or list), so the registry can read it without importing the module."
        ) from error
    return config_value(value, option, target)


# --------------------------------------------------------------------------------------- built-ins


def _builtin_algorithms(registry: Registry) -> None:
    registry.register_target(
        "maml", "metabench.algorithms.maml:MAML", {"batch_norm": ["transductive"]},
        "MAML (Finn et al. 2017), second order; first_order=true gives FOMAML. eval_inner_lr=0 means inner_lr.",
    )
    registry.register_target(
        "mamlpp", "metabench.algorithms.mamlpp:MAMLPlusPlus",
        {"test_statistics": ["running", "batch"], "bn_final_query_set": ["own", "shared"]},
        "MAML++ (Antoniou et al. 2019): MSL, DA, BNRS, BNWB, LSLR switches; CA is train.meta_lr_schedule='cosine'.",
    )
    registry.register_target(
        "baseline", "metabench.algorithms.finetune:Baseline", {"finetune": ["head", "all"]},
        "Baseline (Chen et al. 2019): pre-trained classifier, new linear head fitted per episode.",
    )
    registry.register_target(
        "baseline++", "metabench.algorithms.finetune:BaselinePlusPlus", {"finetune": ["head", "all"]},
        "Baseline++ (Chen et al. 2019): as baseline with a cosine head (weight-normalised, scaled).",
    )
    registry.register_target(
        "pretrain", "metabench.algorithms.finetune:Pretrain",
        {"finetune": ["head", "all"], "pretrain_on": ["support_and_query", "support"]},
        "MAML paper's 'pretrained on all tasks' baseline: pooled training, then fine-tuning per task.",
    )
    registry.register_target(
        "multitask", "metabench.algorithms.multitask:MultiTask", {"finetune": ["head", "all"]},
        "Multi-task hard parameter sharing: shared trunk, one head per fixed training task; new head per test task.",
    )
    registry.register_target(
        "reptile", "metabench.algorithms.reptile:Reptile",
        {"inner_optimizer": ["sgd", "adam"], "train_on": ["support", "support_and_query"],
         "evaluation": ["non_transductive", "transductive"]},
        "Reptile (Nichol et al. 2018): SGD/Adam inner loop, outer step along theta - phi (a pseudo-gradient). eval_inner_lr=0 means inner_lr.",
    )  # fmt: skip
    registry.register_target(
        "anil", "metabench.algorithms.anil:ANIL", {"batch_norm": ["transductive"]},
        "ANIL (Raghu et al. 2020): MAML adapting only the last layer; first_order=true drops second-order terms.",
    )
    registry.register_target(
        "protonet", "metabench.algorithms.protonet:PrototypicalNetwork", {"batch_norm": ["running", "transductive"]},
        "Prototypical Networks (Snell et al. 2017): nearest class-mean embedding by squared Euclidean distance.",
    )
    for name, target, summary in (
        ("maml_rl", "MAMLRL", "MAML-RL (Finn et al. 2017, 5.3): VPG inner step differentiated through; Adam on the post-update surrogate."),
        ("pretrain_rl", "PretrainRL", "MAML paper's RL 'pretrained' baseline: one policy trained by REINFORCE on all goals, adapted by VPG."),
        ("random_rl", "RandomRL", "MAML paper's RL 'random' baseline: the initial policy, adapted by VPG."),
        ("oracle_rl", "OracleRL", "MAML paper's RL oracle: a policy that sees the goal (position - goal), trained jointly."),
    ):
        registry.register_target(name, f"metabench.algorithms.maml_rl:{target}", {}, summary)


def _builtin_datasets(registry: Registry) -> None:
    def register(name, dataset, choices, summary):
        defaults = signature_defaults(dataset, skip=registry.run_arguments)
        registry.register(name, _dataset_factory(dataset), defaults, choices, summary)

    register("sinusoid", Sinusoid, {}, "Sinusoid regression, y = A sin(x - phase) (MAML paper); no data needed.")
    register(
        "point_navigation", PointNavigation, {"reward": ["distance", "squared_distance"]},
        "2D point navigation (MAML paper 5.3): meta-RL, goals in [-0.5, 0.5]^2, metric 'return'; no data needed.",
    )
    register(
        "omniglot", Omniglot,
        {"split_scheme": ["maml", "mamlpp", "official", "vinyals"], "preprocess": ["lanczos_inverted", "nearest_binary", "nearest_binary_inverted"]},
        "Omniglot characters (Lake et al. 2015) from the official zips in DATA_DIR/omniglot/.",
    )  # fmt: skip
    register("miniimagenet", MiniImageNet, {}, "miniImageNet, Ravi & Larochelle split, from DATA_DIR/miniimagenet/{splits/ravi,images}/.")


def _dataset_factory(dataset: type) -> Callable:
    """``factory(data_dir=None, cache_dir=None, **options)`` building ``dataset``: ``data_dir`` and
    ``cache_dir`` are passed where it takes them (a task family such as ``Sinusoid`` reads no files)."""
    takes = inspect.signature(dataset).parameters

    def factory(data_dir=None, cache_dir=None, **options):
        files = {key: value for key, value in (("data_dir", data_dir), ("cache_dir", cache_dir)) if key in takes}
        return dataset(**files, **options)

    return factory


def _mlp_from_shape(mlp: Callable, input_shape, outputs: int, **options):
    """Models are built from the input shape; ``mlp`` takes the input width, its last axis."""
    return mlp(input_shape[-1], outputs, **options)


def _builtin_models(registry: Registry) -> None:
    registry.register_target(
        "mlp", "metabench.algorithms.models:mlp", {}, "ReLU MLP (the MAML sinusoid network: 40-40).", call=_mlp_from_shape,
    )
    registry.register_target(
        "conv4", "metabench.algorithms.models:conv4",
        {"conv": list(CONV_FORMS), "activation": list(ACTIVATIONS), "features": list(FEATURES), "head_init": list(HEAD_INITS),
         "dtype_policy": list(DTYPE_POLICIES)},
        "Four 3x3 conv blocks with batch norm and ReLU, then linear (MAML's Omniglot/miniImageNet network).",
    )


#: conv4's ``conv``, ``activation``, ``features``, ``head_init`` and ``dtype_policy`` choices: the keys of
#: ``metabench.algorithms.models.CONV_FORMS``, ``ACTIVATIONS``, ``FEATURES`` and ``HEAD_INITS``, and its
#: ``DTYPE_POLICIES``, named here
#: without importing Keras (tests/test_cli.py and tests/test_fidelity.py check they agree)
CONV_FORMS = ("native", "matmul")
ACTIVATIONS = ("relu", "leaky_relu")
FEATURES = ("flatten", "mean")
HEAD_INITS = ("glorot_uniform", "normal")
DTYPE_POLICIES = ("float32", "mixed_bfloat16")

# ----------------------------------------------------------------- models named as module:function


class ModelRegistry(Registry):
    """The models: those registered, and any builder a config names as ``"package.module:function"``."""

    def get(self, name: str) -> Entry:
        if isinstance(name, str) and ":" in name and name not in self._load():
            return builder_entry(name)
        try:
            return super().get(name)
        except RegistryError as error:
            raise RegistryError(f"{error} Or name your own keras.Model builder as 'package.module:function'.") from None


def builder_entry(name: str) -> Entry:
    """The model builder a config names as ``"package.module:function"``, unregistered: a function
    (or class) called as ``builder(input_shape, outputs, **options)`` that returns a ``keras.Model``.

    Read as our models are, without importing it (so without Keras): its options are the parameters
    after ``(input_shape, outputs)`` that have a default (literals: :func:`source_defaults`); it is
    imported when the model is built. Raises ``RegistryError`` naming ``name`` where the module or
    the function does not exist or its options cannot be read.
    """
    try:
        module, function = split_target(name)
        node = _signature_node(_module_tree(module), function, name)
        positional = node.args.posonlyargs + node.args.args
        if node.name == "__init__":  # a class: its instances are the models
            positional = positional[1:]
        if len(positional) < 2 and node.args.vararg is None:
            raise DefaultsError(f"{name} takes {[a.arg for a in positional]}; a model builder takes (input_shape, outputs) first.")
        defaults = source_defaults(name, skip=[a.arg for a in positional[:2]])
    except (DefaultsError, ImportError, ValueError, SyntaxError, OSError) as error:
        raise RegistryError(
            f"Cannot use model builder {name!r}: {error} A config's model.name is a registered model or "
            "'package.module:function', a function of (input_shape, outputs) returning a keras.Model, "
            "importable where the run starts (installed, or its folder on PYTHONPATH)."
        ) from error
    summary = (ast.get_docstring(node) or "").strip().split("\n")[0]
    return Entry(name, deferred_factory(name), defaults, {}, summary, source=module.split(".")[0])


ALGORITHMS = Registry("algorithm", "metabench.algorithms", _builtin_algorithms)
DATASETS = Registry("dataset", "metabench.datasets", _builtin_datasets, run_arguments=DATASET_RUN_ARGUMENTS)
MODELS = ModelRegistry("model", "metabench.models", _builtin_models)

