"""The drifting task stream (``evaluation.stream``): an online learner predicts each task, then learns from it.

The stream (:mod:`metabench.harness.data.stream`) is ``T`` sinusoid tasks in a fixed order, each with
``K`` support and ``Q`` query points. At task ``t`` the harness

1. **predicts**: the algorithm's own ``task_eval`` adapts the learner's current weights on the task's
   support points and predicts its query points, scored by the harness at every recorded inner-step
   count (the same compiled evaluation as every other result; ``task_eval`` never sees ``query_y``);
2. **reveals** the task's labels to the learner, which updates its weights (:class:`OnlineLearner`):

   - ``"finetune"`` (:class:`FineTune`): ``stream_updates`` plain gradient steps of ``stream_update_lr``
     on the task's ``K + Q`` points (the MSE of the model's outputs): online fine-tuning of whatever the
     config's meta-training produced (MAML, pretraining, or nothing: ``train.meta_iterations = 0``).
   - ``"ftml"`` (:class:`FollowTheMetaLeader`, Finn, Rajeswaran, Kakade, Levine 2019): the task joins a
     buffer of every task seen so far, then ``stream_updates`` meta-updates of the config's algorithm
     (its ``task_loss``, support -> query), each on ``train.meta_batch_size`` tasks drawn from the
     buffer, with Adam at ``train.meta_lr``. Keeps meta-training on the tasks seen so far; the next
     task is adapted to from the meta-learned weights.

After the last task the first ``stream_retest`` tasks are predicted again with the final weights.
The four results (:data:`~metabench.harness.results.records.STREAM_METRICS`) are stored per task under
the stream's fingerprint, so learners pair task by task. The algorithm's weights are restored when
the stream ends. Shapes: a batch of one task ``support_x [1, K, 1]``, ``support_y [1, K, 1]``,
``query_x [1, Q, 1]``, ``query_y [1, Q, 1]``; ``metric [T, max_steps + 1]``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from metabench.harness.config import ConfigError
from metabench.harness.data.stream import stream_task
from metabench.harness.results.records import Evaluation

LEARNERS = ("finetune", "ftml")
FTML_STREAM = 0x66746d6c  # b"ftml": the buffer draws' own stream of the evaluation seed


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """Per-task query metrics of a stream: ``arrival [T, max_steps + 1]`` (each task when it arrived),
    ``retest [F, max_steps + 1]`` (the first F tasks predicted again after the last one) and
    ``predictions [T, Q, outputs]`` (each task's query predictions when it arrived, after the most inner steps)."""

    arrival: np.ndarray
    retest: np.ndarray
    predictions: np.ndarray


class OnlineLearner:
    """How a learner's weights change once a task's labels are revealed: ``update(task, t)``.

    ``task`` is a batch of one task with its labels (``query_y`` too); ``t`` its position in the stream.
    A learner may keep what it was shown (a buffer) but must not use a task before the harness shows it.
    """

    def update(self, task: dict, t: int) -> None:
        raise NotImplementedError


class FineTune(OnlineLearner):
    """Online fine-tuning: ``updates`` SGD steps of ``lr`` on the task's support and query points.

    Args:
        algorithm: a built algorithm whose meta-variables are its model's trainable weights.
        lr: the step size; updates: steps per task.
    """

    def __init__(self, algorithm, *, lr: float, updates: int):
        import keras  # deferred: Keras reads its backend once, at import, after the caller selected it

        self.updates = int(updates)
        objective = algorithm.objective

        def task_loss(params, state, task):
            x = keras.ops.concatenate([task["support_x"], task["query_x"]], axis=0)
            y = keras.ops.concatenate([task["support_y"], task["query_y"]], axis=0)
            loss = objective.loss(algorithm.apply(params, x), y)
            return loss, ({objective.metric_name: loss}, state)

        self._step = algorithm.engine.make_meta_trainer(task_loss, algorithm.meta_variables(), keras.optimizers.SGD(lr))

    def update(self, task: dict, t: int) -> None:
        for _ in range(self.updates):
            self._step(task)


class FollowTheMetaLeader(OnlineLearner):
    """FTML: a buffer of the tasks seen so far and ``updates`` meta-updates of ``algorithm.task_loss`` on it per task.

    Args:
        algorithm: a built algorithm that meta-trains on episodes (``training_data = "episodes"``).
        meta_lr: Adam's learning rate; meta_batch_size: tasks per meta-update, drawn with replacement
            from the buffer by ``numpy.random.default_rng([seed, FTML_STREAM, t])``.
    """

    def __init__(self, algorithm, *, meta_lr: float, meta_batch_size: int, updates: int, seed: int):
        import keras  # deferred: Keras reads its backend once, at import, after the caller selected it

        self.updates, self.meta_batch_size, self.seed = int(updates), int(meta_batch_size), int(seed)
        self.buffer: list[dict] = []
        self._step = algorithm.engine.make_meta_trainer(
            algorithm.task_loss, algorithm.meta_variables(), keras.optimizers.Adam(meta_lr), algorithm.state_variables()
        )

    def update(self, task: dict, t: int) -> None:
        self.buffer.append(task)
        rng = np.random.default_rng([self.seed, FTML_STREAM, int(t)])
        for _ in range(self.updates):
            picks = rng.integers(0, len(self.buffer), size=self.meta_batch_size)
            self._step({key: np.concatenate([self.buffer[i][key] for i in picks]) for key in task})


def run_stream(evaluator, learner: OnlineLearner, stream, *, retest: int) -> StreamResult:
    """Predict each task of ``stream`` with ``evaluator`` (the session's compiled, scored ``task_eval``),
    then show it to ``learner``; then predict the first ``retest`` tasks again. No task's labels reach
    the learner before the task is predicted."""
    arrival, predictions = [], []
    for t in range(len(stream)):
        scored = evaluator(stream_task(stream, t))
        arrival.append(np.asarray(scored["metric"], dtype=np.float64)[0])
        predictions.append(np.asarray(scored["predictions"])[0])
        learner.update(stream_task(stream, t), t)
    again = np.asarray(evaluator(stream_task(stream, slice(0, retest)))["metric"], dtype=np.float64)
    return StreamResult(np.stack(arrival), again, np.stack(predictions))


def make_learner(algorithm, config: dict) -> OnlineLearner:
    """The ``evaluation.stream`` learner of ``config`` for a built ``algorithm`` (checked by :func:`check_learner`)."""
    evaluation, train = config["evaluation"], config["train"]
    check_learner(algorithm, config)
    if evaluation["stream"] == "ftml":
        return FollowTheMetaLeader(algorithm, meta_lr=train["meta_lr"], meta_batch_size=train["meta_batch_size"],
                                   updates=evaluation["stream_updates"], seed=evaluation["seed"])
    return FineTune(algorithm, lr=evaluation["stream_update_lr"], updates=evaluation["stream_updates"])


def check_learner(algorithm, config: dict) -> None:
    """Refuse, before a run is recorded, a built ``algorithm`` the ``evaluation.stream`` learner cannot update.

    Raises:
        ConfigError: naming the algorithm and the fix.
    """
    evaluation = config["evaluation"]
    name = config["algorithm"]["name"]
    if [v.path for v in algorithm.meta_variables()] != [v.path for v in algorithm.model.trainable_variables]:
        raise ConfigError(
            f"evaluation.stream updates the model's weights online, but algorithm {name!r} meta-learns other variables "
            "too (learned step sizes, per-task heads). Use maml, reptile, anil or pretrain, or turn evaluation.stream off."
        )
    if evaluation["stream"] == "ftml":
        if algorithm.training_data != "episodes":
            raise ConfigError(
                f"evaluation.stream = \"ftml\" keeps meta-training the config's algorithm on the tasks seen so far, but "
                f"{name!r} trains on {algorithm.training_data!r} data, not episodes. Use a meta-learner such as maml, "
                "or evaluation.stream = \"finetune\"."
            )


def stream_evaluations(result: StreamResult, stream, *, steps: list, headline: int, last: float, notes: dict) -> list[Evaluation]:
    """The four stream ``Evaluation``s (:data:`~metabench.harness.results.records.STREAM_METRICS`) of ``result``.

    ``last``: the fraction of the stream's tasks its last part holds (``ceil(last x T)`` tasks).
    """
    count, first = len(result.arrival), len(result.retest)
    tail = max(1, math.ceil(last * count - 1e-9))
    per_metric = {
        "stream_mse": result.arrival,
        "stream_last_mse": result.arrival[count - tail :],
        "stream_retest_mse": result.retest,
        "stream_forgetting_mse": result.retest - result.arrival[:first],
    }
    common = dict(split=stream.split, ways=None, shots=stream.spec.shots, queries=stream.spec.queries, fingerprint=stream.fingerprint)
    return [
        Evaluation(**common, metric=metric, headline_steps=headline, values={s: values[:, s] for s in steps},
                   notes={**notes, "stream": f"{len(values)} of {count} tasks"})
        for metric, values in per_metric.items()
    ]


def evaluate_stream(session, stream, config: dict, notes: dict) -> list[Evaluation]:
    """The evaluations of a trained ``session`` on ``stream`` (:func:`stream_of` the config); its weights are restored after."""
    evaluation = config["evaluation"]
    steps = sorted(set(evaluation["inner_steps"]))
    headline = evaluation["headline_steps"] if evaluation["headline_steps"] != -1 else max(steps)
    algorithm = session.algorithm
    learner = make_learner(algorithm, config)
    saved = algorithm.get_weights()
    try:
        result = run_stream(session.evaluator, learner, stream, retest=evaluation["stream_retest"])
    finally:
        algorithm.set_weights(saved)
    how = (f"{evaluation['stream_updates']} SGD steps of {evaluation['stream_update_lr']} per task" if evaluation["stream"] == "finetune"
           else f"FTML: {evaluation['stream_updates']} meta-updates per task on the tasks seen so far")
    notes = {**notes, "learner": how}
    return stream_evaluations(result, stream, steps=steps, headline=headline, last=evaluation["stream_last"], notes=notes)


def stream_peeking_evidence(algorithm, evaluator, make, stream, *, probe: int) -> str | None:
    """Why a learner's prediction of stream task ``probe`` (or an earlier one) depends on labels it must
    not know yet, or ``None``.

    Runs :func:`run_stream` twice from ``algorithm``'s current weights, with a fresh learner from
    ``make(stream it runs on)`` each time (so a learner that reaches into the stream is caught too): on
    ``stream`` as it is, and on a copy whose query labels of tasks
    ``probe..T-1`` and every label of the tasks after ``probe`` are changed. Task ``t``'s predictions may
    depend on its support and on the tasks before it alone, so those of tasks ``0..probe`` must agree.
    The algorithm's weights are restored after.
    """
    tasks = stream.episodes
    changed = dataclasses.replace(stream, episodes=dataclasses.replace(
        tasks,
        query_y=np.concatenate([tasks.query_y[:probe], tasks.query_y[probe:] + np.float32(3.0)]),
        support_y=np.concatenate([tasks.support_y[: probe + 1], tasks.support_y[probe + 1 :] - np.float32(3.0)]),
    ))
    saved = algorithm.get_weights()
    predicted = []
    try:
        for version in (stream, changed):
            algorithm.set_weights(saved)
            predicted.append(run_stream(evaluator, make(version), version, retest=1).predictions[: probe + 1])
    finally:
        algorithm.set_weights(saved)
    same = np.isclose(predicted[0], predicted[1], atol=1e-6, rtol=1e-5).reshape(probe + 1, -1).all(axis=1)
    if same.all():
        return None
    t = int(np.flatnonzero(~same)[0])
    change = float(np.max(np.abs(predicted[0][t] - predicted[1][t])))
    return (
        f"the query predictions of stream task {t}, made before its query labels are revealed, changed by up to "
        f"{change:.3g} when only labels the learner must not know yet changed (task {probe}'s query labels and the "
        "tasks after it): an online learner may use a task's labels only after the task was predicted"
    )
