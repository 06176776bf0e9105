"""Inner-loop update rules, small and composable (as optax's transforms are).

A rule is ``update(params, grads, step) -> new params``; ``step`` is the 0-based inner step
index (a Python int). Rules hold no state of their own: learned rates live in the algorithm's
meta-parameters and are passed in.
"""

from __future__ import annotations

from keras import ops


def check_inner_loop(inner_lr, inner_steps, eval_inner_lr=0.0) -> None:
    """Refuse a non-positive step size or fewer than one inner step, naming the value (a ``ValueError``).

    ``eval_inner_lr`` may be 0 (evaluation uses ``inner_lr``)."""
    if not inner_lr > 0:
        raise ValueError(f"Received inner_lr={inner_lr}; expected a positive step size.")
    if int(inner_steps) < 1:
        raise ValueError(f"Received inner_steps={inner_steps}; expected at least 1.")
    if eval_inner_lr and not eval_inner_lr > 0:
        raise ValueError(f"Received eval_inner_lr={eval_inner_lr}; expected a positive step size, or 0 for inner_lr.")


def sgd(learning_rate: float):
    """Plain gradient descent with one fixed step size (MAML)."""

    def update(params, grads, step):
        return [p - learning_rate * g for p, g in zip(params, grads)]

    return update


def per_step_per_tensor(rates):
    """Gradient descent with one learned rate per parameter tensor and inner step (MAML++'s LSLR).

    ``rates``: tensor ``[num_steps, num_tensors]``; steps past the last row use the last row.
    """

    def update(params, grads, step):
        row = rates[min(step, int(rates.shape[0]) - 1)]
        return [p - row[i] * g for i, (p, g) in enumerate(zip(params, grads))]

    return update


def first_order(grads):
    """Hold the inner gradients constant (no second-order terms through them)."""
    return [ops.stop_gradient(g) for g in grads]


def adam(learning_rate: float, beta1: float = 0.0, beta2: float = 0.999, epsilon: float = 1e-8):
    """Adam with its moments carried by the caller: ``(init, update)``.

    ``init(params) -> moments`` (zeros: ``[first moments, second moments]``, each a list aligned
    with ``params``); ``update(params, grads, moments, step) -> (new params, new moments)``, where
    ``step`` is the 0-based step (a Python int or a scalar tensor). The rule of TensorFlow 1's
    ``tf.train.AdamOptimizer`` (what Reptile's code runs, with ``beta1=0``): ``lr_t = lr *
    sqrt(1 - beta2^t) / (1 - beta1^t)`` and ``p -= lr_t * m / (sqrt(v) + epsilon)``, ``t = step + 1``.
    """

    def init(params):
        return [[ops.zeros_like(p) for p in params], [ops.zeros_like(p) for p in params]]

    def update(params, grads, moments, step):
        t = ops.cast(step, "float32") + 1.0
        rate = learning_rate * ops.sqrt(1.0 - ops.power(beta2, t)) / (1.0 - ops.power(beta1, t))
        first = [beta1 * m + (1.0 - beta1) * g for m, g in zip(moments[0], grads)]
        second = [beta2 * v + (1.0 - beta2) * ops.square(g) for v, g in zip(moments[1], grads)]
        new = [p - rate * m / (ops.sqrt(v) + epsilon) for p, m, v in zip(params, first, second)]
        return new, [first, second]

    return init, update
