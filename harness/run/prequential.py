"""Prequential (online) evaluation: an episode's support examples arrive one at a time, and each is
predicted before the model adapts on it (``evaluation.prequential = true``).

Built on ``task_eval`` alone, so every algorithm that adapts from a support set gets it unchanged.
Each evaluation set gets a seeded arrival order (``EvaluationSet.arrivals``,
:func:`metabench.harness.data.episodes.arrival_order`), part of the fingerprint its prequential
results are stored under. With ``S`` support examples and ``w`` warm-up arrivals (``w = N`` for
classification: the order brings one example of each class first; ``w = 1`` for regression), arrival
``t = w, ..., S - 1`` is one ``task_eval`` call on a task whose support is the first ``t`` arrivals
and whose queries are arrival ``t + 1`` (its label withheld, as every query label is) followed by
the episode's own queries. The harness scores:

- the **online metric** (``online_accuracy``, ``online_mse``): per episode, the mean over the
  ``S - w`` arrivals ``w + 1, ..., S`` of the metric of each, predicted from the arrivals before it,
  at every recorded inner-step count. The first ``w`` arrivals are not scored: a regression learner
  has nothing to adapt on before the first point, and classification labels are arbitrary per
  episode, so no learner can name a class before its first example (and prototype methods cannot
  predict without an example of every class).
- the **curve** (``accuracy_by_seen``, ``mse_by_seen``): the query metric after adapting on the first
  ``n = w, ..., S`` arrivals, at the headline inner-step count, keyed by ``n`` (examples seen).
  ``n = S`` is the whole support set, in arrival order.

Shapes: a batch as in :mod:`metabench.harness.data.episodes` (``support_x [B, S, ...]``, ...), and
``arrivals [B, S]``.

Example (not run as a doctest: it needs an opened session and a prepared evaluation set, which
``harness.run.core`` builds from a config and compiles for seconds):
    >>> online, seen = evaluate_prequential(session, eval_set.with_arrivals(), prepared, config, notes={})  # doctest: +SKIP
    >>> online.metric, sorted(seen.values)  # doctest: +SKIP
    ('online_mse', [1, 2, ..., 10])
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from metabench.harness.results.records import Evaluation
from metabench.harness.run.scoring import query_predictions, score, scored_task_eval

#: absolute and relative tolerance of :func:`peeking_evidence` (the two passes compute the same ops)
PEEK_TOLERANCE = (1e-6, 1e-5)


def in_arrival_order(batch: dict, arrivals: np.ndarray) -> dict:
    """``batch`` with its support rows put in arrival order: row ``i`` of episode ``b`` is its
    support row ``arrivals[b, i]``."""
    ordered = dict(batch)
    for key in ("support_x", "support_y"):
        index = arrivals.reshape(arrivals.shape + (1,) * (batch[key].ndim - 2))
        ordered[key] = np.take_along_axis(batch[key], index, axis=1)
    return ordered


def arrival_batch(ordered: dict, t: int) -> dict:
    """The tasks of arrival ``t`` of a batch in arrival order: support the first ``t`` arrivals; query rows
    arrival ``t + 1`` (row 0, the one predicted before its label is used) then the episode's queries."""
    return {
        **ordered,
        "support_x": ordered["support_x"][:, :t],
        "support_y": ordered["support_y"][:, :t],
        "query_x": np.concatenate([ordered["support_x"][:, t : t + 1], ordered["query_x"]], axis=1),
        "query_y": np.concatenate([ordered["support_y"][:, t : t + 1], ordered["query_y"]], axis=1),
    }


def arrival_task_eval(algorithm, max_steps: int) -> Callable:
    """The harness's evaluation of one arrival: ``fn(params, state, task) -> dict`` for ``engine.make_evaluator``.

    ``task`` is one task of :func:`arrival_batch`: query row 0 is the arriving example. ``task_eval``
    sees no query label (:func:`metabench.harness.run.scoring.query_predictions`). Returns
    ``{"next_metric": [max_steps + 1]`` (the arriving example's metric after each step),
    ``"metric": [max_steps + 1]`` (the episode's queries), ``"next_predictions": [max_steps + 1, outputs]}``.
    """
    steps = int(max_steps)

    def task_eval(params, state, task):
        predictions = query_predictions(algorithm, params, state, task, steps)  # [steps + 1, 1 + Q, outputs]
        labels = task["query_y"]
        next_metric, _ = score(algorithm.objective, predictions[:, :1], labels[:1])
        metric, _ = score(algorithm.objective, predictions[:, 1:], labels[1:])
        return {"next_metric": next_metric, "metric": metric, "next_predictions": predictions[:, 0]}

    return task_eval


