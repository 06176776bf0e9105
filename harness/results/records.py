"""Plain records passed from the runner to the store: what a run is and what its evaluation measured."""

from __future__ import annotations

import dataclasses

import numpy as np

from metabench.harness.config import recipe_hash

PLAIN_METRICS = ("accuracy", "mse", "return")
"""What an algorithm's query predictions are scored with after adapting on the whole support set (``"return"``:
the mean return of reinforcement-learning rollouts, higher is better; ``datasets/point_navigation.py``)."""
ONLINE_METRICS = ("online_accuracy", "online_mse")
"""Prequential evaluation (``evaluation.prequential``): per episode, the mean over the scored arrivals of
the metric of each arriving support example, predicted before its label is used. Keyed by inner steps."""
SEEN_METRICS = ("accuracy_by_seen", "mse_by_seen")
"""Prequential evaluation: the query metric after adapting on the first n arrivals. Keyed by n, the
examples seen (the store's ``inner_steps`` column holds n for these metrics), at the headline inner steps."""
PREQUENTIAL_METRICS = ONLINE_METRICS + SEEN_METRICS
STREAM_METRICS = ("stream_mse", "stream_last_mse", "stream_retest_mse", "stream_forgetting_mse")
"""The drifting task stream (``evaluation.stream``), split ``"stream"``, one value per stream task, keyed by
the inner steps of the prediction: ``stream_mse`` [T] each task's query MSE when it arrived (adapted on its
support from the learner's weights of that moment, before its query labels were revealed);
``stream_last_mse`` the same for the stream's last ``ceil(stream_last x T)`` tasks; ``stream_retest_mse`` [F]
the first F tasks predicted again with the final weights; ``stream_forgetting_mse`` [F] retest minus arrival
MSE of those tasks (positive: forgotten)."""
METRICS = PLAIN_METRICS + PREQUENTIAL_METRICS + STREAM_METRICS
"""Every metric name an evaluation can record."""


HIGHER_IS_BETTER = {"accuracy": True, "mse": False, "return": True}
"""The direction of each plain metric: ``True`` where a higher value is better. Every comparison, ranking
and check reads it (through :func:`higher_is_better`), so a new plain metric is added here and in
:data:`PLAIN_METRICS` and nowhere else."""


def base_metric(metric: str) -> str:
    """The plain metric a metric name is measured in: ``"accuracy"`` (a fraction), ``"mse"`` or ``"return"``.

    >>> base_metric("online_mse"), base_metric("accuracy_by_seen"), base_metric("return")
    ('mse', 'accuracy', 'return')

    Raises:
        ValueError: ``metric`` is built on none of :data:`PLAIN_METRICS`.
    """
    for plain in PLAIN_METRICS:
        if metric == plain or metric.endswith("_" + plain) or metric.startswith(plain + "_"):
            return plain
    raise ValueError(f"Received metric={metric!r}; expected one of {list(METRICS)} (or a name built on {list(PLAIN_METRICS)}).")


def higher_is_better(metric: str) -> bool:
    """Whether a higher value of ``metric`` (any name in :data:`METRICS`) is better: accuracy and return yes, MSE no.

    >>> higher_is_better("accuracy"), higher_is_better("mse"), higher_is_better("return"), higher_is_better("online_mse")
    (True, False, True, False)
    """
    return HIGHER_IS_BETTER[base_metric(metric)]


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Metadata recorded when a run starts.

    Attributes:
        algorithm: registered algorithm name, e.g. ``"maml"``.
        dataset: registered dataset name, e.g. ``"omniglot"``.
        seed: the run's training seed.
        config: the full resolved config (a TOML-able dict).
        config_hash: sha256 hex of the canonical JSON of ``config``.
        backend: ``"tensorflow"`` or ``"jax"``.
        device: a human description, e.g. ``"CPU"`` or ``"GPU:0 NVIDIA H100"``.
        versions: library name -> version string.
        git_commit: commit of the working tree the run came from, if any.
        recipe_hash: sha256 hex of the config without its seed and display keys
            (:func:`metabench.harness.config.recipe_hash`); computed from ``config`` when empty.
        label: the config's display label (``label`` key), ``""`` when it has none.
    """

    algorithm: str
    dataset: str
    seed: int
    config: dict
    config_hash: str
    backend: str
    device: str
    versions: dict
    git_commit: str | None = None
    recipe_hash: str = ""
    label: str = ""

    def __post_init__(self):
        if not self.recipe_hash:
            object.__setattr__(self, "recipe_hash", recipe_hash(self.config))
        if not self.label:
            object.__setattr__(self, "label", str(self.config.get("label", "") or ""))


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Per-episode results of one evaluation setting of a run.

    Attributes:
        split: dataset split evaluated, e.g. ``"test"``.
        ways: classes per episode (``None`` for regression).
        shots: support examples per class (regression: support points per task).
        queries: query examples per class (regression: query points per task).
        fingerprint: the evaluation episode set's fingerprint; results are paired only when equal.
        metric: ``"accuracy"`` (fraction in [0, 1]), ``"mse"`` or ``"return"`` (reinforcement learning:
            the mean return of the evaluation rollouts); for prequential evaluation one of
            :data:`PREQUENTIAL_METRICS`.
        headline_steps: the inner-step count the leaderboard reports (the ``*_by_seen`` metrics:
            the support size S, every example seen).
        values: inner-step count -> per-episode metric, float array ``[num_episodes]``; every array
            has the same length and episode ``i`` is the same episode in each. For the
            ``*_by_seen`` metrics the keys are the examples seen, not inner steps.
        notes: free-form facts that change how to read the numbers, e.g.
            ``{"batch_norm": "transductive (batch statistics at test time)"}``.
    """

    split: str
    ways: int | None
    shots: int
    queries: int
    fingerprint: str
    metric: str
    headline_steps: int
    values: dict[int, np.ndarray]
    notes: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"Received metric={self.metric!r}; expected one of {list(METRICS)}.")
        if self.headline_steps not in self.values:
            raise ValueError(
                f"Received headline_steps={self.headline_steps}, but values were recorded for "
                f"inner steps {sorted(self.values)}."
            )
        lengths = {len(v) for v in self.values.values()}
        if len(lengths) != 1:
            raise ValueError(f"Every inner-step count must cover the same episodes; got lengths {sorted(lengths)}.")


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    """One logged point of meta-training: mean outer loss and metric over the last logging window."""

    iteration: int
    loss: float
    metric: float
    seconds: float
