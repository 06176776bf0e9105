"""The harness scores, algorithms predict: query predictions after each inner step become metrics.

An algorithm's ``task_eval(params, state, task, max_steps)`` is called with a task whose query
labels (``query_y``) the harness has removed, and returns ``{"predictions": [max_steps + 1, Q,
outputs]}``: the query predictions (logits for classification, outputs for regression) after 0, 1,
..., ``max_steps`` inner steps. Only this module compares them with the labels, with the
algorithm's objective (accuracy or MSE, and the loss), so no number an algorithm reports about
itself enters the store, and an algorithm cannot adapt on, or score itself with, the query labels:
one that reads them fails with ``ContractError``, which the conformance suite reports as a failure.

Example (one task, eagerly; ``engine.make_evaluator(scored_task_eval(algorithm, 10), ...)`` compiles the
same function and maps it over a batch's ``T`` tasks, giving ``metric [T, 11]``):
    >>> import numpy as np
    >>> from metabench.algorithms.maml import MAML
    >>> from metabench.algorithms.models import mlp
    >>> from metabench.harness.engines import get_engine
    >>> maml = MAML(inner_lr=0.4).build(mlp(2, 2, hidden=[8]), "classification", get_engine("tensorflow"))
    >>> task = {"support_x": np.eye(2, dtype="float32"), "support_y": np.array([0, 1], "int32"),
    ...         "query_x": np.eye(2, dtype="float32"), "query_y": np.array([0, 1], "int32"),
    ...         "label_set": np.array([0, 1], "int32")}
    >>> scored = scored_task_eval(maml, 10)([v.value for v in maml.meta_variables()], [], task)
    >>> sorted(scored), tuple(scored["metric"].shape)   # accuracy after 0..10 steps
    (['loss', 'metric', 'predictions'], (11,))
"""

from __future__ import annotations

from typing import Callable

from metabench.harness.errors import MetabenchError

#: The key ``task_eval`` returns, and the task keys it never sees.
PREDICTIONS = "predictions"
HIDDEN_KEYS = ("query_y",)


class ContractError(MetabenchError):
    """An algorithm's ``task_eval`` broke its contract: it read the query labels, or returned other
    keys, shapes or dtypes than ``{"predictions": [max_steps + 1, Q, outputs]}`` (floating point).

    A direct ``Exception`` subclass with its constructor: TensorFlow's autograph re-raises such an
    error from a compiled step as its own type (other types come out as its ``StagingError``)."""


def scored_task_eval(algorithm, max_steps: int) -> Callable:
    """The harness's evaluation of one task: ``fn(params, state, task) -> dict``, for ``engine.make_evaluator``.

    ``fn`` calls ``algorithm.task_eval(params, state, task without query_y, max_steps)``, checks what it
    returned and scores it against ``task["query_y"]``. Returns ``{"metric": [max_steps + 1],
    "loss": [max_steps + 1], "predictions": [Q, outputs]}`` (the predictions after the last step).
    Plain ``keras.ops``, traced inside the engine's compiled evaluator; shapes are checked at trace time.

    Args:
        algorithm: a built ``Algorithm`` (its ``objective`` gives the metric and the loss).
        max_steps: the most inner steps any evaluation asks for.
    """
    steps = int(max_steps)

    def task_eval(params, state, task):
        predictions = query_predictions(algorithm, params, state, task, steps)
        metric, loss = score(algorithm.objective, predictions, task["query_y"])
        return {"metric": metric, "loss": loss, PREDICTIONS: predictions[steps]}

    return task_eval


def query_predictions(algorithm, params, state, task, steps: int):
    """``algorithm.task_eval(params, state, task without query_y, steps)``'s predictions ``[steps + 1, Q,
    outputs]`` (float32), once they meet the contract; ``task["query_y"]`` is used only to check shapes.

    Raises:
        ContractError: ``task_eval`` read the query labels, or returned other keys, shapes or dtypes.
    """
    unlabelled = {key: value for key, value in task.items() if key not in HIDDEN_KEYS}
    try:
        returned = algorithm.task_eval(params, state, unlabelled, steps)
    except KeyError as error:
        if error.args[:1] and error.args[0] in HIDDEN_KEYS:
            raise ContractError(
                f"{_name(algorithm)}.task_eval read task[{error.args[0]!r}]: task_eval must not read the query "
                "labels. The harness removes them and scores the predictions itself; adapt on support_x and "
                "support_y only, and return the query predictions after each inner step."
            ) from error
        raise
    return _predictions_iv(algorithm, returned, steps, task)