def prequential_values(algorithm, plain_evaluator, eval_set, pool, *, batch_size: int, max_steps: int, headline: int):
    """Per-episode prequential results of ``algorithm`` on ``eval_set`` (which has ``arrivals``).

    Args:
        plain_evaluator: the session's compiled :func:`~metabench.harness.run.scoring.scored_task_eval`
            with ``max_steps`` (scores the whole support set, ``n = S``).
        pool: the ``ClassPool`` the episodes index (``None`` for regression).

    Returns:
        ``(online [E, max_steps + 1], seen [E, S - w + 1])``: the online metric after 0..max_steps
        inner steps per arrival, and the query metric at ``headline`` steps after ``n = w..S`` arrivals.
    """
    engine, evaluators = algorithm.engine, {}
    variables, state_variables = algorithm.meta_variables(), algorithm.state_variables()
    size, warmup = eval_set.support_size, eval_set.warmup
    online, seen = [], []
    for start, batch in zip(range(0, len(eval_set), batch_size), eval_set.batches(batch_size, pool)):
        ordered = in_arrival_order(batch, eval_set.arrivals[start : start + len(batch["support_x"])])
        nexts, queries = [], []
        for t in range(warmup, size):
            if t not in evaluators:  # one compiled evaluator per support size: each traces its own shapes once
                evaluators[t] = engine.make_evaluator(arrival_task_eval(algorithm, max_steps), variables, state_variables)
            out = evaluators[t](arrival_batch(ordered, t))
            nexts.append(np.asarray(out["next_metric"], dtype=np.float64))  # [B, max_steps + 1]
            queries.append(np.asarray(out["metric"])[:, headline])
        queries.append(np.asarray(plain_evaluator(ordered)["metric"])[:, headline])
        online.append(np.mean(np.stack(nexts), axis=0))
        seen.append(np.stack(queries, axis=1).astype(np.float64))
    return np.concatenate(online), np.concatenate(seen)


def evaluate_prequential(session, eval_set, prepared, config: dict, notes: dict) -> list[Evaluation]:
    """The two prequential ``Evaluation``s of ``eval_set`` (with ``arrivals``): the online metric at every
    recorded inner-step count, and the query metric by examples seen; both under the set's fingerprint,
    which covers the arrival order. ``notes``: the plain evaluation's, extended with how to read these."""
    evaluation = config["evaluation"]
    steps = sorted(set(evaluation["inner_steps"]))
    headline = evaluation["headline_steps"] if evaluation["headline_steps"] != -1 else max(steps)
    algorithm = session.algorithm
    online, seen = prequential_values(
        algorithm, session.evaluator, eval_set, prepared.eval_pool, batch_size=evaluation["batch_size"],
        max_steps=max(steps), headline=headline,
    )
    metric, size, warmup = algorithm.objective.metric_name, eval_set.support_size, eval_set.warmup
    first = "each class's first example" if eval_set.spec.ways else "the first point"
    common = dict(split=eval_set.split, ways=eval_set.spec.ways, shots=eval_set.spec.shots, queries=eval_set.spec.queries,
                  fingerprint=eval_set.fingerprint)
    return [
        Evaluation(
            **common, metric=f"online_{metric}", headline_steps=headline,
            values={s: online[:, s] for s in steps},
            notes={**notes, "prequential": f"{metric} of support arrivals {warmup + 1}..{size} in the set's seeded order, "
                   f"each predicted after adapting on the arrivals before it ({first} not scored)"},
        ),
        Evaluation(
            **common, metric=f"{metric}_by_seen", headline_steps=size,
            values={n: seen[:, n - warmup] for n in range(warmup, size + 1)},
            notes={**notes, "prequential": f"query {metric} after adapting on the first n arrivals ({headline} inner "
                   "steps); values keyed by n, the examples seen"},
        ),
    ]


# ---------------------------------------------------------------------- the no-peeking check


def peeking_evidence(algorithm, eval_set, pool, *, steps: int, episodes: int = 2) -> str | None:
    """Why ``algorithm``'s prequential predictions depend on a label they must not know, or ``None``.

    On the first ``episodes`` episodes of ``eval_set`` (with ``arrivals``), through the engine's
    compiled evaluators as a run evaluates: show the algorithm the episodes with their labels (a
    plain evaluation, as a run does before the prequential one), then predict the first and the last
    scored arrival; show it the episodes with every support label changed, then predict the same
    arrivals again, with the true labels. A prediction made before its example's label is used
    depends only on the model and the arrivals before it, so the two must agree. An algorithm that
    carries labels from one call to the next, and so predicts an arrival from its own label, makes
    them differ.
    """
    engine = algorithm.engine
    variables, state_variables = algorithm.meta_variables(), algorithm.state_variables()
    show = engine.make_evaluator(scored_task_eval(algorithm, steps), variables, state_variables)
    batch = next(eval_set.batches(episodes, pool))
    ordered = in_arrival_order(batch, eval_set.arrivals[: len(batch["support_x"])])
    labels = ordered["support_y"]
    other = (labels + 1) % eval_set.spec.ways if eval_set.spec.ways else labels + np.float32(1.0)
    arrivals = sorted({eval_set.warmup, eval_set.support_size - 1})
    stream = {t: engine.make_evaluator(arrival_task_eval(algorithm, steps), variables, state_variables) for t in arrivals}
    shown = []
    for support_y in (labels, other):
        show(dict(ordered, support_y=support_y))
        predictions = [np.asarray(stream[t](arrival_batch(ordered, t))["next_predictions"]) for t in arrivals]
        shown.append(np.stack(predictions, axis=1))  # [episodes, arrivals, steps + 1, outputs]
    atol, rtol = PEEK_TOLERANCE
    same = np.isclose(shown[0], shown[1], atol=atol, rtol=rtol, equal_nan=True).reshape(*shown[0].shape[:2], -1).all(-1)
    if same.all():
        return None
    e, position = (int(i[0]) for i in np.nonzero(~same))
    change = np.nanmax(np.abs(shown[0][e, position] - shown[1][e, position]))
    return (
        f"episode {e}: the prediction of support arrival {arrivals[position] + 1}, made before its label is used, "
        f"changed by up to {change:.3g} when only labels it must not know changed (the algorithm had been shown "
        "the episode with other labels): a prediction must depend on the model and the arrivals before it alone, "
        "so nothing may carry labels from one task_eval call to the next"
    )
