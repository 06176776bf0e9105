"""Inner-loop update rules, small and composable (as optax's transforms are).

A rule is ``update(params, grads, step) -> new params``; ``step`` is the 0-based inner step
index (a Python int). Rules hold no state of their own: learned rates live in the algorithm's
meta-parameters and are passed in.
"""

from __future__ import annotations

from keras import ops


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
