"""Fitting a new classifier or regressor head on an episode's support set, in a compiled loop.

Used by the fine-tuning and multi-task baselines at evaluation time. The head is trained with
full-batch gradient descent with momentum and weight decay for ``steps`` steps; the query
predictions after every step are recorded (``[steps + 1, Q, outputs]``, step 0 being the untrained
head), for the harness to score (``harness.scoring``).
"""

from __future__ import annotations

from keras import ops


def linear_logits(weights, features):
    """``features [n, F] @ weights[0] [F, out] + weights[1] [out]``."""
    kernel, bias = weights
    return ops.matmul(features, kernel) + bias


def cosine_logits(scale):
    """Baseline++'s head: ``scale * cos(feature, class weight)``; ``weights[0]`` is ``[F, ways]``."""

    def logits(weights, features):
        (kernel,) = weights
        unit_features = features / (ops.norm(features, axis=-1, keepdims=True) + 1e-5)
        unit_kernel = kernel / (ops.norm(kernel, axis=0, keepdims=True) + 1e-5)
        return scale * ops.matmul(unit_features, unit_kernel)

    return logits


def episode_ways(task) -> int:
    """The number of classes of an episode, static: the length of its label set (``harness.episodes``)."""
    return int(task["label_set"].shape[-1])


def fit_on_task(engine, objective, logits_fn, make_initial, task, features_fn, backbone_params, *, finetune, steps,
                learning_rate, momentum, weight_decay):
    """Fit a new head on ``task``'s support set, the backbone frozen (``finetune="head"``) or fine-tuned
    too (``"all"``); returns ``task_eval``'s dict: ``{"predictions": [steps + 1, Q, outputs]}``.

    ``make_initial(feature_dim)`` gives the head's starting tensors; ``features_fn(backbone_params, x)``
    maps inputs to features ``[n, F]``. ``task`` needs no query labels.
    """
    support = features_fn(backbone_params, task["support_x"])
    initial = make_initial(int(support.shape[-1]))
    options = dict(steps=int(steps), learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay)
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
        momentum=0.9, weight_decay=0.0, features_fn=None, backbone_params=()):
    """Train ``initial`` (list of head tensors) on the support set; predict the query set after each step.

    ``features_fn(backbone_params, x) -> [n, F]`` maps inputs to features; when ``backbone_params``
    is non-empty they are fine-tuned together with the head (all layers), otherwise ``support_x``
    and ``query_x`` are already features. Returns the query predictions after 0..steps steps,
    ``[steps + 1, Q, outputs]`` (``engine.trajectory``: one buffer, no per-step copies).
    """
    backbone_params = list(backbone_params)
    head_size = len(initial)

    def predict(params, x):
        head, backbone = params[:head_size], params[head_size:]
        features = features_fn(backbone, x) if backbone else x
        return logits_fn(head, features)

    def support_loss(params):
        loss = objective.loss(predict(params, support_x), support_y)
        if weight_decay:
            loss = loss + 0.5 * weight_decay * sum(ops.sum(ops.square(p)) for p in params[:head_size])
        return loss, ()

    value_and_grad = engine.value_and_grad(support_loss)
    start = list(initial) + backbone_params

    def update(carry, i):
        params, velocity = carry
        (_, _), grads = value_and_grad(list(params))
        velocity = [momentum * v + g for v, g in zip(velocity, grads)]
        params = [p - learning_rate * v for p, v in zip(params, velocity)]
        return params, velocity

    return engine.trajectory(
        update, lambda carry: predict(carry[0], query_x), (start, [ops.zeros_like(p) for p in start]), steps
    )
