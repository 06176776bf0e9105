"""Reptile (Nichol, Achiam and Schulman, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999, 2018)."""

from __future__ import annotations

import keras
from keras import ops

from metabench.algorithms import heads, inner
from metabench.algorithms.base import Algorithm

INNER_OPTIMIZERS = ("sgd", "adam")
TRAIN_ON = ("support", "support_and_query")
EVALUATION = ("non_transductive", "transductive")
ADAM_STATE = ("per_task", "carried")
MINIBATCH_ORDER = ("fixed", "per_task")


class Reptile(Algorithm):
    """Reptile, batched: train on each task, then move the meta-parameters toward the trained weights.

    Inner loop (per task, from the meta-parameters ``theta``): ``inner_steps`` steps of SGD or of Adam
    (``inner_optimizer="adam"``, ``beta1=adam_beta1``: 0 in the paper's Omniglot runs) with step size
    ``inner_lr``, on the support set (``train_on="support_and_query"``: on support and query together),
    whole (``inner_batch_size=0``) or in minibatches of ``inner_batch_size`` examples drawn without
    replacement from reshuffled copies of the set, a batch running on into the next copy (the
    ``_mini_batches`` of ``openai/supervised-reptile``). The shuffles: ``minibatch_order="per_task"``
    draws them afresh for every training task (from the task's ``task_seed`` and ``shuffle_seed``, as
    the reference shuffles every task); ``"fixed"`` uses the permutations of ``shuffle_seed`` in every
    task, so that over a class-sorted support set each step sees the same classes in every task (a
    variant, kept for the results measured with it). The adapted weights are ``phi``.

    Outer step, as a pseudo-gradient: ``task_loss``'s gradient with respect to ``theta`` is exactly
    ``theta - phi`` (its value, the query loss of ``phi``, is reported, never differentiated). The
    engine averages it over the meta-batch and hands it to the outer optimizer, so
    ``train.meta_optimizer = "sgd"`` with step ``epsilon`` (``train.meta_lr``; ``"linear"`` schedule:
    the paper's 1 annealed to 0) is Reptile's ``theta += epsilon * mean(phi - theta)``, and Adam
    takes its rescaled step along the same direction (a variant).

    Evaluation: from ``theta``, the same inner optimizer for up to ``max_steps`` steps of
    ``eval_inner_lr`` (``0.0``, the default, or ``None``: ``inner_lr``) on the support set (minibatches
    of ``eval_batch_size``, in the permutations of ``shuffle_seed``), predicting the queries after each. Batch norm uses batch statistics throughout (as the reference code); with
    ``evaluation="non_transductive"`` (the default) each query is normalised with the support set plus
    itself alone (the reference code's non-transductive mode), with ``"transductive"`` all queries of
    an episode form one batch (the paper's "+ transduction" rows).

    Adam's state: ``adam_state="per_task"`` starts the moments and step count at zero in every task;
    ``"carried"`` (the reference code's one ``tf.train.AdamOptimizer``) keeps them in state
    variables that every task starts from, that a meta-step replaces with their task-mean (the
    reference runs its tasks one after another), and that evaluation starts from and leaves unchanged.

    Shapes: ``support_x [S, ...]``, ``support_y [S]`` or ``[S, out]``; predictions ``[max_steps + 1, Q, out]``.
    """

    name = "reptile"

    def __init__(self, *, inner_lr=0.001, inner_steps=5, inner_optimizer="adam", adam_beta1=0.0, adam_beta2=0.999,
                 inner_batch_size=0, train_on="support", eval_inner_lr=0.0, eval_batch_size=0,
                 evaluation="non_transductive", adam_state="per_task", minibatch_order="fixed", shuffle_seed=0):
        super().__init__()
        for option, value, allowed in (("inner_optimizer", inner_optimizer, INNER_OPTIMIZERS), ("train_on", train_on, TRAIN_ON),
                                       ("evaluation", evaluation, EVALUATION), ("adam_state", adam_state, ADAM_STATE),
                                       ("minibatch_order", minibatch_order, MINIBATCH_ORDER)):
            if value not in allowed:
                raise ValueError(f"Received {option}={value!r}; expected one of {list(allowed)}.")
        inner.check_inner_loop(inner_lr, inner_steps, eval_inner_lr)
        if adam_state == "carried" and inner_optimizer != "adam":
            raise ValueError(f"Received adam_state={adam_state!r} with inner_optimizer={inner_optimizer!r}; a carried state "
                             "needs inner_optimizer='adam' (SGD has none).")
        if int(inner_batch_size) < 0 or int(eval_batch_size) < 0:
            raise ValueError(f"Received inner_batch_size={inner_batch_size}, eval_batch_size={eval_batch_size}; expected "
                             "batch sizes >= 0 (0: the whole set).")
        self.inner_lr, self.inner_steps, self.inner_optimizer = inner_lr, inner_steps, inner_optimizer
        self.adam_beta1, self.adam_beta2 = adam_beta1, adam_beta2
        self.inner_batch_size, self.train_on, self.eval_inner_lr = inner_batch_size, train_on, eval_inner_lr
        self.eval_batch_size, self.evaluation, self.shuffle_seed = eval_batch_size, evaluation, shuffle_seed
        self.adam_state, self.minibatch_order = adam_state, minibatch_order
        self._adam_variables = []

    def build(self, model, task_kind, engine):
        super().build(model, task_kind, engine)
        self._batch_norm = any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
        if self.adam_state == "carried":
            moments = [keras.Variable(ops.zeros_like(v.value), trainable=False, name=f"adam_{kind}_{v.name}")
                       for kind in ("m", "v") for v in self.meta_variables()]
            self._adam_variables = moments + [keras.Variable(0.0, trainable=False, name="adam_steps")]
        return self

    def state_variables(self):
        """``adam_state="carried"``: Adam's first moments, second moments (aligned with ``params``), then its step count."""
        return self._adam_variables

    def _start(self, params, state):
        """The inner loop's initial carry ``(params, moments, steps taken)`` from the meta-parameters and the state."""
        initial = [ops.stop_gradient(p) for p in params]
        if self.adam_state == "carried":
            n = len(initial)
            return initial, [list(state[:n]), list(state[n : 2 * n])], state[2 * n]
        return initial, self._rule(self.inner_lr)[0](initial), 0.0

    def _rule(self, lr):
        """``(init, update)``: ``init(params) -> moments``, ``update(params, grads, moments, step) -> (params, moments)``."""
        if self.inner_optimizer == "adam":
            return inner.adam(lr, self.adam_beta1, self.adam_beta2)
        sgd = inner.sgd(lr)
        return (lambda params: []), (lambda params, grads, moments, step: (sgd(params, grads, step), moments))

    def _order(self, size, batch_size, steps, task_seed=None):
        """Example indices ``[epochs * size]``: reshuffled copies of ``0..size-1`` (``None``: whole-set
        steps), drawn from ``task_seed`` (an int32 scalar tensor) when given, else from ``shuffle_seed``."""
        if not batch_size or batch_size == size:
            return None
        epochs = -(-steps * batch_size // size)
        if task_seed is None:
            return ops.reshape(heads.epoch_orders(epochs, size, self.shuffle_seed), (-1,))
        return ops.reshape(ops.argsort(self.engine.task_uniform((epochs, size), task_seed, self.shuffle_seed), axis=-1), (-1,))

    def _step(self, carry, step, x, y, update, batch_size, order):
        """One inner step on ``x [n, ...]``, ``y``: the minibatch of ``step`` when ``order`` is given;
        Adam's bias correction counts ``taken + step`` earlier steps."""
        params, moments, taken = carry
        if order is not None:
            picked = ops.take(order, step * batch_size + ops.arange(batch_size))
            x, y = ops.take(x, picked, axis=0), ops.take(y, picked, axis=0)

        def loss(weights):
            return self.objective.loss(self.apply(weights, x), y), ()

        (_, _), grads = self.engine.value_and_grad(loss)(list(params))
        return (*update(list(params), grads, moments, ops.cast(step, "float32") + taken), taken)

    def _predict(self, params, support_x, query_x):
        """Query predictions ``[Q, out]``; non-transductive: each query batch-normalised with the support set alone."""
        if self.evaluation == "transductive" or not self._batch_norm:
            return self.apply(params, query_x)
        return ops.vectorized_map(lambda q: self.apply(params, ops.concatenate([support_x, q[None]], axis=0))[-1], query_x)

    def task_loss(self, params, state, task):
        x, y = task["support_x"], task["support_y"]
        if self.train_on == "support_and_query":
            x, y = ops.concatenate([x, task["query_x"]], axis=0), ops.concatenate([y, task["query_y"]], axis=0)
        steps, batch_size = int(self.inner_steps), int(self.inner_batch_size)
        task_seed = None
        if self.minibatch_order == "per_task":
            if "task_seed" not in task:
                raise ValueError("minibatch_order='per_task' needs each training task's 'task_seed' (the harness's "
                                 "training batches carry it); pass it, or use minibatch_order='fixed'.")
            task_seed = task["task_seed"]
        order = self._order(int(x.shape[0]), batch_size, steps, task_seed)
        update = self._rule(self.inner_lr)[1]
        carry = self._start(params, state)
        for step in range(steps):
            carry = self._step(carry, step, x, y, update, batch_size, order)
        adapted = [ops.stop_gradient(p) for p in carry[0]]
        if self.adam_state == "carried":
            state = [*carry[1][0], *carry[1][1], carry[2] + float(steps)]
        predictions = self.apply(adapted, task["query_x"])
        loss = ops.stop_gradient(self.objective.loss(predictions, task["query_y"]))
        # d(surrogate)/d(theta) = theta - phi: the Reptile direction as a (pseudo-)gradient; its value adds exactly 0.
        surrogate = sum(ops.sum(p * ops.stop_gradient(p - a)) for p, a in zip(params, adapted))
        metrics = {self.objective.metric_name: self.objective.metric(predictions, task["query_y"])}
        return loss + (surrogate - ops.stop_gradient(surrogate)), (metrics, state)

    def task_eval(self, params, state, task, max_steps):
        x, y = task["support_x"], task["support_y"]
        batch_size = int(self.eval_batch_size)
        order = self._order(int(x.shape[0]), batch_size, int(max_steps))
        update = self._rule(self.eval_inner_lr or self.inner_lr)[1]
        predictions = self.engine.trajectory(
            lambda carry, step: self._step(carry, step, x, y, update, batch_size, order),
            lambda carry: self._predict(carry[0], x, task["query_x"]),
            self._start(params, state), max_steps,
        )
        return {"predictions": predictions}

    def notes(self):
        batches = f"minibatches of {self.eval_batch_size}" if self.eval_batch_size else "the whole support set"
        return {
            "inner": f"{self.inner_optimizer} (lr {self.inner_lr}"
            + (f", beta1 {self.adam_beta1}, state {self.adam_state.replace('_', ' ')})" if self.inner_optimizer == "adam" else ")")
            + (f"; minibatches of {self.inner_batch_size}, order {self.minibatch_order.replace('_', ' ')}" if self.inner_batch_size else ""),
            "evaluation": f"fine-tuned on {batches}; "
            + ("non-transductive: each query batch-normalised with the support set alone" if self.evaluation == "non_transductive"
               else "transductive: the queries of an episode batch-normalised together"),
            "outer": "Reptile direction (theta - phi) as the outer optimizer's gradient",
        }
