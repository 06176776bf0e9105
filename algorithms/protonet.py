"""Prototypical Networks (Snell, Swersky and Zemel, NeurIPS 2017)."""

from __future__ import annotations

from keras import ops

from metabench.algorithms import heads
from metabench.algorithms.base import Algorithm

BATCH_NORM_MODES = ("running", "transductive")


def prototypes(features, labels, ways: int):
    """The mean support feature of each class: ``features [S, F]``, ``labels [S]`` (0..ways-1) -> ``[ways, F]``."""
    one_hot = ops.one_hot(ops.cast(labels, "int32"), ways)  # [S, ways]
    return ops.matmul(ops.transpose(one_hot), features) / ops.sum(one_hot, axis=0)[:, None]


def negative_squared_distances(queries, centres):
    """Logits ``[Q, ways]``: ``-||query - centre||^2`` for ``queries [Q, F]`` and ``centres [ways, F]``."""
    return -ops.sum(ops.square(queries[:, None, :] - centres[None, :, :]), axis=-1)


class PrototypicalNetwork(Algorithm):
    """Episodic training of an embedding whose class prototypes classify queries by squared Euclidean distance.

    The embedding is the model without its last layer (conv4's features; the last layer is unused
    and not learned): ``x [n, ...] -> [n, F]``. Per episode, each class's prototype is the mean
    embedding of its support examples, ``c_k [ways, F]``, and a query's logits are its negative
    squared Euclidean distances to them, ``-||f(x) - c_k||^2 [Q, ways]``; meta-training minimises the
    query cross-entropy of those logits. Nothing is adapted at test time: every "inner step" gives
    the same prediction, the nearest prototype, so evaluation after 0 steps is the method itself.
    Any number of ways works at evaluation, whatever ``train.ways`` was (Snell et al. train Omniglot
    with 60-way episodes and test 5- and 20-way); the ways of an episode are its ``label_set``'s length.

    Batch norm: ``"running"`` (the reference code, ``jakesnell/prototypical-networks``): in training,
    support and query pass as one batch with its statistics, and the running statistics are kept
    (the task-mean over a meta-batch); at evaluation they normalise every image on its own (not
    transductive). ``"transductive"``: at evaluation too, support and query are one batch with its
    statistics.

    Example (one 2-way 1-shot task of 2-d points, a small MLP as the embedding, eagerly):
        >>> import numpy as np
        >>> from metabench.algorithms.models import mlp
        >>> from metabench.harness.engines import get_engine
        >>> task = {"support_x": np.array([[0.0, 0.0], [1.0, 1.0]], "float32"), "support_y": np.array([0, 1], "int32"),
        ...         "query_x": np.array([[0.1, 0.0], [0.9, 1.0]], "float32"), "query_y": np.array([0, 1], "int32"),
        ...         "label_set": np.array([0, 1], "int32")}
        >>> protonet = PrototypicalNetwork().build(mlp(2, 2, hidden=[8]), "classification", get_engine("tensorflow"))
        >>> params, state = [v.value for v in protonet.meta_variables()], [v.value for v in protonet.state_variables()]
        >>> logits = protonet.task_eval(params, state, task, 0)["predictions"][0]
        >>> tuple(logits.shape)   # [Q, ways]
        (2, 2)
    """

    name = "protonet"
    flexible_ways = True
    task_kinds = ("classification",)
    adapts_at_test = False

    def __init__(self, *, batch_norm="running"):
        super().__init__()
        if batch_norm not in BATCH_NORM_MODES:
            raise ValueError(f"Received batch_norm={batch_norm!r}; expected one of {list(BATCH_NORM_MODES)}.")
        self.batch_norm = batch_norm

    def build(self, model, task_kind, engine):
        super().build(model, task_kind, engine)
        self._body, self._body_index, _ = heads.split_head(model)
        return self

    def meta_variables(self):
        return [self.model.trainable_variables[i] for i in self._body_index]

    def state_variables(self):
        return list(self.model.non_trainable_variables)

    def _logits(self, params, state, task, training):
        """Query logits ``[Q, ways]`` and the batch-norm statistics the embedding pass leaves."""
        support, query = task["support_x"], task["query_x"]
        ways = heads.episode_ways(task)
        if training:  # support and query as one batch, as the reference code embeds them
            features, new_state = self._body.stateless_call(params, state, ops.concatenate([support, query], axis=0), training=True)
            support_features, query_features = features[: int(support.shape[0])], features[int(support.shape[0]):]
        else:
            support_features = self._body.stateless_call(params, state, support, training=False)[0]
            query_features, new_state = self._body.stateless_call(params, state, query, training=False)
        centres = prototypes(support_features, task["support_y"], ways)
        return negative_squared_distances(query_features, centres), new_state

    def task_loss(self, params, state, task):
        logits, new_state = self._logits(params, state, task, training=True)
        loss = self.objective.loss(logits, task["query_y"])
        metrics = {self.objective.metric_name: self.objective.metric(logits, task["query_y"])}
        return loss, (metrics, [ops.stop_gradient(s) for s in new_state])

    def task_eval(self, params, state, task, max_steps):
        params = [ops.stop_gradient(p) for p in params]
        logits, _ = self._logits(params, state, task, training=self.batch_norm == "transductive")
        return {"predictions": ops.repeat(logits[None], int(max_steps) + 1, axis=0)}

    def notes(self):
        return {
            "distance": "squared Euclidean to class-mean prototypes (no inner steps: every step is the same prediction)",
            "batch_norm": "running statistics from training (not transductive)" if self.batch_norm == "running"
            else "transductive (support and query batch statistics at test time)",
        }
