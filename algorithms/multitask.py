"""Multi-task learning with hard parameter sharing: one trunk, one head per training task."""

from __future__ import annotations

import keras
from keras import ops

from metabench.algorithms import heads
from metabench.algorithms.base import Algorithm
from metabench.algorithms.finetune import FINETUNE


class MultiTask(Algorithm):
    """Hard parameter sharing over a fixed list of training tasks, then a new head per test task.

    Training: ``num_tasks`` training tasks are drawn once from the seed (for classification, a
    fixed set of ``ways`` classes with a fixed label order; for sinusoids, a fixed amplitude and
    phase) and each gets its own linear head on a shared trunk (the model without its last layer).
    Every iteration takes ``train.meta_batch_size`` of those tasks with fresh examples and minimises
    the mean of their losses on all their examples (support and query alike: nothing is adapted in
    training), updating the trunk and those tasks' heads jointly.

    Evaluation: a new linear head, initialised from a fixed seed, is fitted on the episode's support
    set with full-batch steps of SGD with momentum (as many as ``evaluation.inner_steps`` asks); the trunk stays frozen
    (``finetune="head"``) or is fine-tuned too (``finetune="all"``). Batch-norm running statistics
    from training are used at evaluation.
    """

    name = "multitask"
    training_data = "fixed_tasks"
    flexible_ways = True

    def __init__(self, *, num_tasks=1000, finetune="head", finetune_lr=0.01, momentum=0.9,
                 weight_decay=0.0, head_seed=0):
        super().__init__()
        if int(num_tasks) < 1:
            raise ValueError(f"Received num_tasks={num_tasks}; expected a positive integer.")
        if finetune not in FINETUNE:
            raise ValueError(f"Received finetune={finetune!r}; expected one of {list(FINETUNE)}.")
        self.num_tasks = num_tasks
        self.finetune = finetune
        self.finetune_lr = finetune_lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.head_seed = head_seed

    def build(self, model, task_kind, engine):
        super().build(model, task_kind, engine)
        self._trunk = keras.Model(model.inputs, model.layers[-2].output, name="trunk")
        features = int(self._trunk.outputs[0].shape[-1])
        outputs = int(model.outputs[0].shape[-1])
        initializer = keras.initializers.GlorotUniform(seed=self.head_seed)
        self._kernels = keras.Variable(initializer((int(self.num_tasks), features, outputs)), name="task_kernels")
        self._biases = keras.Variable(ops.zeros((int(self.num_tasks), outputs)), name="task_biases")
        return self

    def meta_variables(self):
        return list(self._trunk.trainable_variables) + [self._kernels, self._biases]

    def state_variables(self):
        return list(self._trunk.non_trainable_variables)

    def task_loss(self, params, state, task):
        trunk, (kernels, biases) = params[:-2], params[-2:]
        x = ops.concatenate([task["support_x"], task["query_x"]], axis=0)
        y = ops.concatenate([task["support_y"], task["query_y"]], axis=0)
        features, new_state = self._trunk.stateless_call(trunk, state, x, training=True)
        # Select this task's head with a one-hot product: its gradient stays dense.
        select = ops.one_hot(task["task_index"], int(self.num_tasks))
        kernel = ops.einsum("m,mfo->fo", select, kernels)
        bias = ops.einsum("m,mo->o", select, biases)
        predictions = heads.linear_logits([kernel, bias], features)
        loss = self.objective.loss(predictions, y)
        metrics = {self.objective.metric_name: self.objective.metric(predictions, y)}
        return loss, (metrics, [ops.stop_gradient(s) for s in new_state])

    def task_eval(self, params, state, task, max_steps):
        params = [ops.stop_gradient(p) for p in params]
        outputs = heads.episode_ways(task) if self.objective.kind == "classification" else int(task["support_y"].shape[-1])

        def new_head(dim):
            return [keras.random.normal((dim, outputs), stddev=1.0 / dim**0.5, seed=self.head_seed), ops.zeros((outputs,))]

        def features_fn(weights, x):
            return self._trunk.stateless_call(weights, state, x, training=False)[0]

        return heads.fit_on_task(
            self.engine, self.objective, heads.linear_logits, new_head, task, features_fn, params[:-2],
            finetune=self.finetune, steps=max_steps, learning_rate=self.finetune_lr, momentum=self.momentum,
            weight_decay=self.weight_decay,
        )

    def notes(self):
        return {"tasks": self.num_tasks, "finetune": f"{self.finetune} (full-batch SGD steps, lr {self.finetune_lr})"}
