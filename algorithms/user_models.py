"""Any Keras model made fit for meta-training: exact batch-norm moments and stateless layers.

Every model a run builds, ours or a user's (a config's ``[model] name = "package.module:function"``
or a ``metabench.models`` entry point), passes through :func:`meta_trainable` before an algorithm
binds it:

- Keras's own ``BatchNormalization`` takes its batch moments with ``tf.nn.moments`` on TensorFlow,
  which stops the gradient of the mean inside the variance: second-order meta-gradients through
  batch statistics come out wrong. Each such layer is swapped for
  :class:`~metabench.algorithms.models.BatchNorm` (same options, same weights, in a clone of the
  model with all its weights), and one log line says so. Where the model cannot be cloned (a subclassed model, or a layer holding the batch norm
  itself), the error names the layer and the fix.
- A ``keras.Sequential`` becomes the equivalent functional model (the same layers, called in order
  on a ``keras.Input``), so that every algorithm can read its ``input`` and split off its last layer.
- Algorithms call the model statelessly (``model.stateless_call``) and keep no state a layer
  updates in its call, except batch-norm statistics (through ``state_variables``) and random seeds.
  A layer that updates another non-trainable variable in its call (a counter, a stateful RNN's
  state) would be silently frozen: it is refused with an error naming it.

Uses Keras only, never a backend.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from metabench.algorithms.models import BatchNorm
from metabench.harness.errors import MetabenchError

logger = logging.getLogger(__name__)


class ModelError(MetabenchError, ValueError):
    """A model metabench cannot meta-train as given; the message names the model or layer and the fix."""


def meta_trainable(model, input_shape, source: str = "model") -> keras.Model:
    """``model`` ready for every algorithm: exact batch-norm moments, functional, built and stateless.

    Args:
        model: what a model builder returned for inputs ``[batch, *input_shape]``.
        input_shape: one example's shape (what the builder received).
        source: the model's name in the config (``"conv4"``, ``"package.module:function"``), for messages.

    Returns:
        ``model`` itself when nothing needs changing (our models: functional, exact batch norm),
        else a functional clone with its weights: each layer rebuilt from its config and its weights
        copied (a custom layer whose config cannot rebuild it is shared as it is), Keras's batch
        norms rebuilt as metabench's.

    Raises:
        ModelError: ``model`` is not a ``keras.Model``; a Keras batch norm cannot be replaced; or a
            layer cannot run statelessly. The message names the layer and what to do.
    """
    if not isinstance(model, keras.Model):
        raise ModelError(
            f"Model builder {source!r} returned {type(model).__name__}, not a keras.Model. A builder takes "
            "(input_shape, outputs) and returns a keras.Model mapping [batch, *input_shape] to [batch, outputs]."
        )
    input_shape = tuple(int(d) for d in input_shape)
    _refuse_stateful_flags(model, source)
    if not model.built:  # a Sequential without an Input, a subclassed model: weights exist once built
        model.build((None, *input_shape))
    copied: list = []  # (layer, its clone): weights to copy once the clone is built
    replaced: list = []  # Keras's batch norms swapped for ours

    def clone_layer(layer):
        if type(layer) is keras.layers.BatchNormalization:
            clone = BatchNorm.from_config(layer.get_config())
            replaced.append(layer)
        else:
            try:  # a fresh layer, so that each layer of the clone has one output (algorithms split at them)
                clone = type(layer).from_config(layer.get_config())
            except Exception:  # a custom layer without a working get_config: shared, weights and all
                return layer
        copied.append((layer, clone))
        return clone

    sequential = isinstance(model, keras.Sequential)
    if sequential or (_is_functional(model) and _keras_batch_norms(model)):
        try:
            if sequential:  # its layers called in order on an input: a functional model every algorithm can split
                inputs = keras.Input(input_shape, dtype=model.inputs[0].dtype if model.inputs else None)
                outputs = inputs
                for layer in model.layers:
                    nested = isinstance(layer, keras.Sequential) or _is_functional(layer)
                    layer = keras.models.clone_model(layer, clone_function=clone_layer, recursive=True) if nested else clone_layer(layer)
                    outputs = layer(outputs)
                clone = keras.Model(inputs, outputs, name=model.name)
            else:
                clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
        except ValueError as error:  # a functional subclass with arguments of its own, say
            names = ", ".join(repr(layer.name) for layer in _keras_batch_norms(model))
            fix = f"It holds the Keras batch norm {names}. {_USE_OURS}" if names else "Return a keras.Model(inputs, outputs)."
            raise ModelError(f"Model builder {source!r}: cannot clone {model.name!r} ({error}). {fix}") from error
        for original, new in copied:
            new.set_weights(original.get_weights())
        model = clone
    _refuse_unreplaced_batch_norm(model, source)
    if replaced:
        logger.info(
            "Model %r: replaced Keras BatchNormalization %s with metabench's BatchNorm (same options and weights), "
            "whose batch moments are differentiable to any order: Keras's stops a gradient inside them on TensorFlow, "
            "which would make second-order meta-gradients wrong.",
            source, ", ".join(repr(original.name) for original in replaced),
        )
    _refuse_stateful_layers(model, input_shape, source)
    return model


_USE_OURS = ("Build it with metabench.algorithms.models.BatchNorm (a drop-in subclass of "
             "keras.layers.BatchNormalization with exact moments), or as a keras.Sequential or functional model.")


def _is_functional(model) -> bool:
    """A functional model (``keras.Model(inputs, outputs)``), which ``clone_model`` rebuilds layer by layer."""
    return hasattr(model, "_run_through_graph") and not isinstance(model, keras.Sequential)


def _layers(model) -> list:
    """Every layer inside ``model``, nested models' and custom layers' own included, parents first."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def _keras_batch_norms(model) -> list:
    return [layer for layer in _layers(model) if type(layer) is keras.layers.BatchNormalization]


