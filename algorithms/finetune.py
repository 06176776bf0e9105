"""Fine-tuning baselines: Baseline and Baseline++ (Chen et al., ICLR 2019) and the MAML paper's pretrain baseline.

All three pre-train one network as ordinary supervised learning, then adapt it to each evaluation
episode by training a new head on the support set (optionally fine-tuning every layer).
"""

from __future__ import annotations

import keras
from keras import ops

from metabench.algorithms import heads, inner
from metabench.algorithms.base import Algorithm

HEADS = ("linear", "cosine")
FINETUNE = ("head", "all")


class Baseline(Algorithm):
    """Pre-train a classifier on every training class, then fit a new head on each episode's support set.

    Stage 1 (meta-training iterations are ordinary minibatches of ``train.meta_batch_size`` images
    drawn from all training classes, labelled with global class ids; with rotations on, each
    rotation of a class is a class of its own): cross-entropy through the backbone and a head over
    all training classes. Batch-norm running statistics are kept and used at evaluation.

    Stage 2 (per evaluation episode): a new ``ways``-unit head, initialised from a fixed seed, is
    trained on the support features with full-batch steps of SGD with momentum and weight decay (as
    many as ``evaluation.inner_steps`` asks; the query predictions are recorded after each, for the
    harness to score); the backbone stays frozen (``finetune="head"``, the paper's protocol) or is
    fine-tuned too (``finetune="all"``, the MAML paper's "fine-tuning baseline"). Chen et al. train
    100 epochs of batch size 4 (200 steps for 5-way 1-shot, lr 0.01, momentum 0.9, weight decay
    1e-3); full-batch steps are the one difference, and the report says so.

    Args:
        head: ``"linear"`` (Baseline) or ``"cosine"`` (Baseline++: cosine similarity to
            weight-normalised class vectors, times ``scale``).
        scale: cosine head scale; ``0`` picks the authors' rule, 2 for at most 200 classes and 10
            above (so 10 in pre-training on Omniglot, 2 for a 5-way episode).
    """

    name = "baseline"
    training_data = "pooled"
    flexible_ways = True
    task_kinds = ("classification",)

    def __init__(self, *, head="linear", finetune="head", finetune_lr=0.01, momentum=0.9,
                 weight_decay=0.001, scale=0.0, head_seed=0):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"Received head={head!r}; expected one of {list(HEADS)}.")
        if finetune not in FINETUNE:
            raise ValueError(f"Received finetune={finetune!r}; expected one of {list(FINETUNE)}.")
        if not finetune_lr > 0:
            raise ValueError(f"Received finetune_lr={finetune_lr}; expected a positive learning rate.")
        self.head = head
        self.finetune = finetune
        self.finetune_lr = finetune_lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.scale = scale
        self.head_seed = head_seed

    def output_units(self, task_outputs, pooled_classes):
        return pooled_classes if pooled_classes else task_outputs

    def build(self, model, task_kind, engine):
        super().build(model, task_kind, engine)
        self._backbone = keras.Model(model.inputs, model.layers[-2].output, name="backbone")
        position = {v.path: i for i, v in enumerate(model.trainable_variables)}
        self._backbone_index = [position[v.path] for v in self._backbone.trainable_variables]
        self._head_index = [position[v.path] for v in model.layers[-1].trainable_variables]
        if [v.path for v in self._backbone.non_trainable_variables] != [v.path for v in model.non_trainable_variables]:
            raise ValueError(f"{type(self).__name__} needs a model whose last layer is its head (no state after the backbone).")
        return self

    def state_variables(self):
        return list(self.model.non_trainable_variables)

    def _scale(self, classes):
        return self.scale or (2.0 if classes <= 200 else 10.0)

    def _head_logits(self, classes):
        return heads.cosine_logits(self._scale(classes)) if self.head == "cosine" else heads.linear_logits

    def _features(self, backbone_params, state, x, training):
        features, new_state = self._backbone.stateless_call(backbone_params, state, x, training=training)
        return features, new_state

    def task_loss(self, params, state, task):
        backbone = [params[i] for i in self._backbone_index]
        head = [params[i] for i in self._head_index]
        if self.head == "cosine":
            head = head[:1]  # the cosine head has no bias
        features, new_state = self._features(backbone, state, task["x"], training=True)
        logits = self._head_logits(int(self.model.layers[-1].units))(head, features)
        loss = self.objective.loss(logits, task["y"])
        return loss, ({self.objective.metric_name: self.objective.metric(logits, task["y"])}, [ops.stop_gradient(s) for s in new_state])

    def _new_head(self, features_dim, ways):
        kernel = keras.random.normal((features_dim, ways), stddev=1.0 / features_dim**0.5, seed=self.head_seed)
        return [kernel] if self.head == "cosine" else [kernel, ops.zeros((ways,))]

    def task_eval(self, params, state, task, max_steps):
        params = [ops.stop_gradient(p) for p in params]
        backbone = [params[i] for i in self._backbone_index]
        ways = heads.episode_ways(task)
        return heads.fit_on_task(
            self.engine, self.objective, self._head_logits(ways), lambda dim: self._new_head(dim, ways), task,
            lambda weights, x: self._features(weights, state, x, training=False)[0], backbone,
            finetune=self.finetune, steps=max_steps, learning_rate=self.finetune_lr, momentum=self.momentum,
            weight_decay=self.weight_decay,
        )

    def notes(self):
        return {
            "head": self.head,
            "finetune": f"{self.finetune} (full-batch SGD steps, lr {self.finetune_lr})",
            "batch_norm": "running statistics from pre-training",
        }


