"""A drifting stream of sinusoid tasks: the fixed, fingerprinted sequence an online learner meets.

Task ``t`` of ``T`` is ``y = A_t sin(x - phase_t)`` seen through ``K`` support points and ``Q`` query
points. ``(A_t, phase_t)`` drift slowly: each task adds a normal step of standard deviation
``drift x (high - low)`` to each parameter, reflected back into the family's range; with
probability ``jump_probability`` a task instead jumps to a fresh uniform draw from the ranges.

The stream is an :class:`~metabench.harness.data.episodes.EvaluationSet` of split ``"stream"``
whose tasks are in stream order, so it is seeded, validated, saved and fingerprinted exactly as
evaluation episodes are: the fingerprint covers the spec, the task parameters and every input and
target a learner sees (``support_x [T, K, 1]``, ``support_y [T, K, 1]``, ``query_x [T, Q, 1]``,
``query_y [T, Q, 1]``; ``params [T, 2]``, amplitude then phase in radians).

The draws, from ``numpy.random.default_rng([seed, STREAM_STREAM])`` in this order (so a test can
recompute them): ``start = uniform(low, high)`` per parameter ``[2]``; ``steps = normal(size=(T - 1, 2))``;
``jumps = random(T - 1) < jump_probability``; ``fresh = uniform(low, high, size=(T - 1, 2))``; then the
inputs ``family.sample_inputs(rng, T, K + Q)``.

Example:
    >>> from metabench.datasets.sinusoid import Sinusoid
    >>> stream = drifting_stream(Sinusoid(), EpisodeSpec(None, 5, 10), num_tasks=100, seed=1, drift=0.02, jump_probability=0.05)
    >>> len(stream), stream.split, stream.episodes.support_x.shape
    (100, 'stream', (100, 5, 1))
"""

from __future__ import annotations

import numpy as np

from metabench.datasets.base import RegressionTasks
from metabench.datasets.sinusoid import Sinusoid
from metabench.harness.data.episodes import EpisodeError, EpisodeSpec, EvaluationSet, regression_batch

STREAM_SPLIT = "stream"
STREAM_STREAM = 0x73747265  # b"stre": the drifting stream's own stream of the evaluation seed


def drift_params(start, steps, jumps, fresh, low, high) -> np.ndarray:
    """The parameters of each task of a stream: ``[T, P]`` float64 from ``start [P]``.

    Task ``t >= 1`` is ``fresh[t - 1]`` where ``jumps[t - 1]``, else task ``t - 1`` plus ``steps[t - 1]``
    reflected into ``[low, high]`` (a value ``high + d`` becomes ``high - d``, ``low - d`` becomes
    ``low + d``; a step longer than the range reflects again).

    Args:
        start: ``[P]``, the first task's parameters.
        steps: ``[T - 1, P]`` additive steps (already scaled).
        jumps: ``[T - 1]`` bools.
        fresh: ``[T - 1, P]`` the parameters a jump lands on.
        low, high: ``[P]`` bounds.

    Example:
        >>> drift_params([1.0], [[0.5], [4.0], [0.0]], [False, False, True], [[0.0], [0.0], [2.5]], [0.0], [5.0])[:, 0].tolist()
        [1.0, 1.5, 4.5, 2.5]
    """
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    steps, fresh = np.asarray(steps, np.float64), np.asarray(fresh, np.float64)
    params = [np.asarray(start, np.float64)]
    for step, jump, new in zip(steps, np.asarray(jumps, bool), fresh):
        params.append(new if jump else _reflect(params[-1] + step, low, high))
    return np.stack(params)


def _reflect(value, low, high):
    """``value`` folded into ``[low, high]`` by reflection at the bounds."""
    width = high - low
    folded = np.mod(value - low, 2 * width)
    return low + np.where(folded > width, 2 * width - folded, folded)