def _refuse_unreplaced_batch_norm(model, source: str) -> None:
    """A Keras batch norm (or a subclass keeping its moments) that is still inside ``model`` is an error."""
    for layer in _layers(model):
        if not isinstance(layer, keras.layers.BatchNormalization) or isinstance(layer, BatchNorm):
            continue
        if type(layer) is keras.layers.BatchNormalization:
            where = ("inside a subclassed model" if not _is_functional(model) and not isinstance(model, keras.Sequential)
                     else "inside a layer of its own, which a clone cannot reach")
            raise ModelError(
                f"Model builder {source!r}: layer {layer.name!r} is a keras.layers.BatchNormalization {where}; its "
                f"moments stop a gradient on TensorFlow, so second-order meta-gradients through it would be wrong. "
                f"{_USE_OURS}"
            )
        if type(layer)._moments is keras.layers.BatchNormalization._moments:
            raise ModelError(
                f"Model builder {source!r}: layer {layer.name!r} ({type(layer).__name__}) subclasses "
                "keras.layers.BatchNormalization and keeps its moments, which stop a gradient on TensorFlow. "
                "Derive it from metabench.algorithms.models.BatchNorm instead."
            )


def _refuse_stateful_flags(model, source: str) -> None:
    """Refuse layers built to carry state from one call to the next (a recurrent layer's ``stateful=True``)."""
    for layer in _layers(model):
        if getattr(layer, "stateful", False) is True:
            raise ModelError(
                f"Model builder {source!r}: layer {layer.name!r} ({type(layer).__name__}) is stateful=True: it carries "
                "state from one call to the next, which algorithms calling the model statelessly would drop. "
                "Build it with stateful=False."
            )


def _refuse_stateful_layers(model, input_shape, source: str) -> None:
    """Refuse layers whose call updates state that a stateless call would drop (all but batch norm and seeds)."""
    layers = _layers(model)
    allowed = set()
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # running statistics: an algorithm's state_variables
            allowed.update(id(v) for v in layer.non_trainable_variables)
        for generator in getattr(layer, "_seed_generators", ()):  # Dropout and other random layers
            allowed.add(id(generator.state))
    watched = [(i, v) for i, v in enumerate(model.non_trainable_variables) if id(v) not in allowed]
    if not watched:
        return
    # One call on a random batch, as an algorithm makes it: a watched variable it changes is state
    # the call updates (constants such as an adapted Normalization layer's mean stay put).
    dtype = model.inputs[0].dtype if getattr(model, "inputs", None) else keras.config.floatx()
    x = np.random.default_rng(0).uniform(0.0, 1.0, size=(2, *input_shape)).astype(dtype)
    before = [v.value for v in model.non_trainable_variables]
    _, after = model.stateless_call([v.value for v in model.trainable_variables], before, x, training=True)
    for i, variable in watched:
        if not np.array_equal(variable.numpy(), keras.ops.convert_to_numpy(after[i])):
            owner = next((layer for layer in reversed(layers) if any(v is variable for v in layer.non_trainable_variables)), None)
            name = f"layer {owner.name!r} ({type(owner).__name__})" if owner is not None else f"the model {model.name!r}"
            raise ModelError(
                f"Model builder {source!r}: {name} updates its non-trainable variable {variable.path!r} when called. "
                "Algorithms call the model statelessly and keep only batch-norm statistics and random seeds, so "
                "this update would be silently dropped. Make the layer stateless (no variable assigned in call), "
                "or keep the value as a constant."
            )
