"""The engine seam: everything backend-specific that an algorithm needs, and nothing more.

Algorithms are written with ``keras.ops`` and ``model.stateless_call``. They ask the engine for
gradients (``value_and_grad``, nestable, so second-order MAML is a gradient of a gradient) and for
loops that record every step (``trajectory``: the query predictions of a head fitted for 100 steps),
and the runner asks it for compiled steps: a meta-training step that maps a task loss over the tasks
of a meta-batch, averages the per-task meta-gradients and applies the outer optimizer, and an
evaluation step that maps a per-task evaluation function over a batch of episodes.

A complete engine (the JAX one is this, with ``jax.value_and_grad``, ``jax.jit`` and ``jax.vmap``)::

    class MyEngine(Engine):
        name = "mybackend"
        def value_and_grad(self, fn): ...
        def make_meta_trainer(self, task_loss, variables, optimizer, state_variables=()): ...
        def make_evaluator(self, task_eval, variables, state_variables=()): ...

Shapes: a batch is a dict of arrays with a leading task axis ``T`` (see ``harness.data.episodes``); a
task is the same dict without that axis. ``params`` is a list of tensors aligned with
``variables`` (what the outer optimizer updates); ``state`` is a list aligned with
``state_variables`` (what the step overwrites with the task-mean of the new values a task loss
returns, such as running batch-norm statistics; empty for most algorithms).
"""

from __future__ import annotations

import abc
from typing import Callable

from metabench.harness.errors import MetabenchError

#: ``(params, state, task) -> (loss, (metrics, new_state))``: scalar loss, ``{name: scalar}`` metrics and
#: a list aligned with ``state`` (e.g. running batch-norm statistics) that the step averages over tasks.
TaskLoss = Callable
#: ``(params, state, task) -> {name: Tensor}``
TaskEval = Callable


class Engine(abc.ABC):
    """Base class of backends. Subclasses set ``name`` and the capability flags.

    Every method a caller uses is declared here, with a default where one makes sense, so callers
    never probe an engine (``tests/test_engines.py`` checks it against the source).
    """

    #: the backend, as a config's ``backend`` writes it (``"tensorflow"``, ``"jax"``); recorded with results
    name: str = ""
    #: whether the tasks of a meta-batch run vectorized (vmap) rather than in a loop
    VECTORIZED_TASKS: bool = False
    #: whether ``xla=True`` is accepted
    SUPPORTS_XLA: bool = False
    #: whether op determinism can be switched on (bit-for-bit repeatable runs on CPU)
    SUPPORTS_DETERMINISM: bool = False
    #: how a compiled step maps the tasks of a meta-batch (e.g. ``"loop"`` or ``"vectorized"``)
    task_map: str = "loop"

    @abc.abstractmethod
    def value_and_grad(self, fn: Callable) -> Callable:
        """``fn(params, *args) -> (loss, aux)`` becomes ``g(params, *args) -> ((loss, aux), grads)``.

        ``grads`` is a list aligned with ``params`` (zeros where ``loss`` does not depend on a
        parameter). The result is itself differentiable with respect to ``params``; wrap it in
        ``keras.ops.stop_gradient`` for first-order methods.
        """

    @abc.abstractmethod
    def make_meta_trainer(self, task_loss: TaskLoss, variables: list, optimizer, state_variables=()) -> Callable:
        """A compiled ``step(batch) -> dict[str, float]``.

        One step: for each task in ``batch``, ``task_loss(params, state, task)`` and its gradient
        with respect to ``params`` (the current values of ``variables``); average losses, metrics,
        gradients and new states over the tasks; apply ``optimizer`` to ``variables`` and assign the
        mean new state to ``state_variables``. Returns the mean ``loss`` and metrics as Python floats.
        """

    @abc.abstractmethod
    def make_evaluator(self, task_eval: TaskEval, variables: list, state_variables=()) -> Callable:
        """A compiled ``evaluate(batch) -> dict[str, numpy array [T, ...]]`` mapping
        ``task_eval(params, state, task)`` over the tasks of ``batch``."""

    def trajectory(self, update: Callable, observe: Callable, init, steps: int):
        """``observe`` after 0, 1, ..., ``steps`` applications of ``update``, stacked: ``[steps + 1, ...]``.

        ``update(carry, i) -> carry`` (``i`` the 0-based step, a scalar tensor) keeps the structure,
        shapes and dtypes of ``init``; ``observe(carry) -> tensor`` (e.g. the query predictions of an
        adapted head). Traced inside a compiled step as one loop, however many steps, so an
        algorithm's evaluation can record every step of a long inner loop. This default writes each
        observation into a preallocated buffer (``keras.ops.slice_update`` in ``keras.ops.fori_loop``):
        in place under XLA; an engine whose loop would copy the buffer at every step overrides it.
        """
        from keras import ops  # deferred: Keras reads its backend once, at import, after the engine was chosen

        first = observe(init)
        buffer = ops.zeros((int(steps) + 1, *first.shape), dtype=first.dtype)
        buffer = ops.slice_update(buffer, [0] * buffer.ndim, first[None])
        if not steps:
            return buffer

        def body(i, carry):
            state, buffer = carry
            state = update(state, i)
            start = [i + 1] + [0] * (buffer.ndim - 1)
            return state, ops.slice_update(buffer, start, observe(state)[None])

        return ops.fori_loop(0, int(steps), body, (init, buffer))[1]

    def task_uniform(self, shape: tuple, seed, stream: int = 0):
        """Uniform floats in ``[0, 1)`` of ``shape`` (float32), a pure function of ``seed`` (an int32
        scalar tensor, e.g. a training task's ``task_seed``) and ``stream`` (a Python int that keeps two
        uses of one seed apart). Traceable inside a compiled, task-mapped step, where Keras's own
        stateless draws (``keras.random``, Python-int seeds only) cannot vary from task to task."""
        raise EngineError(f"The {self.name or type(self).__name__} engine cannot draw per-task random numbers.")

    def describe_device(self) -> str:
        """The device the steps run on, as recorded with every run: ``"CPU"``, ``"GPU (1)"``, ..."""
        return "CPU"

    def step_variant(self) -> str:
        """The form of the compiled meta-step, e.g. ``"loop"`` (``metabench bench`` names its figures
        ``metabench-maml-<engine>-<variant>``); ``task_map`` unless the engine has more forms."""
        return self.task_map

    def set_matmul_precision(self, precision: str) -> None:
        """``"highest"``: full float32 matmuls and convolutions (no TF32 or bf16 passes); ``"default"``:
        the backend's own. An engine whose backend may use reduced precision overrides this; the
        default keeps ``"default"`` and refuses to promise ``"highest"``."""
        if precision != "default":
            raise EngineError(
                f"Received matmul precision {precision!r}, but the {self.name or type(self).__name__} engine cannot set "
                "its matmul precision; use 'default'."
            )

    def parallelism(self) -> dict | None:
        """The host thread pools and tasks in flight the engine runs with, where it sets them; else None (the default)."""
        return None

    def device_memory_peak(self) -> int | None:
        """Peak bytes allocated on the device since start, where the backend reports it; else None (the default)."""
        return None


class EngineError(MetabenchError, RuntimeError):
    """An engine that cannot run here: its backend is not installed or Keras runs another backend."""
