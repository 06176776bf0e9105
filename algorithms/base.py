"""The contract every algorithm meets, ours or a plugin's.

An algorithm is a Keras model plus two pure functions of ``(params, state, task)``: ``task_loss``
(the outer loss of one meta-training task) and ``task_eval`` (adapt on the support set, predict the
query set after each inner step; the harness scores the predictions, ``harness.run.scoring``). ``params``
are the values of ``meta_variables()`` (what the outer optimizer learns); ``state`` the values of
``state_variables()`` (what a step overwrites with the task-mean of the new values ``task_loss``
returns, e.g. running batch-norm statistics; usually empty). It never imports a backend: gradients
come from the engine it is bound to, and the runner compiles and maps the two functions over the
tasks of a batch.

A complete subclass (first-order "adapt the head only" would be a few lines more)::

    class NoAdaptation(Algorithm):
        name = "no_adaptation"

        def task_loss(self, params, state, task):
            predictions = self.apply(params, task["query_x"])
            metrics = {self.objective.metric_name: self.objective.metric(predictions, task["query_y"])}
            return self.objective.loss(predictions, task["query_y"]), (metrics, state)

        def task_eval(self, params, state, task, max_steps):
            predictions = self.apply(params, task["query_x"])  # the same after every step: [Q, outputs]
            return {"predictions": keras.ops.repeat(predictions[None], max_steps + 1, axis=0)}

Task shapes (one task, from ``harness.data.episodes``): ``support_x [S, ...]``, ``support_y [S]``
(class labels, int32) or ``[S, out_dim]`` (regression targets), ``query_x [Q, ...]``,
``query_y`` likewise. ``task_eval`` gets no ``query_y``: the harness removes it, and reading it
fails with ``harness.run.scoring.ContractError``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
from keras import ops


@dataclasses.dataclass(frozen=True)
class Objective:
    """Loss and metric of a task kind: cross-entropy and accuracy, or MSE and MSE."""

    kind: str
    loss: Callable
    metric: Callable
    metric_name: str
    higher_is_better: bool


def _cross_entropy(logits, labels):
    return ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))


def _accuracy(logits, labels):
    predicted = ops.cast(ops.argmax(logits, axis=-1), "int32")
    return ops.mean(ops.cast(ops.equal(predicted, ops.cast(labels, "int32")), "float32"))


def _mse(predictions, targets):
    return ops.mean(ops.square(predictions - targets))


OBJECTIVES = {
    "classification": Objective("classification", _cross_entropy, _accuracy, "accuracy", True),
    "regression": Objective("regression", _mse, _mse, "mse", False),
}


class Algorithm:
    """Base class of meta-learning algorithms.

    Subclasses set ``name``, store their hyperparameters unmodified in ``__init__`` and implement
    ``task_loss`` and ``task_eval``. ``build`` binds the model, the task kind and the engine.

    Every keyword argument of ``__init__`` is a config option, its default the option's default:
    the registry reads them from the signature (``metabench.harness.registry``), so a default is a
    literal (a number, string, bool or list; ``0`` or ``""`` with a documented meaning where
    ``None`` would say "same as another option") and a setting no config chooses is a class
    attribute instead.
    """

    name: str = ""
    #: what it trains on: "episodes", "pooled" (supervised batches over all training classes) or
    #: "fixed_tasks" (a fixed list of training tasks; set ``num_tasks``); see ``harness.data.training_data``
    training_data: str = "episodes"
    #: whether evaluation may use a different number of ways than training
    flexible_ways: bool = False
    #: the task kinds it handles
    task_kinds: tuple = ("classification", "regression")
    #: with ``training_data = "fixed_tasks"``: how many training tasks the fixed list holds
    num_tasks: int = 0
    #: the inner-loop step size of an algorithm that adapts by gradient steps (``None``: it does not);
    #: the harness records the step size evaluation adapted with as the ``eval_inner_lr`` note
    inner_lr: float | None = None
    #: the step size at evaluation when it differs from ``inner_lr`` (``None`` or ``0.0``: ``inner_lr``)
    eval_inner_lr: float | None = None
    #: whether it adapts to an episode's support set by inner steps; ``False`` (e.g. Prototypical
    #: Networks) means its prediction after 0 steps is already the method's, so the conformance
    #: suite's ``learns`` compares the trained model with an untrained one instead of step k with step 0
    adapts_at_test: bool = True

    def __init__(self):
        self.model: keras.Model | None = None
        self.engine = None
        self.objective: Objective | None = None

    def build(self, model: keras.Model, task_kind: str, engine) -> "Algorithm":
        """Bind ``model`` (already built), the task kind and the engine; returns ``self``."""
        if task_kind not in OBJECTIVES:
            raise ValueError(f"Received task_kind={task_kind!r}; expected one of {list(OBJECTIVES)}.")
        for method in ("task_loss", "task_eval"):
            if getattr(type(self), method) is getattr(Algorithm, method):
                raise TypeError(f"{type(self).__name__} must implement {method}(params, state, task, ...).")
        self.model = model
        self.objective = OBJECTIVES[task_kind]
        self.engine = engine
        return self

    def output_units(self, task_outputs: int, pooled_classes: int | None) -> int:
        """Units of the model's last layer: the training ways (or regression outputs) by default;
        ``pooled_classes`` is the number of global classes when ``training_data == "pooled"``."""
        return task_outputs

    def meta_variables(self) -> list:
        """The variables the outer optimizer updates; ``params`` lists their values in this order."""
        return list(self.model.trainable_variables)

    def state_variables(self) -> list:
        """Variables a meta-training step overwrites with the task-mean of ``task_loss``'s new state."""
        return []

    def get_weights(self) -> list:
        """Values of ``meta_variables()`` then ``state_variables()`` as numpy arrays (what a checkpoint holds)."""
        return [keras.ops.convert_to_numpy(v.value) for v in self.meta_variables() + self.state_variables()]

    def set_weights(self, values) -> None:
        """Restore what ``get_weights`` returned; shapes must match exactly."""
        variables = self.meta_variables() + self.state_variables()
        if len(values) != len(variables):
            raise ValueError(f"Received {len(values)} arrays for {type(self).__name__}, which has {len(variables)} variables.")
        for variable, value in zip(variables, values):
            if tuple(variable.shape) != tuple(value.shape):
                raise ValueError(f"Received shape {tuple(value.shape)} for variable {variable.path} of shape {tuple(variable.shape)}.")
            variable.assign(value)

    def apply(self, params, x, training: bool = True):
        """The model's output for ``x`` with weights ``params`` (batch-norm on batch statistics when training)."""
        non_trainable = [v.value for v in self.model.non_trainable_variables]
        outputs, _ = self.model.stateless_call(params, non_trainable, x, training=training)
        return outputs

    def task_loss(self, params, state, task):
        """Outer loss of one task: ``(scalar loss, ({metric name: scalar}, new_state))``, differentiable in ``params``."""
        raise NotImplementedError

    def task_eval(self, params, state, task, max_steps: int):
        """Adapt on the support set and predict the query set after 0..max_steps inner steps.

        ``task`` has no ``query_y``: the harness removes the query labels before the call. Returns
        ``{"predictions": [max_steps + 1, Q, outputs]}`` (float32): the query logits (classification)
        or outputs (regression) after 0, 1, ..., ``max_steps`` inner steps, and nothing else; the
        harness computes the metric and the loss of each step from them (``harness.run.scoring``).
        """
        raise NotImplementedError

    def notes(self) -> dict:
        """Facts recorded with every result that change how to read it (e.g. batch-norm mode)."""
        return {}
