"""Fitting a new classifier or regressor head on an episode's support set, in a compiled loop.

Used by the fine-tuning and multi-task baselines at evaluation time. The head is trained with SGD
with momentum (PyTorch's ``torch.optim.SGD`` rule, dampening included) and weight decay for
``steps`` steps, each on the whole support set or, with ``batch_size``, on minibatches of a
reshuffled support set (epoch after epoch, as Closer Look's ``baselinefinetune.py`` does); the
query predictions after every step are recorded (``[steps + 1, Q, outputs]``, step 0 being the
untrained head), for the harness to score (``harness.run.scoring``).
"""

from __future__ import annotations

import keras
from keras import ops


def linear_logits(weights, features):
    """``features [n, F] @ weights[0] [F, out] + weights[1] [out]``."""
    kernel, bias = weights
    return ops.matmul(features, kernel) + bias


def cosine_logits(scale, *, weight_norm: bool = False):
    """Baseline++'s head: ``scale * cos(feature, class weight)``; ``weights[0]`` is ``[F, ways]``.

    ``weight_norm=True``: Closer Look's ``distLinear`` as its code builds it, a bias-free linear
    layer wrapped in ``WeightNorm`` (``dim=0``): class ``c``'s weight is ``g_c * v_c / |v_c|`` with a
    learnable gain ``g_c``, so the logits are ``scale * g_c * cos(feature, v_c)``; ``weights`` is
    ``[kernel [F, ways], gain [ways]]`` (see :func:`weight_norm_gain` for its initial value).
    """

    def logits(weights, features):
        kernel = weights[0]
        unit_features = features / (ops.norm(features, axis=-1, keepdims=True) + 1e-5)
        unit_kernel = kernel / (ops.norm(kernel, axis=0, keepdims=True) + 1e-5)
        cosines = ops.matmul(unit_features, unit_kernel)
        if weight_norm:
            cosines = cosines * weights[1]
        return scale * cosines

    return logits


def weight_norm_gain(kernel):
    """The initial gain ``[ways]`` of a WeightNorm'd ``kernel [F, ways]``: the norm of each class's
    weight vector, as ``torch.nn.utils.weight_norm`` initialises ``g`` (the weights are unchanged)."""
    return ops.norm(kernel, axis=0)


def episode_ways(task) -> int:
    """The number of classes of an episode, static: the length of its label set (``harness.data.episodes``)."""
    return int(task["label_set"].shape[-1])


def fit_on_task(engine, objective, logits_fn, make_initial, task, features_fn, backbone_params, *, finetune, steps,
                learning_rate, momentum, weight_decay, dampening=0.0, batch_size=0, shuffle_seed=0):
    """Fit a new head on ``task``'s support set, the backbone frozen (``finetune="head"``) or fine-tuned
    too (``"all"``); returns ``task_eval``'s dict: ``{"predictions": [steps + 1, Q, outputs]}``.

    ``make_initial(feature_dim)`` gives the head's starting tensors; ``features_fn(backbone_params, x)``
    maps inputs to features ``[n, F]``. ``task`` needs no query labels.
    """
    support = features_fn(backbone_params, task["support_x"])
    initial = make_initial(int(support.shape[-1]))
    options = dict(steps=int(steps), learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay)
    if dampening or batch_size:  # passed only when set, so the default path is the one it always was
        options.update(dampening=dampening, batch_size=batch_size, shuffle_seed=shuffle_seed)
    if finetune == "all":
        predictions = fit(
            engine, objective, logits_fn, initial, task["support_x"], task["support_y"], task["query_x"],
            features_fn=features_fn, backbone_params=backbone_params, **options,
        )
    else:
        query = features_fn(backbone_params, task["query_x"])
        predictions = fit(engine, objective, logits_fn, initial, support, task["support_y"], query, **options)
    return {"predictions": predictions}