def score(objective, predictions, labels):
    """``(metric [S], loss [S])`` of query ``predictions [S, Q, outputs]`` against ``labels`` (``[Q]``
    class ids, or ``[Q, outputs]`` targets), step by step with ``objective.metric`` and ``.loss``.

    Each step is scored on its own ``[Q, outputs]`` slice with the ops algorithms applied themselves
    before the harness scored them, so stored numbers did not change by a bit: ``keras.ops.map`` over
    the steps (one traced body however many steps; a Python loop over 100 steps tripled the compile
    time, and ``vectorized_map`` batches MSE's reduction, which changes its rounding under XLA).
    """
    from keras import ops  # deferred: Keras reads its backend once, at import, after the caller selected it

    return ops.map(lambda step: (objective.metric(step, labels), objective.loss(step, labels)), predictions)


def prediction_scorer(algorithm) -> Callable:
    """``scorer(predictions [T, S, Q, outputs], labels [T, ...]) -> {"metric": [T, S], "loss": [T, S]}``
    (numpy): ``score`` mapped over tasks in the algorithm's engine, compiled once. For predictions made
    outside ``task_eval``, such as the averaged logits of a checkpoint ensemble."""
    objective = algorithm.objective

    def task_score(params, state, task):
        metric, loss = score(objective, task[PREDICTIONS], task["query_y"])
        return {"metric": metric, "loss": loss}

    evaluate = algorithm.engine.make_evaluator(task_score, [])
    return lambda predictions, labels: evaluate({PREDICTIONS: predictions, "query_y": labels})


def _predictions_iv(algorithm, returned, steps: int, task):
    """The predictions ``algorithm.task_eval`` returned, as float32, once they meet the contract."""
    import keras  # deferred: Keras reads its backend once, at import, after the caller selected it

    name = f"{_name(algorithm)}.task_eval"
    expected = f"{{'predictions': [max_steps + 1, Q, outputs]}} = [{steps + 1}, {_dim(task['query_x'], 0)}, outputs]"
    if not isinstance(returned, dict):
        raise ContractError(f"{name} returned {type(returned).__name__}; expected a dict {expected}.")
    keys = sorted(returned)
    if keys != [PREDICTIONS]:
        reported = [key for key in keys if key != PREDICTIONS]
        if {"metric", "loss"} & set(reported):
            raise ContractError(
                f"{name} returned the keys {keys}: since the harness scores evaluations, task_eval returns only "
                f"{expected} (the query predictions after 0..max_steps inner steps) and the harness computes the "
                f"metric and the loss from them. Drop {reported}."
            )
        raise ContractError(f"{name} returned the keys {keys}; expected exactly {expected}.")
    predictions = returned[PREDICTIONS]
    shape = tuple(predictions.shape)
    labels = task["query_y"]
    if len(labels.shape) == 1:  # classification: [Q] class ids, predicted as [Q, ways] logits
        wanted = (steps + 1, _dim(labels, 0), _dim(task["label_set"], -1) if "label_set" in task else None)
    else:  # regression: [Q, outputs] targets, predicted as they are
        wanted = (steps + 1, *(_dim(labels, axis) for axis in range(len(labels.shape))))
    if len(shape) != len(wanted) or any(w is not None and s is not None and s != w for s, w in zip(shape, wanted)):
        raise ContractError(
            f"{name} returned predictions of shape {shape}; expected {expected} "
            f"({tuple('?' if w is None else w for w in wanted)} for this task: one row per inner step 0..{steps})."
        )
    dtype = keras.backend.standardize_dtype(predictions.dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise ContractError(f"{name} returned {dtype} predictions; expected floating-point logits or outputs.")
    return predictions if dtype == "float32" else keras.ops.cast(predictions, "float32")


def _dim(tensor, axis: int):
    """A static dimension of ``tensor``, or None where it is only known at run time."""
    dim = tuple(tensor.shape)[axis]
    return None if dim is None else int(dim)


def _name(algorithm) -> str:
    return type(algorithm).__name__
