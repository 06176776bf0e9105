"""Name -> factory registries for algorithms, datasets and models.

Filled explicitly by our own modules below and by other packages through the entry-point groups
``metabench.algorithms``, ``metabench.datasets`` and ``metabench.models``. Our algorithms and models
are registered with their options but imported when first built: they import Keras, whose backend
must be chosen first, and ``metabench list`` answers without loading TensorFlow. An entry point names a
class or function; its configurable options are the keyword arguments it declares in
``config_defaults`` (a dict of option -> default value), optionally with ``config_choices``
(option -> allowed values). Example, in a plugin's ``pyproject.toml``::

    [project.entry-points."metabench.algorithms"]
    my_maml = "my_package.algo:MyMAML"
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import logging
from typing import Callable

from metabench.harness.errors import MetabenchError

logger = logging.getLogger(__name__)


class RegistryError(MetabenchError, KeyError):
    """An unknown name; the message lists what is registered and the closest match."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered component.

    Attributes:
        name: the name configs use.
        factory: ``factory(**options)`` builds it; datasets also receive ``data_dir`` and ``cache_dir``.
        defaults: option -> default value; the value's type is the option's type.
        choices: option -> allowed values.
        summary: one line for ``metabench list``.
        source: ``"metabench"`` or the distribution that registered it.
    """

    name: str
    factory: Callable
    defaults: dict
    choices: dict
    summary: str = ""
    source: str = "metabench"


class Registry:
    """Registered components of one kind, looked up by name with a "did you mean" on a miss."""

    def __init__(self, kind: str, group: str, builtins: Callable[["Registry"], None]):
        self.kind = kind
        self.group = group
        self._builtins = builtins
        self._entries: dict[str, Entry] | None = None

    def register(self, name, factory, defaults=None, choices=None, summary="", source="metabench") -> None:
        entries = self._entries if self._entries is not None else {}
        if name in entries:
            raise ValueError(f"A {self.kind} named {name!r} is already registered (by {entries[name].source}).")
        entries[name] = Entry(name, factory, dict(defaults or {}), dict(choices or {}), summary, source)
        self._entries = entries

    def _load(self) -> dict[str, Entry]:
        if self._entries is None:
            self._entries = {}
            self._builtins(self)
            for point in importlib.metadata.entry_points(group=self.group):
                try:
                    factory = point.load()
                except Exception as error:  # a broken plugin must not break the harness
                    logger.warning("Skipping %s plugin %r: cannot load %s (%s)", self.kind, point.name, point.value, error)
                    continue
                source = point.dist.name if point.dist else point.value
                self.register(
                    point.name,
                    factory,
                    getattr(factory, "config_defaults", {}),
                    getattr(factory, "config_choices", {}),
                    (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else "",
                    source,
                )
        return self._entries

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


def _builtin_algorithms(registry: Registry) -> None:
    # Each factory imports its module when called (Keras loads then, with the chosen backend).
    def maml(eval_inner_lr=0.0, **options):
        from metabench.algorithms.maml import MAML

        return MAML(eval_inner_lr=eval_inner_lr or None, **options)

    registry.register(
        "maml",
        maml,
        {"inner_lr": 0.01, "inner_steps": 1, "eval_inner_lr": 0.0, "first_order": False, "batch_norm": "transductive",
         "adapt_batch_norm": True},
        {"batch_norm": ["transductive"]},
        "MAML (Finn et al. 2017), second order; first_order=true gives FOMAML. eval_inner_lr=0 means inner_lr.",
    )

    def mamlpp(**options):
        from metabench.algorithms.mamlpp import MAMLPlusPlus

        return MAMLPlusPlus(**options)

    registry.register(
        "mamlpp",
        mamlpp,
        {
            "inner_lr": 0.1,
            "inner_steps": 5,
            "multi_step_loss": True,
            "msl_epochs": 10,
            "second_order_epoch": -1,
            "per_step_bn_statistics": True,
            "per_step_bn_weights": True,
            "learned_inner_lr": True,
            "iterations_per_epoch": 500,
            "test_statistics": "running",
            "bn_final_query_set": "own",
        },
        {"test_statistics": ["running", "batch"], "bn_final_query_set": ["own", "shared"]},
        "MAML++ (Antoniou et al. 2019): MSL, DA, BNRS, BNWB, LSLR switches; CA is train.meta_lr_schedule='cosine'.",
    )

    def baseline(**options):
        from metabench.algorithms.finetune import Baseline

        return Baseline(**options)

    def baseline_plus_plus(**options):
        from metabench.algorithms.finetune import BaselinePlusPlus

        return BaselinePlusPlus(**options)

    def pretrain(**options):
        from metabench.algorithms.finetune import Pretrain

        return Pretrain(**options)

    finetune_defaults = {
        "finetune": "head",
        "finetune_lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.001,
        "scale": 0.0,
        "head_seed": 0,
        "dampening": 0.0,
        "batch_size": 0,
        "weight_norm": False,
    }
    registry.register(
        "baseline", baseline, finetune_defaults, {"finetune": ["head", "all"]},
        "Baseline (Chen et al. 2019): pre-trained classifier, new linear head fitted per episode.",
    )
    registry.register(
        "baseline++", baseline_plus_plus, finetune_defaults, {"finetune": ["head", "all"]},
        "Baseline++ (Chen et al. 2019): as baseline with a cosine head (weight-normalised, scaled).",
    )
    registry.register(
        "pretrain", pretrain, dict(finetune_defaults, finetune="all", momentum=0.0, weight_decay=0.0, pretrain_on="support_and_query"),
        {"finetune": ["head", "all"], "pretrain_on": ["support_and_query", "support"]},
        "MAML paper's 'pretrained on all tasks' baseline: pooled training, then fine-tuning per task.",
    )

    def multitask(**options):
        from metabench.algorithms.multitask import MultiTask

        return MultiTask(**options)

    registry.register(
        "multitask",
        multitask,
        {"num_tasks": 1000, "finetune": "head", "finetune_lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "head_seed": 0},
        {"finetune": ["head", "all"]},
        "Multi-task hard parameter sharing: shared trunk, one head per fixed training task; new head per test task.",
    )


def _builtin_datasets(registry: Registry) -> None:
    from metabench.datasets.miniimagenet import MiniImageNet
    from metabench.datasets.omniglot import Omniglot
    from metabench.datasets.sinusoid import Sinusoid

    registry.register(
        "sinusoid",
        lambda data_dir=None, cache_dir=None, **options: Sinusoid(**options),
        {"amplitude": [0.1, 5.0], "phase": [0.0, 3.141592653589793], "input_range": [-5.0, 5.0]},
        {},
        "Sinusoid regression, y = A sin(x - phase) (MAML paper); no data needed.",
    )
    registry.register(
        "omniglot",
        lambda data_dir=None, cache_dir=None, **options: Omniglot(data_dir, cache_dir=cache_dir, **options),
        {"image_size": 28, "split_scheme": "maml", "preprocess": "lanczos_inverted"},
        {"split_scheme": ["maml", "mamlpp", "official", "vinyals"], "preprocess": ["lanczos_inverted", "nearest_binary", "nearest_binary_inverted"]},
        "Omniglot characters (Lake et al. 2015) from the official zips in DATA_DIR/omniglot/.",
    )
    registry.register(
        "miniimagenet",
        lambda data_dir=None, cache_dir=None, **options: MiniImageNet(data_dir, cache_dir=cache_dir, **options),
        {"image_size": 84},
        {},
        "miniImageNet, Ravi & Larochelle split, from DATA_DIR/miniimagenet/{splits/ravi,images}/.",
    )


def _builtin_models(registry: Registry) -> None:
    # As the algorithms: metabench.algorithms.models (Keras) is imported when a model is built.
    def mlp(input_shape, outputs, **options):
        from metabench.algorithms.models import mlp

        return mlp(input_shape[-1], outputs, **options)

    def conv4(input_shape, outputs, **options):
        from metabench.algorithms.models import conv4

        return conv4(input_shape, outputs, **options)

    registry.register(
        "mlp",
        mlp,
        {"hidden": [40, 40]},
        {},
        "ReLU MLP (the MAML sinusoid network: 40-40).",
    )
    registry.register(
        "conv4",
        conv4,
        {"filters": 64, "strided": True, "batch_norm": True, "bn_momentum": 0.9, "conv": "native",
         "activation": "relu", "bn_epsilon": 0.001, "bn_scale": True, "features": "flatten", "head_init": "glorot_uniform"},
        {"conv": list(CONV_FORMS), "activation": list(ACTIVATIONS), "features": list(FEATURES), "head_init": list(HEAD_INITS)},
        "Four 3x3 conv blocks with batch norm and ReLU, then linear (MAML's Omniglot/miniImageNet network).",
    )


#: conv4's ``conv``, ``activation``, ``features`` and ``head_init`` choices: the keys of
#: ``metabench.algorithms.models.CONV_FORMS``, ``ACTIVATIONS``, ``FEATURES`` and ``HEAD_INITS``, named here
#: without importing Keras (tests/test_cli.py and tests/test_fidelity.py check they agree)
CONV_FORMS = ("native", "matmul")
ACTIVATIONS = ("relu", "leaky_relu")
FEATURES = ("flatten", "mean")
HEAD_INITS = ("glorot_uniform", "normal")

ALGORITHMS = Registry("algorithm", "metabench.algorithms", _builtin_algorithms)
DATASETS = Registry("dataset", "metabench.datasets", _builtin_datasets)
MODELS = Registry("model", "metabench.models", _builtin_models)

