"""The TensorFlow engine: ``tf.function`` steps, tasks of a meta-batch in a compiled ``tf.while_loop``.

Measured on the 2-core CPU (``../shared/bench``): a compiled loop over tasks with per-task
meta-gradient accumulation was the fastest form (842 ms per Omniglot meta-iteration against 1485 ms
for the PyTorch peer); unrolling the tasks cost 51 s of compile time and XLA was slower on the CPU,
so XLA is off by default. On a machine with at most 2 cores the engine runs one thread per op and
two tasks of the loop at once (:func:`auto_parallelism`; 2.5-3.4x the peer at 5-way 1-shot on
2026-12-04, against 1.7-2.4x with TensorFlow's own pools and one task at a time).

On a GPU, vectorizing the tasks of a meta-batch is what matters (a sequential task loop was 14x
slower than vmap for the PyTorch peer on an H200): ``task_map="vectorized"`` runs them through
``tf.vectorized_map`` instead (slower on the CPU, about 2.6x; see ``docs/performance.md``).
"""

from __future__ import annotations

import logging
import os

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
        parallel_tasks: ``parallel_iterations`` of the task loop (and of the evaluation ``tf.map_fn``):
            tasks in flight at once. Where the engine sizes the thread pools itself (below) it keeps at
            least :func:`auto_parallelism`'s count in flight, 2 on a machine with at most 2 cores, one
            task per inter-op thread. Results do not depend on it: the loop sums each task's loss and
            meta-gradient into loop-carried accumulators, in task order.
        task_map: ``"loop"`` (a ``tf.while_loop`` over tasks accumulating each task's meta-gradient:
            the fast form on the CPU), ``"vectorized"`` (``tf.vectorized_map`` over the tasks, per-task
            gradients stacked and averaged: for GPUs) or ``"auto"`` (``loop``).
        intra_op_threads, inter_op_threads: TensorFlow's thread pools (0: TensorFlow's default, one
            thread per core; ``None`` for both, the default: :func:`auto_parallelism`, 1 and 2 on a
            machine with at most 2 cores, TensorFlow's default elsewhere). Few-shot steps are many
            small ops, where one intra-op thread beats several on 2 cores (``docs/performance.md``).
            Only settable before TensorFlow runs its first op; later an explicit value that differs
            is logged and left alone, and the automatic choice is skipped silently.
    """

    name = "tensorflow"
    VECTORIZED_TASKS = False
    SUPPORTS_XLA = True
    SUPPORTS_DETERMINISM = True

    def __init__(self, *, xla: bool = False, deterministic: bool = False, parallel_tasks: int = 1, task_map: str = "auto",
                 intra_op_threads: int | None = None, inter_op_threads: int | None = None):
        if task_map not in TASK_MAPS:
            raise EngineError(f"Received task_map={task_map!r}; expected one of {list(TASK_MAPS)} for the tensorflow engine.")
        for name, value in (("intra_op_threads", intra_op_threads), ("inter_op_threads", inter_op_threads)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise EngineError(f"Received {name}={value!r}; expected a non-negative integer (0: TensorFlow's default) "
                                  "or None (chosen from the core count).")
        automatic = intra_op_threads is None and inter_op_threads is None
        tasks_in_flight = 1
        if automatic:
            intra_op_threads, inter_op_threads, tasks_in_flight = auto_parallelism(_usable_cpus(), os.environ)
        self.intra_op_threads, self.inter_op_threads = intra_op_threads or 0, inter_op_threads or 0
        _set_threads(self.intra_op_threads, self.inter_op_threads, quiet=automatic)
        self.xla = bool(xla)
        self.deterministic = bool(deterministic)
        self.parallel_tasks = max(int(parallel_tasks), tasks_in_flight)
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

            def one_task(params, state, task):
                (loss, (metrics, new_state)), grads = value_and_grad(params, state, task)
                return loss, metrics, list(new_state), list(grads)

            if self.task_map == "vectorized":
                # Per-task results stacked on a leading task axis, then summed like the loop's accumulators.
                losses, metrics, new_states, grads = tf.vectorized_map(lambda task: one_task(params, state, task), batch)
                loss_sum = tf.reduce_sum(losses, axis=0)
                metric_sums = {k: tf.reduce_sum(v, axis=0) for k, v in metrics.items()}
                state_sums = [tf.reduce_sum(s, axis=0) for s in new_states]
                grad_sums = [tf.reduce_sum(g, axis=0) for g in grads]
            else:
                # The task is traced once, as a function the loop calls for every task; its outputs'
                # shapes give the accumulators' zeros (seeding them with a peeled first task traced it
                # twice: twice the graph to build and optimize before the first step).
                traced = _trace_per_task(one_task, params, state, batch)
                zeros = tf.nest.map_structure(lambda t: tf.zeros(t.shape, t.dtype), traced.structured_outputs)

                def body(i, loss_sum, metric_sums, state_sums, grad_sums):
                    loss, metrics, new_state, grads = traced(params, state, {key: value[i] for key, value in batch.items()})
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
                    (tf.constant(0), *zeros),
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
            traced = _trace_per_task(task_eval, params, state, batch)
            signature = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in traced.structured_outputs.items()}
            return tf.map_fn(
                lambda task: traced(params, state, task),
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

    def parallelism(self) -> dict:
        """The intra-op and inter-op pool sizes TensorFlow runs with (0: its default, one per core) and
        the tasks the loop keeps in flight."""
        threading = tf.config.threading
        return {"intra_op": threading.get_intra_op_parallelism_threads(), "inter_op": threading.get_inter_op_parallelism_threads(),
                "tasks_in_flight": self.parallel_tasks}

    def device_memory_peak(self) -> int | None:
        """Peak bytes allocated on the first GPU since start; None on the CPU (TensorFlow reports none there)."""
        if not tf.config.list_logical_devices("GPU"):
            return None
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def _trace_per_task(fn, params, state, batch):
    """``fn(params, state, task)`` traced once for one task of ``batch`` (a dict of ``[T, ...]``
    tensors), as a concrete function whose ``structured_outputs`` give its outputs' shapes and dtypes."""
    specs = [tf.TensorSpec.from_tensor(t) for t in params], [tf.TensorSpec.from_tensor(t) for t in state]
    task_spec = {key: tf.TensorSpec(value.shape[1:], value.dtype) for key, value in batch.items()}
    return tf.function(fn).get_concrete_function(*specs, task_spec)


