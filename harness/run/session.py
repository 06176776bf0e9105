"""A run's session: the model, the algorithm, the batch source, the outer optimizer and the engine's
compiled steps, built from a resolved config and prepared data, or restored from a checkpoint.

Everything that can refuse a config (the algorithm against the task kind and ways, the model's
options) is checked here, before a caller records a run.
"""

from __future__ import annotations

import copy
import dataclasses

from metabench.harness.config import ConfigError
from metabench.harness.data import training_data
from metabench.harness.registry import ALGORITHMS, MODELS
from metabench.harness.run import checkpoint as ckpt
from metabench.harness.run.checkpoint import TrainingState
from metabench.harness.run.prepare import Prepared
from metabench.harness.run.scoring import scored_task_eval
from metabench.harness.run.stream import check_learner


@dataclasses.dataclass
class Session:
    """Everything a run trains and evaluates with, built from a resolved config and prepared data."""

    algorithm: object
    source: object
    optimizer: object
    trainer: object
    evaluator: object


def build(config: dict, prepared: Prepared, engine, algorithm=None) -> Session:
    """Model, algorithm, batch source, optimizer and compiled steps for ``config``.

    ``algorithm`` overrides the config's (the conformance suite passes an unregistered one).
    """
    import keras  # deferred: Keras reads its backend once, at import, after the caller selected it

    if algorithm is None:
        algorithm = _component(config, "algorithm", ALGORITHMS)
    name = type(algorithm).__name__
    if prepared.kind not in algorithm.task_kinds:
        raise ConfigError(f"Algorithm {config['algorithm']['name']!r} handles {list(algorithm.task_kinds)} tasks, not {prepared.kind}.")
    train_ways = prepared.train_spec.ways
    if prepared.kind == "classification" and not algorithm.flexible_ways:
        eval_ways = {s.spec.ways for s in prepared.eval_sets}
        if eval_ways != {train_ways}:
            raise ConfigError(
                f"Received evaluation.ways={sorted(eval_ways)} but train.ways={train_ways}: {name} keeps the "
                f"{train_ways}-way head it meta-learned. Use the same ways for training and evaluation."
            )
    source = training_data.make_source(
        algorithm.training_data, prepared.train_source, prepared.train_spec, config["train"], config["seed"],
        algorithm.num_tasks,
    )
    keras.utils.set_random_seed(config["seed"])
    pooled = source.num_classes
    outputs = algorithm.output_units(train_ways if prepared.kind == "classification" else prepared.output_dim, pooled)
    model = build_model(config, prepared.input_shape, outputs)
    algorithm.build(model, prepared.kind, engine)
    if config["evaluation"]["stream"]:
        check_learner(algorithm, config)
    optimizer, trainer = compile_meta_step(algorithm, config["train"], engine)
    variables, state_variables = algorithm.meta_variables(), algorithm.state_variables()
    max_steps = max(config["evaluation"]["inner_steps"])
    # The harness scores what task_eval predicts.
    evaluator = engine.make_evaluator(scored_task_eval(algorithm, max_steps), variables, state_variables)
    return Session(algorithm, source, optimizer, trainer, evaluator)


def build_model(config: dict, input_shape, outputs: int):
    """The ``[model]`` of ``config`` for inputs ``[batch, *input_shape]`` and ``outputs`` units, made fit
    for meta-training: a registered model or a ``"package.module:function"`` builder, then
    ``metabench.algorithms.user_models.meta_trainable`` (Keras batch norms swapped for exact-moment
    ones, a Sequential made functional, layers that cannot run statelessly refused by name)."""
    # deferred: it imports Keras, which reads its backend once, at import, after the caller selected it
    from metabench.algorithms.user_models import meta_trainable

    model = _component(config, "model", MODELS, input_shape, outputs)
    return meta_trainable(model, input_shape, config["model"]["name"])


def compile_meta_step(algorithm, train: dict, engine):
    """The outer optimizer (``train.meta_optimizer``: Adam or plain SGD, with the ``[train]`` table's schedule and clipping) and the
    engine's compiled meta-training step of a built ``algorithm``: ``(optimizer, trainer)``.

    The one place a meta-step is made: runs and ``metabench bench`` time and train the same step.
    """
    import keras  # deferred: Keras reads its backend once, at import, after the caller selected it

    learning_rate = train["meta_lr"]
    if train["meta_lr_schedule"] == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            train["meta_lr"], decay_steps=train["meta_iterations"], alpha=train["meta_lr_min"] / train["meta_lr"]
        )
    elif train["meta_lr_schedule"] == "linear":
        learning_rate = keras.optimizers.schedules.PolynomialDecay(
            train["meta_lr"], decay_steps=train["meta_iterations"], end_learning_rate=train["meta_lr_min"], power=1.0
        )
    optimizer_class = keras.optimizers.SGD if train["meta_optimizer"] == "sgd" else keras.optimizers.Adam
    optimizer = optimizer_class(learning_rate, clipvalue=train["clip_meta_grad"] or None)
    trainer = engine.make_meta_trainer(algorithm.task_loss, algorithm.meta_variables(), optimizer, algorithm.state_variables())
    return optimizer, trainer


def open_session(config: dict, prepared: Prepared, engine, saved: ckpt.Checkpoint | None = None, algorithm_factory=None):
    """The session a run of ``config`` trains, restored from ``saved`` when given.

    Everything that can refuse the config (the algorithm against the task kind and ways, the
    model's options) is checked here, before a caller records a run. ``algorithm_factory``: a
    callable returning a fresh algorithm in place of the config's (the conformance suite).

    Returns:
        ``(session, state, rebuild)``: ``state`` is the ``TrainingState`` to continue from and
        ``rebuild(lr_scale) -> Session`` builds a fresh session (what a NaN retry restarts).
    """

    def rebuild(lr_scale: float) -> Session:
        algorithm = algorithm_factory() if algorithm_factory is not None else None
        return build(_scaled(config, lr_scale), prepared, engine, algorithm)

    state = saved.state if saved else TrainingState()
    session = rebuild(state.lr_scale)
    if saved:
        state = ckpt.restore(session.algorithm, session.optimizer, saved)
    return session, state, rebuild


def _scaled(config: dict, lr_scale: float) -> dict:
    """``config`` with ``train.meta_lr`` and ``train.meta_lr_min`` multiplied by ``lr_scale`` (itself at 1)."""
    if lr_scale == 1.0:
        return config
    scaled = copy.deepcopy(config)
    scaled["train"]["meta_lr"] *= lr_scale
    scaled["train"]["meta_lr_min"] *= lr_scale
    return scaled


def _component(config: dict, table: str, registry, *args):
    """Build the ``[table]`` component of ``config`` from ``registry``; a value it refuses is a ConfigError."""
    name = config[table]["name"]
    options = {k: v for k, v in config[table].items() if k != "name"}
    try:
        return registry.get(name).factory(*args, **options)
    except ValueError as error:
        raise ConfigError(f"{table} {name!r} refused its options: {error} Change it in the config's [{table}] "
                          f"table or with --set {table}.OPTION=VALUE.") from error
