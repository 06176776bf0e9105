"""Top-k checkpoint ensembles (MAML++'s evaluation option): rank checkpoints on validation episodes,
average the logits of the best k on the test episodes and score them as the harness scores any
predictions (``harness.run.scoring``).

The MAML++ authors ranked their per-epoch checkpoints by validation accuracy and averaged the logits
of the top 3 (paper era; 5 later) on the test tasks. Turned on with ``evaluation.ensemble_top_k``;
the ensemble is recorded as an evaluation of its own, beside the last checkpoint's, with a note
naming the checkpoints, so it is never mistaken for a single model's number.
"""

from __future__ import annotations

import logging

import numpy as np

from metabench.harness.results.records import Evaluation
from metabench.harness.run import checkpoint as ckpt
from metabench.harness.run.scoring import prediction_scorer

logger = logging.getLogger(__name__)


def evaluate_top_k(session, prepared, config: dict, folder) -> list[Evaluation]:
    """One ensemble ``Evaluation`` per evaluation set: the harness's score (``harness.run.scoring``) of the
    top-k checkpoints' query logits after the last inner step, averaged."""
    evaluation = config["evaluation"]
    k = evaluation["ensemble_top_k"]
    validation_set, validation_pool = prepared.validation_set
    batch_size = evaluation["batch_size"]
    final = session.algorithm.get_weights()
    headline = max(evaluation["inner_steps"])
    scores = {}
    for iteration in folder.iterations():
        ckpt.restore(session.algorithm, session.optimizer, folder.load(iteration))
        metrics = [session.evaluator(batch)["metric"][:, headline] for batch in validation_set.batches(batch_size, validation_pool)]
        scores[iteration] = float(np.mean(np.concatenate(metrics)))
    best = sorted(scores, key=lambda it: (-scores[it], -it))[:k]
    logger.info("Ensembling the checkpoints of iterations %s (validation accuracy %s).", best, [round(scores[i], 4) for i in best])
    scorer = prediction_scorer(session.algorithm)
    results = []
    for eval_set in prepared.eval_sets:
        logits, labels = None, None
        for iteration in best:
            ckpt.restore(session.algorithm, session.optimizer, folder.load(iteration))
            batches = list(eval_set.batches(batch_size, prepared.eval_pool))
            predictions = np.concatenate([session.evaluator(batch)["predictions"] for batch in batches])  # [E, Q, ways]
            logits = predictions if logits is None else logits + predictions
            labels = np.concatenate([batch["query_y"] for batch in batches])
        logits /= np.float32(len(best))
        accuracy = scorer(logits[:, None], labels)["metric"][:, 0].astype(np.float64)  # one step: the last
        results.append(
            Evaluation(
                split=eval_set.split,
                ways=eval_set.spec.ways,
                shots=eval_set.spec.shots,
                queries=eval_set.spec.queries,
                fingerprint=eval_set.fingerprint,
                metric=session.algorithm.objective.metric_name,
                headline_steps=headline,
                values={headline: accuracy},
                notes={
                    **session.algorithm.notes(),
                    "ensemble": f"top-{len(best)} checkpoints by validation accuracy (iterations {best}), logits averaged",
                },
            )
        )
    session.algorithm.set_weights(final)
    return results
