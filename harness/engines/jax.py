"""The JAX engine: one ``jax.jit`` program per meta-step, the tasks of a meta-batch under ``jax.vmap``.

A meta-step is a pure function ``(params, optimizer variables, state, batch) -> (new params, new
optimizer variables, new state, logs)``: per-task value-and-grad of the algorithm's task loss,
mapped over the tasks (``jax.vmap``, or ``jax.lax.map`` over chunks of ``parallel_tasks`` tasks when
memory is short), averaged, then the Keras optimizer through its stateless API
(``optimizer.stateless_apply``). The new values are written back into the Keras variables after each
step, so the runner's evaluator, checkpoints and anything else reading the model see them (the
write-back costs about 0.09 ms per step for conv4 and Adam on the CPU; keeping the arrays inside the
engine instead would save that and lose the one source of truth).

Measured on the 2-core CPU (``docs/performance.md``): XLA's CPU convolutions with per-task weights
are slow, so the TensorFlow engine is the fast path there; on a GPU this engine is the one to use
(TensorFlow cannot be installed on the GPU machine). Nothing here imports TensorFlow: with
``KERAS_BACKEND=jax`` metabench runs where TensorFlow is not installed.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import keras
import numpy as np

from metabench.harness.engines.base import Engine, EngineError

TASK_MAPS = ("auto", "vectorized", "loop", "unrolled")

_DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"


class JaxEngine(Engine):
    """Engine for ``KERAS_BACKEND=jax``.

    Args:
        xla: accepted for config compatibility; JAX always compiles with XLA (``jax.jit``).
        deterministic: ask XLA for deterministic GPU kernels (``--xla_gpu_deterministic_ops``);
            runs on the CPU are deterministic already. Must be set before JAX starts its backend.
        parallel_tasks: with ``task_map="loop"`` or ``"unrolled"``, how many tasks run vectorized
            together (the chunk size; 1: one task at a time). Ignored by ``vectorized``.
        task_map: ``"vectorized"`` (``jax.vmap`` over all tasks of a meta-batch: the fast form on a
            GPU), ``"loop"`` (``jax.lax.map`` over chunks of ``parallel_tasks`` tasks: the peak memory
            of one chunk, for when a meta-batch does not fit; very slow on the CPU), ``"unrolled"``
            (the chunks written one after another into the compiled program: per-task weights stay
            plain convolutions instead of grouped ones; compile time grows with the chunk count; the
            fastest JAX form on the CPU) or ``"auto"`` (``vectorized``).
        grad_of_mean: with ``vectorized``, differentiate the task-mean loss of the vmapped tasks
            once, instead of vmapping each task's value-and-grad and averaging the gradients. The
            same numbers; on the CPU 7x slower (docs/performance.md); a formulation to measure on GPUs.

    Example (the last two lines are not run as a doctest: they need Keras on the JAX backend, which a
    process chooses once, at Keras's import, and a built ``maml`` and a ``batch``; tests/test_jax_engine.py runs them):
        >>> engine = JaxEngine(task_map="loop", parallel_tasks=8)
        >>> step = engine.make_meta_trainer(maml.task_loss, maml.meta_variables(), keras.optimizers.Adam(1e-3))  # doctest: +SKIP
        >>> logs = step(batch)   # {"loss": float, "accuracy": float}  # doctest: +SKIP
    """

    name = "jax"
    VECTORIZED_TASKS = True
    SUPPORTS_XLA = True
    SUPPORTS_DETERMINISM = True

    def __init__(self, *, xla: bool = True, deterministic: bool = False, parallel_tasks: int = 1, task_map: str = "auto",
                 grad_of_mean: bool = False):
        if task_map not in TASK_MAPS:
            raise EngineError(f"Received task_map={task_map!r}; expected one of {list(TASK_MAPS)} for the jax engine.")
        if grad_of_mean and task_map not in ("auto", "vectorized"):
            raise EngineError(
                f"Received grad_of_mean=True with task_map={task_map!r}; the gradient of the task-mean loss needs "
                "every task's activations at once: use task_map='vectorized'."
            )
        if isinstance(parallel_tasks, bool) or int(parallel_tasks) < 1:
            raise EngineError(f"Received parallel_tasks={parallel_tasks!r}; expected a positive integer (tasks per chunk).")
        self.xla = bool(xla)
        self.deterministic = bool(deterministic)
        self.parallel_tasks = int(parallel_tasks)
        self.task_map = "vectorized" if task_map == "auto" else task_map
        self.VECTORIZED_TASKS = self.task_map == "vectorized"
        self.grad_of_mean = bool(grad_of_mean)
        if self.deterministic:
            _enable_determinism()

    # -- the seam -------------------------------------------------------------------------------

    def value_and_grad(self, fn):
        """``jax.value_and_grad(fn, has_aux=True)``: nestable, so second-order MAML differentiates it again."""
        return jax.value_and_grad(fn, has_aux=True)

    def task_uniform(self, shape, seed, stream=0):
        key = jax.random.fold_in(jax.random.key(int(stream)), jnp.asarray(seed, jnp.int32))
        return jax.random.uniform(key, tuple(int(n) for n in shape), dtype=jnp.float32)

    def map_tasks(self, fn, batch):
        """``fn(task)`` for every task of ``batch`` (leading axis), outputs stacked on a new leading axis.

        Traced inside a compiled step, as ``task_map`` says: one ``jax.vmap``; a ``jax.lax.map`` over
        chunks of ``parallel_tasks`` tasks; or the chunks unrolled into the program (a Python loop
        over the static task count), each chunk vmapped.
        """
        if self.task_map == "vectorized":
            return jax.vmap(fn)(batch)
        chunk = self.parallel_tasks
        if self.task_map == "loop":
            return jax.lax.map(fn, batch, batch_size=chunk if chunk > 1 else None)
        num_tasks = int(next(iter(batch.values())).shape[0])
        parts = []
        for start in range(0, num_tasks, chunk):
            part = {k: v[start:start + chunk] for k, v in batch.items()}
            if chunk == 1:
                parts.append(jax.tree_util.tree_map(lambda x: x[None], fn({k: v[0] for k, v in part.items()})))
            else:
                parts.append(jax.vmap(fn)(part))
        return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)

    def make_meta_trainer(self, task_loss, variables, optimizer, state_variables=()):
        variables, state_variables = list(variables), list(state_variables)
        optimizer.build(variables)
        value_and_grad = self.value_and_grad(task_loss)

        def mean(tree):
            return jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), tree)

        def meta_step(params, optimizer_values, state, batch):
            with _reading(variables, params, state_variables, state):
                loss, metrics, new_state, grads = mean_task_loss(params, state, batch)
            new_state = [s.astype(old.dtype) for s, old in zip(new_state, state)]
            new_params, new_optimizer_values = optimizer.stateless_apply(optimizer_values, grads, params)
            logs = dict(metrics)
            logs["loss"] = loss
            return new_params, new_optimizer_values, new_state, logs

        def mean_task_loss(params, state, batch):
            if self.grad_of_mean:
                def mean_loss(params):
                    loss, (metrics, new_state) = jax.vmap(lambda task: task_loss(params, state, task))(batch)
                    return jnp.mean(loss), (mean(metrics), mean(list(new_state)))

                (loss, (metrics, new_state)), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
            else:
                def one_task(task):
                    (loss, (metrics, new_state)), grads = value_and_grad(params, state, task)
                    return loss, metrics, list(new_state), grads

                loss, metrics, new_state, grads = mean(self.map_tasks(one_task, batch))
            return loss, metrics, list(new_state), grads

        # The old values are dead once the new ones are written back: let XLA reuse their buffers.
        # (Safe because reads of these variables inside the step go through `_reading`, so no
        # compiled constant holds a donated buffer.)
        compiled = jax.jit(meta_step, donate_argnums=(0, 1, 2))

        def run(batch):
            params = [v.value for v in variables]
            optimizer_values = [v.value for v in optimizer.variables]
            state = [v.value for v in state_variables]
            new_params, new_optimizer_values, new_state, logs = compiled(params, optimizer_values, state, dict(batch))
            for variable, value in zip(variables, new_params):
                variable.assign(value)
            for variable, value in zip(optimizer.variables, new_optimizer_values):
                variable.assign(value)
            for variable, value in zip(state_variables, new_state):
                variable.assign(value)
            return {k: float(v) for k, v in jax.device_get(logs).items()}

        run.compiled = compiled
        return run

    def make_evaluator(self, task_eval, variables, state_variables=()):
        variables, state_variables = list(variables), list(state_variables)

        @jax.jit
        def evaluate(params, state, batch):
            with _reading(variables, params, state_variables, state):
                return self.map_tasks(lambda task: task_eval(params, state, task), batch)

        def run(batch):
            results = evaluate([v.value for v in variables], [v.value for v in state_variables], dict(batch))
            return {k: np.asarray(v) for k, v in jax.device_get(results).items()}

        run.compiled = evaluate
        return run

    def step_variant(self) -> str:
        """``task_map``, with ``-grad-of-mean`` when the vectorized step differentiates the task-mean loss."""
        return self.task_map + ("-grad-of-mean" if self.grad_of_mean else "")

    def set_matmul_precision(self, precision: str) -> None:
        """``"highest"``: full float32 matmuls and convolutions (no TF32 or bf16 passes); ``"default"``: JAX's own."""
        jax.config.update("jax_default_matmul_precision", None if precision == "default" else precision)

    # -- facts about the device -----------------------------------------------------------------

    def describe_device(self) -> str:
        devices = jax.devices()
        platform = devices[0].platform
        if platform == "cpu":
            return "CPU"
        kind = getattr(devices[0], "device_kind", "") or platform.upper()
        return f"{platform.upper()} ({len(devices)}x {kind})"

    def device_memory_peak(self) -> int | None:
        """Peak bytes allocated on the first device since start, where the backend reports it (GPUs); else None."""
        stats = jax.devices()[0].memory_stats()
        if not stats:
            return None
        peak = stats.get("peak_bytes_in_use")
        return int(peak) if peak is not None else None


def _reading(variables, params, state_variables, state):
    """A scope in which reading ``variable.value`` gives the traced value passed to the compiled step.

    Without it a task function that reads a variable directly (rather than through ``params`` or
    ``state``) would see the value it had when the step was traced, baked in as a constant: stale
    on every later call, where TensorFlow's graphs read variables live.
    """
    return keras.StatelessScope(state_mapping=list(zip(variables, params)) + list(zip(state_variables, state)))


def _enable_determinism() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if _DETERMINISTIC_FLAG in flags:
        return
    if _backends_started():
        if jax.default_backend() == "cpu":
            return  # XLA's CPU kernels are deterministic already
        raise EngineError(
            "Received deterministic=True, but JAX has already started its GPU backend, so XLA_FLAGS can no "
            f"longer change. Start Python with XLA_FLAGS='{_DETERMINISTIC_FLAG}' instead."
        )
    os.environ["XLA_FLAGS"] = f"{flags} {_DETERMINISTIC_FLAG}".strip()


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - private module moved; assume started, the safe answer
        return True
    return bool(getattr(xla_bridge, "_backends", None))