def auto_parallelism(cpus: int, environ) -> tuple[int, int, int]:
    """The ``(intra_op, inter_op, tasks_in_flight)`` an engine takes by default on a machine with
    ``cpus`` usable cores: ``(1, 2, 2)`` on at most 2 cores, two tasks computed at once with one thread
    per op, faster than TensorFlow's pools on the 2-core CI kind of machine (``docs/performance.md``);
    ``(0, 0, 1)`` (TensorFlow's own pools, one thread per core) on larger machines, or wherever
    ``TF_NUM_INTRAOP_THREADS`` or ``TF_NUM_INTEROP_THREADS`` is set (TensorFlow reads those itself)."""
    if "TF_NUM_INTRAOP_THREADS" in environ or "TF_NUM_INTEROP_THREADS" in environ or cpus > 2:
        return 0, 0, 1
    return 1, 2, 2


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _set_threads(intra: int, inter: int, *, quiet: bool = False) -> None:
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
            if quiet:
                logger.debug("%s=%d (chosen from the core count) not applied: TensorFlow is already running.", name, value)
                continue
            logger.warning("%s=%d not applied: TensorFlow is already running with %d; set it before the first op runs "
                           "(or with TF_NUM_%s_THREADS).", name, value, get(), name.split("_")[0].upper() + "OP")