def drifting_stream(
    family: Sinusoid, spec: EpisodeSpec, *, num_tasks: int, seed: int, drift: float, jump_probability: float
) -> EvaluationSet:
    """The drifting stream of ``num_tasks`` sinusoid tasks of ``spec`` (``K`` support, ``Q`` query points).

    Args:
        family: the sinusoid family, whose amplitude and phase ranges bound the drift.
        spec: ``EpisodeSpec(None, K, Q)``.
        num_tasks: ``T``, the stream's length.
        seed: the evaluation seed (the stream draws from its own generator of it).
        drift: standard deviation of each step, as a fraction of each parameter's range.
        jump_probability: the chance that a task jumps to a fresh draw instead of drifting.

    Raises:
        EpisodeError: a family that is not a sinusoid, or a value out of range (named, with the fix).
    """
    _stream_iv(family, spec, num_tasks, drift, jump_probability)
    low = np.array([family.amplitude[0], family.phase[0]])
    high = np.array([family.amplitude[1], family.phase[1]])
    rng = np.random.default_rng([int(seed), STREAM_STREAM])
    start = rng.uniform(low, high)
    steps = rng.normal(size=(num_tasks - 1, 2)) * drift * (high - low)
    jumps = rng.random(num_tasks - 1) < jump_probability
    fresh = rng.uniform(low, high, size=(num_tasks - 1, 2))
    params = drift_params(start, steps, jumps, fresh, low, high).astype(np.float32)
    x = family.sample_inputs(rng, num_tasks, spec.shots + spec.queries)
    y = family.targets(params, x)
    tasks = RegressionTasks(
        params=params, support_x=x[:, : spec.shots], support_y=y[:, : spec.shots], query_x=x[:, spec.shots :],
        query_y=y[:, spec.shots :],
    )
    return EvaluationSet(family.name, STREAM_SPLIT, spec, int(seed), tasks)


def stream_of(config: dict, family) -> EvaluationSet:
    """The drifting stream of a resolved config (``evaluation.stream_*``, seeded by ``evaluation.seed``) over
    ``family``, the config's dataset."""
    evaluation = config["evaluation"]
    spec = EpisodeSpec(None, evaluation["stream_shots"], evaluation["stream_queries"])
    return drifting_stream(
        family, spec, num_tasks=evaluation["stream_tasks"], seed=evaluation["seed"], drift=evaluation["stream_drift"],
        jump_probability=evaluation["stream_jump_probability"],
    )


def stream_task(stream: EvaluationSet, t, *, labels: bool = True) -> dict:
    """Task ``t`` (an index) or tasks ``t`` (a slice) of ``stream`` as a batch ``{"support_x": [B, K, 1],
    "support_y": [B, K, 1], "query_x": [B, Q, 1], "query_y": [B, Q, 1]}``; ``labels=False`` leaves out ``query_y``."""
    index = slice(t, t + 1) if isinstance(t, (int, np.integer)) else t
    batch = regression_batch(stream.episodes, index)
    if not labels:
        batch.pop("query_y")
    return batch


def _stream_iv(family, spec, num_tasks, drift, jump_probability) -> None:
    """Validate :func:`drifting_stream`'s arguments."""
    if not isinstance(family, Sinusoid):
        raise EpisodeError(
            f"Received the task family {getattr(family, 'name', type(family).__name__)!r}; the drifting stream "
            "drifts a sinusoid's amplitude and phase. Use dataset.name = \"sinusoid\", or turn evaluation.stream off."
        )
    if spec.ways is not None:
        raise EpisodeError(f"Received ways={spec.ways}; a stream of regression tasks has no classes (ways=None).")
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)) or num_tasks < 2:
        raise EpisodeError(f"Received num_tasks={num_tasks!r}; a stream needs at least 2 tasks (evaluation.stream_tasks).")
    if not 0.0 <= drift <= 1.0:
        raise EpisodeError(f"Received drift={drift}; expected a fraction of each parameter's range in [0, 1] (evaluation.stream_drift).")
    if not 0.0 <= jump_probability <= 1.0:
        raise EpisodeError(f"Received jump_probability={jump_probability}; expected a probability in [0, 1] (evaluation.stream_jump_probability).")
