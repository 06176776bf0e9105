"""Fine-tuning baselines: Baseline and Baseline++ (Chen et al., ICLR 2019) and the MAML paper's pretrain baseline.

All three pre-train one network as ordinary supervised learning, then adapt it to each evaluation
episode by training a new head on the support set (optionally fine-tuning every layer).
``docs/fidelity.md`` compares each with its reference code.
"""

from __future__ import annotations

import keras
from keras import ops

from metabench.algorithms import heads, inner
from metabench.algorithms.base import Algorithm

HEADS = ("linear", "cosine")
FINETUNE = ("head", "all")
PRETRAIN_ON = ("support_and_query", "support")


class Baseline(Algorithm):
    """Pre-train a classifier on every training class, then fit a new head on each episode's support set.

    Stage 1 (meta-training iterations are ordinary minibatches of ``train.meta_batch_size`` images
    drawn from all training classes, labelled with global class ids; with rotations on, each
    rotation of a class is a class of its own): cross-entropy through the backbone and a head over
    all training classes. Batch-norm running statistics are kept and used at evaluation.

    Stage 2 (per evaluation episode): a new ``ways``-unit head, initialised from a fixed seed, is
    trained on the support features with SGD with momentum, dampening and weight decay (as many
    steps as ``evaluation.inner_steps`` asks; the query predictions are recorded after each, for the
    harness to score); the backbone stays frozen (``finetune="head"``, the paper's protocol) or is
    fine-tuned too (``finetune="all"``). Chen et al.'s code (``methods/baselinefinetune.py``) fits
    the head with ``SGD(lr=0.01, momentum=0.9, dampening=0.9, weight_decay=0.001)`` for 100 epochs
    of batch size 4 over the shuffled support set: 200 steps at 5-way 1-shot, 500 at 20-way 1-shot.
    That is ``dampening=0.9, batch_size=4`` and ``evaluation.inner_steps`` up to 200 (or 500). The
    defaults (no dampening, full-batch steps) are this project's first version: dampening 0.9
    scales the momentum buffer's gradient by 0.1, so without it each step is about 10x larger, and
    the two differences partly cancel (``docs/fidelity.md`` has the measured effects).

    The head is the class attribute ``head``: ``"linear"`` here, ``"cosine"`` in Baseline++ (cosine
    similarity to weight-normalised class vectors, times ``scale``); the registered name chooses it,
    so it is not an option.

    Args:
        scale: cosine head scale; ``0`` picks the authors' rule, 2 for at most 200 classes and 10
            above (so 10 in pre-training on Omniglot, 2 for a 5-way episode).
        dampening: PyTorch SGD's dampening of the momentum buffer (``0``: none).
        batch_size: support examples per fitting step, each epoch reshuffled (``0``: the whole
            support set every step).
        weight_norm: with the cosine head, Closer Look's ``WeightNorm``'d ``distLinear``: a
            learnable per-class gain ``g`` multiplies each cosine (initialised to the norm of the
            class's initial weight vector), in pre-training and in fitting alike.
    """

    name = "baseline"
    training_data = "pooled"
    flexible_ways = True
    task_kinds = ("classification",)
    #: the classifier head, one of :data:`HEADS`: ``"linear"`` or ``"cosine"`` (Baseline++)
    head = "linear"

    def __init__(self, *, finetune="head", finetune_lr=0.01, momentum=0.9, weight_decay=0.001, scale=0.0, head_seed=0,
                 dampening=0.0, batch_size=0, weight_norm=False):
        super().__init__()
        if self.head not in HEADS:
            raise ValueError(f"{type(self).__name__}.head is {self.head!r}; set the class attribute to one of {list(HEADS)}.")
        if finetune not in FINETUNE:
            raise ValueError(f"Received finetune={finetune!r}; expected one of {list(FINETUNE)}.")
        if not finetune_lr > 0:
            raise ValueError(f"Received finetune_lr={finetune_lr}; expected a positive learning rate.")
        if not 0.0 <= dampening < 1.0:
            raise ValueError(f"Received dampening={dampening}; expected 0 <= dampening < 1 (0.9 in Closer Look's code).")
        if int(batch_size) < 0:
            raise ValueError(f"Received batch_size={batch_size}; expected 0 (the whole support set) or a positive size.")
        if weight_norm and self.head != "cosine":
            raise ValueError(f"Received weight_norm=True with head={self.head!r}; the learnable gain belongs to the cosine head "
                             "(baseline++).")
        self.finetune = finetune
        self.finetune_lr = finetune_lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.scale = scale
        self.head_seed = head_seed
        self.dampening = dampening
        self.batch_size = batch_size
        self.weight_norm = weight_norm

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
        self._gain = []
        if self.weight_norm:
            kernel = model.layers[-1].trainable_variables[0]
            self._gain = [keras.Variable(heads.weight_norm_gain(kernel.value), name="head_gain")]
        return self

    def meta_variables(self):
        return list(self.model.trainable_variables) + self._gain

    def state_variables(self):
        return list(self.model.non_trainable_variables)

    def _scale(self, classes):
        return self.scale or (2.0 if classes <= 200 else 10.0)

    def _head_logits(self, classes):
        if self.head == "cosine":
            return heads.cosine_logits(self._scale(classes), weight_norm=self.weight_norm)
        return heads.linear_logits

    def _features(self, backbone_params, state, x, training):
        features, new_state = self._backbone.stateless_call(backbone_params, state, x, training=training)
        return features, new_state

    def task_loss(self, params, state, task):
        backbone = [params[i] for i in self._backbone_index]
        head = [params[i] for i in self._head_index]
        if self.head == "cosine":
            head = head[:1] + params[len(params) - len(self._gain):]  # no bias; the gain when weight-normalised
        features, new_state = self._features(backbone, state, task["x"], training=True)
        logits = self._head_logits(int(self.model.layers[-1].units))(head, features)
        loss = self.objective.loss(logits, task["y"])
        return loss, ({self.objective.metric_name: self.objective.metric(logits, task["y"])}, [ops.stop_gradient(s) for s in new_state])

    def _new_head(self, features_dim, ways):
        kernel = keras.random.normal((features_dim, ways), stddev=1.0 / features_dim**0.5, seed=self.head_seed)
        if self.head == "cosine":
            return [kernel, heads.weight_norm_gain(kernel)] if self.weight_norm else [kernel]
        return [kernel, ops.zeros((ways,))]

    def task_eval(self, params, state, task, max_steps):
        params = [ops.stop_gradient(p) for p in params]
        backbone = [params[i] for i in self._backbone_index]
        ways = heads.episode_ways(task)
        return heads.fit_on_task(
            self.engine, self.objective, self._head_logits(ways), lambda dim: self._new_head(dim, ways), task,
            lambda weights, x: self._features(weights, state, x, training=False)[0], backbone,
            finetune=self.finetune, steps=max_steps, learning_rate=self.finetune_lr, momentum=self.momentum,
            weight_decay=self.weight_decay, dampening=self.dampening, batch_size=int(self.batch_size),
            shuffle_seed=self.head_seed,
        )

    def notes(self):
        steps = f"minibatches of {self.batch_size}" if self.batch_size else "full-batch"
        dampening = f", dampening {self.dampening}" if self.dampening else ""
        return {
            "head": self.head + (" (weight-normalised, learnable gain)" if self.weight_norm else ""),
            "finetune": f"{self.finetune} ({steps} SGD steps, lr {self.finetune_lr}{dampening})",
            "batch_norm": "running statistics from pre-training",
        }