def fit(engine, objective, logits_fn, initial, support_x, support_y, query_x, *, steps, learning_rate,
        momentum=0.9, weight_decay=0.0, dampening=0.0, batch_size=0, shuffle_seed=0, features_fn=None,
        backbone_params=()):
    """Train ``initial`` (list of head tensors) on the support set; predict the query set after each step.

    ``features_fn(backbone_params, x) -> [n, F]`` maps inputs to features; when ``backbone_params``
    is non-empty they are fine-tuned together with the head (all layers), otherwise ``support_x``
    and ``query_x`` are already features. Returns the query predictions after 0..steps steps,
    ``[steps + 1, Q, outputs]`` (``engine.trajectory``: one buffer, no per-step copies).

    The update is ``torch.optim.SGD``'s: ``g = grad + weight_decay * p`` (weight decay on the head
    only), ``buf = g`` at the first step and ``buf = momentum * buf + (1 - dampening) * g`` after,
    ``p = p - learning_rate * buf``. ``batch_size = 0`` takes every step on the whole support set;
    ``batch_size = B`` splits each epoch's reshuffled support set into ``ceil(S / B)`` minibatches
    (the last one smaller when ``B`` does not divide ``S``), one step each, the order of every
    epoch drawn from ``shuffle_seed`` (the same for every episode: fixed and reproducible).
    """
    backbone_params = list(backbone_params)
    head_size = len(initial)
    support_size = int(support_x.shape[0])
    if batch_size < 0 or not 0.0 <= dampening < 1.0:
        raise ValueError(f"Received batch_size={batch_size}, dampening={dampening}; expected batch_size >= 0 "
                         "(0: the whole support set) and 0 <= dampening < 1.")
    minibatches = 0 < batch_size < support_size

    def predict(params, x):
        head, backbone = params[:head_size], params[head_size:]
        features = features_fn(backbone, x) if backbone else x
        return logits_fn(head, features)

    def decay(params):
        return 0.5 * weight_decay * sum(ops.sum(ops.square(p)) for p in params[:head_size])

    def support_loss(params):
        loss = objective.loss(predict(params, support_x), support_y)
        if weight_decay:
            loss = loss + decay(params)
        return loss, ()

    if minibatches:
        per_epoch = -(-support_size // int(batch_size))
        epochs = max(1, -(-int(steps) // per_epoch))
        orders = epoch_orders(epochs, support_size, shuffle_seed)

        def minibatch_loss(params, i):
            slots = (i % per_epoch) * int(batch_size) + ops.arange(int(batch_size))
            picked = ops.take(ops.take(orders, i // per_epoch, axis=0), ops.minimum(slots, support_size - 1))
            weights = ops.cast(slots < support_size, "float32")  # a short last batch: its padding weighs 0
            per_example = _per_example_loss(
                objective, predict(params, ops.take(support_x, picked, axis=0)), ops.take(support_y, picked, axis=0)
            )
            loss = ops.sum(per_example * weights) / ops.sum(weights)
            if weight_decay:
                loss = loss + decay(params)
            return loss, ()

        value_and_grad = engine.value_and_grad(minibatch_loss)
    else:
        value_and_grad = engine.value_and_grad(support_loss)
    start = list(initial) + backbone_params

    def update(carry, i):
        params, velocity = carry
        (_, _), grads = value_and_grad(list(params), i) if minibatches else value_and_grad(list(params))
        if dampening:
            velocity = [ops.where(i == 0, g, momentum * v + (1.0 - dampening) * g) for v, g in zip(velocity, grads)]
        else:
            velocity = [momentum * v + g for v, g in zip(velocity, grads)]
        params = [p - learning_rate * v for p, v in zip(params, velocity)]
        return params, velocity

    return engine.trajectory(
        update, lambda carry: predict(carry[0], query_x), (start, [ops.zeros_like(p) for p in start]), steps
    )


def epoch_orders(epochs: int, size: int, seed: int):
    """The order of the support set in each fitting epoch: ``[epochs, size]`` int, each row a
    permutation of ``0..size-1``, drawn statelessly from ``seed`` (the same wherever it is traced)."""
    return ops.argsort(keras.random.uniform((int(epochs), int(size)), seed=int(seed)), axis=-1)


def _per_example_loss(objective, predictions, targets):
    """``objective.loss`` before its mean over examples: ``[n]``."""
    if objective.kind == "classification":
        return ops.sparse_categorical_crossentropy(targets, predictions, from_logits=True)
    return ops.mean(ops.reshape(ops.square(predictions - targets), (int(predictions.shape[0]), -1)), axis=-1)


def split_head(model):
    """``model`` as a body and a last layer (the head), for algorithms that treat them apart (ANIL, ProtoNets).

    Returns ``(body, body_index, head_index)``: ``body`` is ``model`` without its last layer, a
    ``keras.Model`` sharing its weights (``x [n, ...] -> features [n, F]``); ``body_index`` and
    ``head_index`` are the positions of the body's and the head's weights in
    ``model.trainable_variables``. Raises ``ValueError`` when state (non-trainable weights, e.g.
    batch-norm statistics) follows the body.
    """
    body = keras.Model(model.input, model.layers[-2].output, name="body")  # model.input: no list-structure warning
    position = {v.path: i for i, v in enumerate(model.trainable_variables)}
    body_index = [position[v.path] for v in body.trainable_variables]
    head_index = [position[v.path] for v in model.layers[-1].trainable_variables]
    if [v.path for v in body.non_trainable_variables] != [v.path for v in model.non_trainable_variables]:
        raise ValueError(f"{model.name}: the last layer must be the head, with no state after the body.")
    return body, body_index, head_index
