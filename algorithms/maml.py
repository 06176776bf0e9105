"""Model-Agnostic Meta-Learning (Finn, Abbeel and Levine, ICML 2017)."""

from __future__ import annotations

import keras
from keras import ops

from metabench.algorithms import inner
from metabench.algorithms.base import Algorithm

BATCH_NORM_MODES = ("transductive",)


class MAML(Algorithm):
    """Second-order MAML, or first-order MAML (FOMAML) with ``first_order=True``.

    The inner loop takes ``inner_steps`` plain gradient steps of size ``inner_lr`` on a task's
    support set, starting from the meta-parameters; the outer loss is the query loss of the adapted
    weights, differentiated through the inner loop (second order) or with the inner gradients held
    constant (first order).

    Args:
        inner_lr: inner-loop step size during meta-training (0.4 for Omniglot 5-way, 0.01 sinusoid).
        inner_steps: inner steps during meta-training (1 for Omniglot 5-way).
        eval_inner_lr: step size at evaluation; ``0.0`` (the default; ``None`` too) means ``inner_lr``.
        first_order: drop the second-order terms of the meta-gradient.
        batch_norm: ``"transductive"``: batch statistics of the current batch at training and test
            time, as in the MAML code; a test query batch is normalised with its own statistics, so
            results are transductive, and the report says so.
        adapt_batch_norm: whether the inner loop adapts the batch-norm scale and offset (``True``,
            this project's first version: every trainable weight is adapted) or leaves them to the
            outer loop alone (``False``, the MAML code: its ``tf.contrib.layers.batch_norm``
            variables are not in the ``weights`` dict the inner loop updates, but the
            meta-optimizer learns them).

    Example (one 2-way 1-shot task of 2-d points, a small MLP, eagerly):
        >>> import numpy as np
        >>> from metabench.algorithms.models import mlp
        >>> from metabench.harness.engines import get_engine
        >>> task = {"support_x": np.array([[0.0, 0.0], [1.0, 1.0]], "float32"), "support_y": np.array([0, 1], "int32"),
        ...         "query_x": np.array([[0.1, 0.0], [0.9, 1.0]], "float32"), "query_y": np.array([0, 1], "int32"),
        ...         "label_set": np.array([0, 1], "int32")}
        >>> maml = MAML(inner_lr=0.4, inner_steps=1).build(mlp(2, 2, hidden=[8]), "classification", get_engine("tensorflow"))
        >>> loss, (metrics, _) = maml.task_loss([v.value for v in maml.meta_variables()], [], task)
        >>> tuple(loss.shape), sorted(metrics)
        ((), ['accuracy'])
    """

    name = "maml"

    def __init__(self, *, inner_lr=0.01, inner_steps=1, eval_inner_lr=0.0, first_order=False, batch_norm="transductive",
                 adapt_batch_norm=True):
        super().__init__()
        inner.check_inner_loop(inner_lr, inner_steps, eval_inner_lr)
        if batch_norm not in BATCH_NORM_MODES:
            raise ValueError(f"Received batch_norm={batch_norm!r}; expected one of {list(BATCH_NORM_MODES)}.")
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_lr = eval_inner_lr
        self.first_order = first_order
        self.batch_norm = batch_norm
        self.adapt_batch_norm = adapt_batch_norm

    def build(self, model, task_kind, engine):
        super().build(model, task_kind, engine)
        normalization = {
            v.path for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization) for v in layer.trainable_variables
        }
        # Per meta-variable: whether the inner loop leaves it as it is.
        self._held = [not self.adapt_batch_norm and v.path in normalization for v in model.trainable_variables]
        return self

    def _support_loss(self, params, task):
        predictions = self.apply(params, task["support_x"])
        return self.objective.loss(predictions, task["support_y"]), ()

    def _inner_step(self, params, task, lr, first_order):
        (_, _), grads = self.engine.value_and_grad(self._support_loss)(params, task)
        if first_order:
            grads = inner.first_order(grads)
        updated = inner.sgd(lr)(params, grads, 0)
        if not self.adapt_batch_norm:
            updated = [p if held else u for p, u, held in zip(params, updated, self._held)]
        return updated

    def task_loss(self, params, state, task):
        fast = params
        for _ in range(int(self.inner_steps)):
            fast = self._inner_step(fast, task, self.inner_lr, self.first_order)
        predictions = self.apply(fast, task["query_x"])
        loss = self.objective.loss(predictions, task["query_y"])
        return loss, ({self.objective.metric_name: self.objective.metric(predictions, task["query_y"])}, state)

    def task_eval(self, params, state, task, max_steps):
        lr = self.eval_inner_lr or self.inner_lr
        fast = [ops.stop_gradient(p) for p in params]
        predictions = []
        for step in range(int(max_steps) + 1):
            if step:
                fast = self._inner_step(fast, task, lr, first_order=True)
            predictions.append(self.apply(fast, task["query_x"]))
        return {"predictions": ops.stack(predictions)}

    def notes(self):
        return {
            "order": "first" if self.first_order else "second",
            "batch_norm": "transductive (batch statistics at test time)"
            + ("" if self.adapt_batch_norm else "; its scale and offset are not adapted in the inner loop"),
        }