class BaselinePlusPlus(Baseline):
    """Baseline++: ``Baseline`` with the cosine head (``head="cosine"``)."""

    name = "baseline++"

    def __init__(self, **options):
        options.setdefault("head", "cosine")
        super().__init__(**options)


class Pretrain(Baseline):
    """The MAML paper's "pretrained on all tasks" baseline (section 5.1).

    Regression: one network trained on the support and query points of every sampled task, pooled
    as ordinary supervised learning (no adaptation in training; Adam on the pre-update loss, as in
    the MAML code), then fine-tuned on each test task's K points with plain gradient steps of the
    tuned size ``finetune_lr`` (as many as ``evaluation.inner_steps`` asks). It learns the average output for each input,
    which is what MAML's Table 2 compares against.

    Classification: pre-training on all training classes, then every layer and a new head
    fine-tuned on the support set (``Baseline`` with ``finetune="all"``).
    """

    name = "pretrain"
    task_kinds = ("classification", "regression")

    def __init__(self, *, finetune_lr=0.01, **options):
        options.setdefault("finetune", "all")
        options.setdefault("momentum", 0.0)
        options.setdefault("weight_decay", 0.0)
        super().__init__(finetune_lr=finetune_lr, **options)

    def build(self, model, task_kind, engine):
        if task_kind == "classification":
            return super().build(model, task_kind, engine)
        return Algorithm.build(self, model, task_kind, engine)

    def state_variables(self):
        return super().state_variables() if self.objective.kind == "classification" else []

    def task_loss(self, params, state, task):
        if self.objective.kind == "classification":
            return super().task_loss(params, state, task)
        x = ops.concatenate([task["support_x"], task["query_x"]], axis=0)
        y = ops.concatenate([task["support_y"], task["query_y"]], axis=0)
        predictions = self.apply(params, x)
        return self.objective.loss(predictions, y), ({self.objective.metric_name: self.objective.metric(predictions, y)}, state)

    def task_eval(self, params, state, task, max_steps):
        if self.objective.kind == "classification":
            return super().task_eval(params, state, task, max_steps)

        def support_loss(weights):
            return self.objective.loss(self.apply(weights, task["support_x"]), task["support_y"]), ()

        fast = [ops.stop_gradient(p) for p in params]
        update = inner.sgd(self.finetune_lr)
        predictions = []
        for step in range(int(max_steps) + 1):
            if step:
                (_, _), grads = self.engine.value_and_grad(support_loss)(fast)
                fast = update(fast, grads, step - 1)
            predictions.append(self.apply(fast, task["query_x"]))
        return {"predictions": ops.stack(predictions)}

    def notes(self):
        if self.objective.kind == "regression":
            return {"finetune": f"all layers, plain gradient steps of {self.finetune_lr}"}
        return super().notes()