class BaselinePlusPlus(Baseline):
    """Baseline++: ``Baseline`` with the cosine head (``head="cosine"``); the same options and defaults."""

    name = "baseline++"
    head = "cosine"


class Pretrain(Baseline):
    """The MAML paper's "pretrained on all tasks" baseline (section 5.1, Appendix C.1; sinusoid).

    Regression: one network trained on every sampled task pooled as ordinary supervised learning
    (no adaptation in training; Adam), then fine-tuned on each test task's K points with plain
    gradient steps of the tuned size ``finetune_lr`` (as many as ``evaluation.inner_steps`` asks).
    It learns the average output for each input, which is what MAML's Table 2 compares against.
    ``pretrain_on`` says which points train it: ``"support_and_query"`` (this project's first
    version: all 2K points of each task) or ``"support"`` (the MAML code, ``--pretrain_iterations``:
    only the pre-update loss of the K support points, "inputa", pooled over the meta-batch).

    Classification: pre-training on all training classes (pooled minibatches, so ``pretrain_on``
    does not apply), then every layer and a new head fine-tuned on the support set (``Baseline``
    with ``finetune="all"``). The MAML paper reports no such baseline on Omniglot: its
    "fine-tuning baseline" rows are miniImageNet numbers quoted from Ravi & Larochelle (2017), a
    protocol this one does not follow, so no published number is paired with it.

    Its options are ``Baseline``'s, with other defaults (``finetune="all"``, no momentum, no weight
    decay), and ``pretrain_on``.
    """

    name = "pretrain"
    task_kinds = ("classification", "regression")

    def __init__(self, *, finetune="all", finetune_lr=0.01, momentum=0.0, weight_decay=0.0, scale=0.0, head_seed=0,
                 dampening=0.0, batch_size=0, weight_norm=False, pretrain_on="support_and_query"):
        if pretrain_on not in PRETRAIN_ON:
            raise ValueError(f"Received pretrain_on={pretrain_on!r}; expected one of {list(PRETRAIN_ON)} ('support' is the MAML code's).")
        super().__init__(finetune=finetune, finetune_lr=finetune_lr, momentum=momentum, weight_decay=weight_decay, scale=scale,
                         head_seed=head_seed, dampening=dampening, batch_size=batch_size, weight_norm=weight_norm)
        self.pretrain_on = pretrain_on

    def build(self, model, task_kind, engine):
        if task_kind == "classification":
            if self.pretrain_on != PRETRAIN_ON[0]:
                raise ValueError(
                    f"Received pretrain_on={self.pretrain_on!r} for a classification dataset, whose pre-training draws "
                    "pooled minibatches (no support or query sets); it applies to regression task families only."
                )
            return super().build(model, task_kind, engine)
        self._gain = []
        return Algorithm.build(self, model, task_kind, engine)

    def state_variables(self):
        return super().state_variables() if self.objective.kind == "classification" else []

    def task_loss(self, params, state, task):
        if self.objective.kind == "classification":
            return super().task_loss(params, state, task)
        if self.pretrain_on == "support":
            x, y = task["support_x"], task["support_y"]
        else:
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
            notes = {"finetune": f"all layers, plain gradient steps of {self.finetune_lr}"}
            if self.pretrain_on != PRETRAIN_ON[0]:
                notes["pretrain_on"] = self.pretrain_on
            return notes
        return super().notes()
