"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio and Vinyals, ICLR 2020): MAML that adapts the head only."""

from __future__ import annotations

import keras
from keras import ops

from metabench.algorithms import heads, inner
from metabench.algorithms.maml import MAML


class ANIL(MAML):
    """MAML whose inner loop adapts only the last layer (the head); the body is learned by the outer loop alone.

    The body (every layer but the last) embeds the support and query sets once per task; the inner
    loop takes ``inner_steps`` plain gradient steps of size ``inner_lr`` on the head's kernel and
    bias, on the support features; the outer loss is the query loss of the adapted head on the
    query features, differentiated through the inner loop into the head and the body (second order)
    or with the inner gradients held constant (``first_order=True``). The result is MAML with every
    body weight frozen in the inner loop, at the cost of a linear layer's inner steps. Options,
    evaluation (first-order inner steps of ``eval_inner_lr``, ``0.0`` meaning ``inner_lr``, from the meta-learned head) and batch
    norm (transductive: batch statistics of the support or query batch at training and test time,
    as MAML) are MAML's (``metabench.algorithms.maml``); the model's last layer must be a linear
    ``Dense`` layer with a bias (as conv4's and the MLP's are).

    Shapes: ``support_x [S, ...]`` -> features ``[S, F]``; head ``[kernel [F, out], bias [out]]``;
    query logits or outputs ``[Q, out]``.

    Example (one 2-way 1-shot task of 2-d points, a small MLP, eagerly):
        >>> import numpy as np
        >>> from metabench.algorithms.models import mlp
        >>> from metabench.harness.engines import get_engine
        >>> task = {"support_x": np.array([[0.0, 0.0], [1.0, 1.0]], "float32"), "support_y": np.array([0, 1], "int32"),
        ...         "query_x": np.array([[0.1, 0.0], [0.9, 1.0]], "float32"), "query_y": np.array([0, 1], "int32"),
        ...         "label_set": np.array([0, 1], "int32")}
        >>> anil = ANIL(inner_lr=0.4, inner_steps=1).build(mlp(2, 2, hidden=[8]), "classification", get_engine("tensorflow"))
        >>> params = [v.value for v in anil.meta_variables()]
        >>> adapted = anil.adapt(params, task["support_x"], task["support_y"])
        >>> adapted[0] is params[0], [tuple(p.shape) for p in adapted]   # the body as it was, the head adapted
        (True, [(2, 8), (8,), (8, 2), (2,)])
    """

    name = "anil"

    def __init__(self, *, inner_lr=0.01, inner_steps=1, eval_inner_lr=0.0, first_order=False, batch_norm="transductive"):
        super().__init__(inner_lr=inner_lr, inner_steps=inner_steps, eval_inner_lr=eval_inner_lr, first_order=first_order,
                         batch_norm=batch_norm)

    def build(self, model, task_kind, engine):
        super().build(model, task_kind, engine)
        last = model.layers[-1]
        if not isinstance(last, keras.layers.Dense) or not last.use_bias or last.activation is not keras.activations.linear:
            raise ValueError(f"ANIL adapts a linear head: {model.name}'s last layer must be a Dense layer with a bias and no activation.")
        self._body, self._body_index, self._head_index = heads.split_head(model)
        return self

    def _features(self, params, x):
        """The body's features ``[n, F]`` of ``x [n, ...]`` (batch statistics, as ``apply``)."""
        body = [params[i] for i in self._body_index]
        non_trainable = [v.value for v in self._body.non_trainable_variables]
        return self._body.stateless_call(body, non_trainable, x, training=True)[0]

    def _head_step(self, head, features, labels, lr, first_order):
        """One inner step on the head ``[kernel, bias]`` from the support ``features [S, F]``."""

        def loss(weights):
            return self.objective.loss(heads.linear_logits(weights, features), labels), ()

        (_, _), grads = self.engine.value_and_grad(loss)(head)
        return inner.sgd(lr)(head, inner.first_order(grads) if first_order else grads, 0)

    def adapt(self, params, support_x, support_y, steps=None, lr=None, first_order=None):
        """``params`` after ``steps`` inner steps (default: the training ones) on the support set: the
        body's tensors unchanged (the same objects), the head's adapted; a list aligned with ``params``."""
        steps = int(self.inner_steps if steps is None else steps)
        first_order = self.first_order if first_order is None else first_order
        features = self._features(params, support_x)
        head = [params[i] for i in self._head_index]
        for _ in range(steps):
            head = self._head_step(head, features, support_y, self.inner_lr if lr is None else lr, first_order)
        adapted = list(params)
        for position, value in zip(self._head_index, head):
            adapted[position] = value
        return adapted

    def task_loss(self, params, state, task):
        fast = self.adapt(params, task["support_x"], task["support_y"])
        predictions = self.apply(fast, task["query_x"])
        loss = self.objective.loss(predictions, task["query_y"])
        return loss, ({self.objective.metric_name: self.objective.metric(predictions, task["query_y"])}, state)

    def task_eval(self, params, state, task, max_steps):
        lr = self.eval_inner_lr or self.inner_lr
        params = [ops.stop_gradient(p) for p in params]
        support, query = self._features(params, task["support_x"]), self._features(params, task["query_x"])
        head = [params[i] for i in self._head_index]

        def update(weights, step):
            return self._head_step(list(weights), support, task["support_y"], lr, first_order=True)

        predictions = self.engine.trajectory(update, lambda weights: heads.linear_logits(weights, query), head, max_steps)
        return {"predictions": predictions}

    def notes(self):
        return {**super().notes(), "adapted": "head only (last layer); the body is frozen in the inner loop"}
