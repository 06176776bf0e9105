"""Sinusoid regression, the task family of the MAML paper (Finn et al. 2017, section 5.1)."""

from __future__ import annotations

import numpy as np

from metabench.datasets.base import RegressionTaskFamily, RegressionTasks


class Sinusoid(RegressionTaskFamily):
    """Tasks ``y = A sin(x - phase)`` with ``A ~ U[0.1, 5.0]``, ``phase ~ U[0, pi]``, ``x ~ U[-5, 5]``.

    Every range is settable; the defaults are the paper's (and its code's ``amp*np.sin(x-phase)``).

    Args:
        amplitude: ``(low, high)`` of the uniform amplitude draw.
        phase: ``(low, high)`` of the uniform phase draw, in radians.
        input_range: ``(low, high)`` of the uniform input draw.

    Example:
        >>> tasks = Sinusoid().sample(np.random.default_rng(0), num_tasks=25, num_support=10, num_query=10)
        >>> tasks.support_x.shape, tasks.params.shape
        ((25, 10, 1), (25, 2))
    """

    name = "sinusoid"
    input_dim = 1
    output_dim = 1

    def __init__(self, *, amplitude=(0.1, 5.0), phase=(0.0, np.pi), input_range=(-5.0, 5.0)):
        for label, bounds in (("amplitude", amplitude), ("phase", phase), ("input_range", input_range)):
            if len(bounds) != 2 or not bounds[0] < bounds[1]:
                raise ValueError(f"Received {label}={tuple(bounds)}; expected (low, high) with low < high.")
        self.amplitude = tuple(float(v) for v in amplitude)
        self.phase = tuple(float(v) for v in phase)
        self.input_range = tuple(float(v) for v in input_range)

    def sample(self, rng, num_tasks, num_support, num_query):
        amplitude = rng.uniform(*self.amplitude, size=num_tasks)
        phase = rng.uniform(*self.phase, size=num_tasks)
        params = np.stack([amplitude, phase], axis=1).astype(np.float32)
        x = self.sample_inputs(rng, num_tasks, num_support + num_query)
        y = self.targets(params, x)
        return RegressionTasks(
            params=params,
            support_x=x[:, :num_support],
            support_y=y[:, :num_support],
            query_x=x[:, num_support:],
            query_y=y[:, num_support:],
        )

    def sample_inputs(self, rng, num_tasks, num_points):
        return rng.uniform(*self.input_range, size=(num_tasks, num_points, 1)).astype(np.float32)

    def targets(self, params, x):
        amplitude = params[:, 0][:, None, None]
        phase = params[:, 1][:, None, None]
        return (amplitude * np.sin(x - phase)).astype(np.float32)
