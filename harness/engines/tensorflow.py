"""The TensorFlow engine: ``tf.function`` steps, tasks of a meta-batch in a compiled ``tf.while_loop``.

Measured on the 2-core CPU (``../shared/bench``): a compiled loop over tasks with per-task
meta-gradient accumulation was the fastest form (842 ms per Omniglot meta-iteration against 1485 ms
for the PyTorch peer); unrolling the tasks cost 51 s of compile time and XLA was slower on the CPU,
so XLA is off by default.

On a GPU, vectorizing the tasks of a meta-batch is what matters (a sequential task loop was 14x
slower than vmap for the PyTorch peer on an H200): ``task_map="vectorized"`` runs them through
``tf.vectorized_map`` instead (slower on the CPU, about 2.6x; see ``docs/performance.md``).
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from metabench.harness.engines.base import Engine, EngineError

TASK_MAPS = ("auto", "loop", "vectorized")

logger = logging.getLogger(__name__)


class TensorFlowEngine(Engine):
    """Engine for ``KERAS_BACKEND=tensorflow``.

    Args:
        xla: compile steps with XLA (``jit_compile=True``).
        deterministic: switch on ``tf.config.experimental.enable_op_determinism`` (bit-for-bit
            repeatable runs on CPU).
        parallel_tasks: ``parallel_iterations`` of the task loop (and of the evaluation ``tf.map_fn``).
        task_map: ``"loop"`` (a ``tf.while_loop`` over tasks accumulating each task's meta-gradient:
            the fast form on the CPU), ``"vectorized"`` (``tf.vectorized_map`` over the tasks, per-task
            gradients stacked and averaged: for GPUs) or ``"auto"`` (``loop``).
        intra_op_threads, inter_op_threads: TensorFlow's thread pools (0: TensorFlow's default, one
            thread per core). Few-shot steps are many small ops, where one intra-op thread can beat
            several (``docs/performance.md``). Only settable before TensorFlow runs its first op; later
            a different value is logged and left alone.
    """

    name = "tensorflow"
    VECTORIZED_TASKS = False
    SUPPORTS_XLA = True
    SUPPORTS_DETERMINISM = True

    def __init__(self, *, xla: bool = False, deterministic: bool = False, parallel_tasks: int = 1, task_map: str = "auto",
                 intra_op_threads: int = 0, inter_op_threads: int = 0):
        if task_map not in TASK_MAPS:
            raise EngineError(f"Received task_map={task_map!r}; expected one of {list(TASK_MAPS)} for the tensorflow engine.")
        for name, value in (("intra_op_threads", intra_op_threads), ("inter_op_threads", inter_op_threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise EngineError(f"Received {name}={value!r}; expected a non-negative integer (0: TensorFlow's default).")
        self.intra_op_threads, self.inter_op_threads = intra_op_threads, inter_op_threads
        _set_threads(intra_op_threads, inter_op_threads)
        self.xla = bool(xla)
        self.deterministic = bool(deterministic)
        self.parallel_tasks = int(parallel_tasks)
        self.task_map = "loop" if task_map == "auto" else task_map
        self.VECTORIZED_TASKS = self.task_map == "vectorized"
        if self.deterministic:
            tf.config.experimental.enable_op_determinism()

    def value_and_grad(self, fn):
        def value_and_grad_fn(params, *args):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(params)
                loss, aux = fn(params, *args)
            grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return (loss, aux), grads

        return value_and_grad_fn

    def task_uniform(self, shape, seed, stream=0):
        seed_pair = tf.stack([tf.cast(seed, tf.int32), tf.constant(int(stream), tf.int32)])
        return tf.random.stateless_uniform(tuple(int(n) for n in shape), seed=seed_pair, dtype=tf.float32)

    def trajectory(self, update, observe, init, steps):
        """``Engine.trajectory`` with a ``tf.TensorArray``: a while loop that updates a buffer with
        ``slice_update`` copies all of it at every step (11x slower for 100 steps of ``[300, 20]``
        predictions on the CPU); a TensorArray keeps each step's tensor and stacks them once."""
        first = observe(init)
        observations = tf.TensorArray(first.dtype, size=int(steps) + 1, element_shape=first.shape).write(0, first)

        def body(i, state, observations):
            state = update(state, i)
            return i + 1, state, observations.write(i + 1, observe(state))

        if steps:
            _, _, observations = tf.while_loop(lambda i, *_: i < int(steps), body, (tf.constant(0), init, observations))
        return observations.stack()

    def make_meta_trainer(self, task_loss, variables, optimizer, state_variables=()):
        optimizer.build(variables)
        value_and_grad = self.value_and_grad(task_loss)
        state_variables = list(state_variables)

        @tf.function(jit_compile=self.xla, reduce_retracing=True)
        def step(batch):
            params = [tf.convert_to_tensor(v.value) for v in variables]
            state = [tf.convert_to_tensor(v.value) for v in state_variables]
            num_tasks = tf.shape(next(iter(batch.values())))[0]

            def one_task(task):
                (loss, (metrics, new_state)), grads = value_and_grad(params, state, task)
                return loss, metrics, list(new_state), list(grads)

            if self.task_map == "vectorized":
                # Per-task results stacked on a leading task axis, then summed like the loop's accumulators.
                losses, metrics, new_states, grads = tf.vectorized_map(one_task, batch)
                loss_sum = tf.reduce_sum(losses, axis=0)
                metric_sums = {k: tf.reduce_sum(v, axis=0) for k, v in metrics.items()}
                state_sums = [tf.reduce_sum(s, axis=0) for s in new_states]
                grad_sums = [tf.reduce_sum(g, axis=0) for g in grads]
            else:
                # The first task seeds the accumulators, so their structure comes from the loss itself.
                loss_sum, metric_sums, state_sums, grad_sums = one_task({key: value[0] for key, value in batch.items()})

                def body(i, loss_sum, metric_sums, state_sums, grad_sums):
                    loss, metrics, new_state, grads = one_task({key: value[i] for key, value in batch.items()})
                    return (
                        i + 1,
                        loss_sum + loss,
                        {k: metric_sums[k] + metrics[k] for k in metric_sums},
                        [s_sum + s for s_sum, s in zip(state_sums, new_state)],
                        [g_sum + g for g_sum, g in zip(grad_sums, grads)],
                    )

                _, loss_sum, metric_sums, state_sums, grad_sums = tf.while_loop(
                    lambda i, *_: i < num_tasks,
                    body,
                    (tf.constant(1), loss_sum, metric_sums, state_sums, list(grad_sums)),
                    parallel_iterations=self.parallel_tasks,
                )
            count = tf.cast(num_tasks, tf.float32)
            optimizer.apply([g / count for g in grad_sums], variables)
            for variable, total in zip(state_variables, state_sums):
                variable.assign(total / tf.cast(num_tasks, total.dtype))
            logs = {k: v / count for k, v in metric_sums.items()}
            logs["loss"] = loss_sum / count
            return logs

        def run(batch):
            logs = step({k: tf.convert_to_tensor(v) for k, v in batch.items()})
            return {k: float(v) for k, v in logs.items()}

        run.compiled = step
        return run

    def make_evaluator(self, task_eval, variables, state_variables=()):
        state_variables = list(state_variables)

        @tf.function(jit_compile=self.xla, reduce_retracing=True)
        def evaluate(batch):
            params = [tf.convert_to_tensor(v.value) for v in variables]
            state = [tf.convert_to_tensor(v.value) for v in state_variables]
            if self.task_map == "vectorized":
                return tf.vectorized_map(lambda task: task_eval(params, state, task), batch)
            first = {key: value[0] for key, value in batch.items()}
            # Traced only for the output structure; nothing consumes it, so the graph prunes it.
            spec = task_eval(params, state, first)
            signature = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in spec.items()}
            return tf.map_fn(
                lambda task: task_eval(params, state, task),
                batch,
                fn_output_signature=signature,
                parallel_iterations=self.parallel_tasks,
            )

        def run(batch):
            results = evaluate({k: tf.convert_to_tensor(v) for k, v in batch.items()})
            return {k: np.asarray(v) for k, v in results.items()}

        run.compiled = evaluate
        return run

    def set_matmul_precision(self, precision: str) -> None:
        """``"highest"``: full float32 (TF32 off on GPUs); ``"default"``: TensorFlow's own (TF32 on)."""
        tf.config.experimental.enable_tensor_float_32_execution(precision != "highest")

    def describe_device(self) -> str:
        gpus = tf.config.list_logical_devices("GPU")
        return f"GPU ({len(gpus)})" if gpus else "CPU"

    def device_memory_peak(self) -> int | None:
        """Peak bytes allocated on the first GPU since start; None on the CPU (TensorFlow reports none there)."""
        if not tf.config.list_logical_devices("GPU"):
            return None
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def _set_threads(intra: int, inter: int) -> None:
    threading = tf.config.threading
    for name, value, get, set_ in (
        ("intra_op_threads", intra, threading.get_intra_op_parallelism_threads, threading.set_intra_op_parallelism_threads),
        ("inter_op_threads", inter, threading.get_inter_op_parallelism_threads, threading.set_inter_op_parallelism_threads),
    ):
        if not value or get() == value:
            continue
        try:
            set_(value)
        except RuntimeError:
            logger.warning("%s=%d not applied: TensorFlow is already running with %d; set it before the first op runs "
                           "(or with TF_NUM_%s_THREADS).", name, value, get(), name.split("_")[0].upper() + "OP")
