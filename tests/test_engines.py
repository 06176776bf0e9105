"""The engines agree: same weights and episodes give the same losses and evaluation metrics.

Keras picks its backend once per process, so the TensorFlow side runs here and the JAX side in one
subprocess that runs every case (``_cases`` below, called there with ``KERAS_BACKEND=jax``). The model
is a tiny conv4 (12x12 inputs, 4 filters) whose weights NumPy draws, and every batch comes from a
seeded NumPy generator, so both backends see exactly the same numbers.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metabench.harness.engines import EngineError, get_engine

pytest.importorskip("jax")

#: name -> (first_order, batch_norm, inner_steps, evaluate, conv): meta-trained for ``META_STEPS``
#: compiled steps (and evaluated), the whole engine path. Evaluation adapts first-order whatever the
#: training order, so one case covers it; each compiled step costs seconds on the CPU. The batch-norm
#: case also pins conv4's ``BatchNorm``: Keras's own TensorFlow moments (``tf.nn.moments``) stop the
#: gradient of the mean inside the variance, which leaves first derivatives exact but not MAML's
#: second-order terms, and this case then disagrees with JAX from the second meta-step on. The
#: matmul-conv case is the same computation with conv4's convolutions as patches times a matrix.
CASES = {
    "second_order_batch_norm": (False, True, 1, True, "native"),
    "first_order_no_batch_norm_two_steps": (True, False, 2, False, "native"),
    "second_order_batch_norm_matmul_conv": (False, True, 1, True, "matmul"),
}
META_STEPS = 3
RTOL, ATOL = 2e-4, 2e-5


def _cases(backend: str, engine_options: dict | None = None, names=tuple(CASES)) -> dict:
    """Meta-train (and evaluate) each case; returns plain lists (JSON-able)."""
    import keras

    from metabench.algorithms.maml import MAML
    from metabench.algorithms.models import conv4
    from metabench.harness.run.bench import random_batch, set_numpy_weights
    from metabench.harness.run.scoring import scored_task_eval

    engine = get_engine(backend, **(engine_options or {}))
    engine.set_matmul_precision("highest")
    results = {}
    for name in names:
        first_order, batch_norm, inner_steps, evaluate, conv = CASES[name]
        model = conv4((12, 12, 1), 3, filters=4, batch_norm=batch_norm, conv=conv)
        set_numpy_weights(model, seed=7)
        maml = MAML(inner_lr=0.3, inner_steps=inner_steps, first_order=first_order).build(model, "classification", engine)
        variables = maml.meta_variables()
        trainer = engine.make_meta_trainer(maml.task_loss, variables, keras.optimizers.Adam(0.01))
        losses = [trainer(random_batch(3, 1, 2, 4, image_size=12, seed=step))["loss"] for step in range(META_STEPS)]
        results[name] = {"losses": losses, "eval_loss": [], "eval_metric": []}
        if evaluate:
            evaluator = engine.make_evaluator(scored_task_eval(maml, 2), variables)
            evaluation = evaluator(random_batch(3, 1, 5, 3, image_size=12, seed=100))
            results[name].update(eval_loss=evaluation["loss"].tolist(), eval_metric=evaluation["metric"].tolist())
    return results


@pytest.fixture(scope="module")
def both_results():
    """(TensorFlow results, JAX results): the JAX subprocess runs while this process runs TensorFlow."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import test_engines; "
        "print('RESULT ' + json.dumps(test_engines._cases('jax')))"
    )
    # Level 0 halves XLA's CPU compile time; numerics are those of the same kernels.
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    jax_side = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        tensorflow = _cases("tensorflow")
        out, err = jax_side.communicate(timeout=300)
    finally:
        if jax_side.poll() is None:
            jax_side.kill()
    assert jax_side.returncode == 0, err[-3000:]
    line = [line for line in out.splitlines() if line.startswith("RESULT ")][-1]
    return tensorflow, json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def tensorflow_results(both_results):
    return both_results[0]


@pytest.fixture(scope="module")
def jax_results(both_results):
    return both_results[1]


def _assert_same(a: dict, b: dict) -> None:
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=RTOL, atol=ATOL, err_msg="meta-training losses")
    np.testing.assert_allclose(a["eval_loss"], b["eval_loss"], rtol=RTOL, atol=ATOL, err_msg="evaluation losses")
    np.testing.assert_allclose(a["eval_metric"], b["eval_metric"], atol=1e-6, err_msg="evaluation accuracies")


@pytest.mark.slow  # like every test of tensorflow_results and jax_results, module fixtures that train both engines: 53 s (pytest -m slow)
@pytest.mark.parametrize("case", list(CASES))
def test_tensorflow_and_jax_engines_agree(case, tensorflow_results, jax_results):
    _assert_same(tensorflow_results[case], jax_results[case])


@pytest.mark.slow  # reads the engines' module fixtures (pytest -m slow)
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_matmul_convolutions_train_as_native_ones(backend, tensorflow_results, jax_results):
    results = {"tensorflow": tensorflow_results, "jax": jax_results}[backend]
    _assert_same(results["second_order_batch_norm"], results["second_order_batch_norm_matmul_conv"])


@pytest.mark.slow  # reads the engines' module fixtures (pytest -m slow)
def test_tensorflow_loop_and_vectorized_task_maps_agree(tensorflow_results):
    # One case (second order through batch norm, the evaluator too) stands for both: tf.vectorized_map
    # traces slowly.
    case = "second_order_batch_norm"
    vectorized = _cases("tensorflow", {"task_map": "vectorized"}, names=[case])
    _assert_same(tensorflow_results[case], vectorized[case])


def test_engines_say_how_they_map_tasks():
    loop, vectorized = get_engine("tensorflow"), get_engine("tensorflow", task_map="vectorized")
    assert (loop.task_map, loop.VECTORIZED_TASKS) == ("loop", False)
    assert (vectorized.task_map, vectorized.VECTORIZED_TASKS) == ("vectorized", True)


def test_unknown_task_map_is_refused_by_name():
    with pytest.raises(EngineError, match=r"Received task_map='vmap'; expected one of \['auto', 'loop', 'vectorized'\]"):
        get_engine("tensorflow", task_map="vmap")


def test_thread_pool_sizes_are_checked_by_name():
    with pytest.raises(EngineError, match=r"Received intra_op_threads=-1; expected a non-negative integer \(0: TensorFlow's default\)"):
        get_engine("tensorflow", intra_op_threads=-1)
    engine = get_engine("tensorflow", intra_op_threads=0, inter_op_threads=0)  # 0: leave TensorFlow's pools alone
    assert (engine.intra_op_threads, engine.inter_op_threads) == (0, 0)


def test_thread_pools_and_tasks_in_flight_are_chosen_from_the_core_count_unless_set():
    from metabench.harness.engines.tensorflow import auto_parallelism

    # One thread per op and two tasks at once on small machines; TensorFlow's own pools elsewhere.
    assert auto_parallelism(1, {}) == (1, 2, 2) and auto_parallelism(2, {}) == (1, 2, 2)
    assert auto_parallelism(3, {}) == (0, 0, 1) and auto_parallelism(64, {}) == (0, 0, 1)
    assert auto_parallelism(2, {"TF_NUM_INTRAOP_THREADS": "2"}) == (0, 0, 1)  # TensorFlow reads its variables itself
    assert auto_parallelism(2, {"TF_NUM_INTEROP_THREADS": "4"}) == (0, 0, 1)
    # Explicit values win over the automatic choice, one pool at a time (0: TensorFlow's default for the
    # other), and leave the tasks in flight as configured.
    engine = get_engine("tensorflow", intra_op_threads=1, parallel_tasks=1)
    assert (engine.intra_op_threads, engine.inter_op_threads, engine.parallel_tasks) == (1, 0, 1)
    assert get_engine("tensorflow", intra_op_threads=0, parallel_tasks=3).parallel_tasks == 3


def test_tasks_in_flight_change_no_result():
    # The loop's accumulators are loop-carried, so tasks computed two or four at a time sum in task order.
    import keras
    from keras import ops

    def task_loss(params, state, task):
        hidden = ops.tanh(ops.matmul(task["x"], params[0]))
        residual = ops.sum(hidden, axis=-1) - task["y"]
        return ops.mean(residual**2), ({"abs_error": ops.mean(ops.abs(residual))}, [])

    rng = np.random.default_rng(1)
    batch = {"x": rng.normal(size=(9, 6, 3)).astype("float32"), "y": rng.normal(size=(9, 6)).astype("float32")}
    start = rng.normal(size=(3, 5)).astype("float32")
    results = []
    for in_flight in (1, 2, 4):
        engine = get_engine("tensorflow", intra_op_threads=0, inter_op_threads=0, parallel_tasks=in_flight)
        weights = keras.Variable(start)
        trainer = engine.make_meta_trainer(task_loss, [weights], keras.optimizers.Adam(0.1))
        losses = [float(trainer(batch)["loss"]) for _ in range(3)]
        results.append((losses, weights.numpy()))
    for losses, weights in results[1:]:
        assert losses == results[0][0]
        np.testing.assert_array_equal(weights, results[0][1])
    assert results[0][0][2] < results[0][0][0]  # and it trains


def test_trajectory_records_every_step_eager_compiled_and_vectorized():
    # The TensorFlow engine's TensorArray loop (heads.fit records 100 steps of predictions with it).
    import tensorflow as tf
    from keras import ops

    engine = get_engine("tensorflow")

    def run(task, steps=3):  # observe 3c after each c <- 2c + i
        return engine.trajectory(lambda c, i: [2.0 * c[0] + ops.cast(i, "float32")], lambda c: 3.0 * c[0], [task], steps)

    x = np.array([[1.0, 2.0], [3.0, 4.0]], "float32")
    expected = np.array(TRAJECTORY, "float32")
    np.testing.assert_array_equal(np.stack([run(task) for task in x]), expected)
    np.testing.assert_array_equal(tf.function(lambda xs: tf.map_fn(run, xs))(x), expected)
    np.testing.assert_array_equal(tf.function(lambda xs: tf.vectorized_map(run, xs))(x), expected)
    np.testing.assert_array_equal(run(x[0], steps=0), expected[0, :1])


#: ``engine.trajectory`` of the test above for tasks [1, 2] and [3, 4]: [tasks, steps + 1, 2].
TRAJECTORY = [[[3, 6], [6, 12], [15, 27], [36, 60]], [[9, 12], [18, 24], [39, 51], [84, 108]]]


def _engine_uses() -> dict[str, list[str]]:
    """Attribute -> where it is used, for every ``engine.X`` (``self.engine.X``, ``session.engine.X``, ...)
    outside the engines, and ``"getattr"``/``"hasattr"`` -> where an engine is probed instead."""
    import ast

    repo = Path(__file__).resolve().parents[1]
    files = [p for folder in ("harness", "algorithms") for p in sorted((repo / folder).rglob("*.py"))
             if "engines" not in p.relative_to(repo).parts]  # fmt: skip

    def is_engine(node):
        return (isinstance(node, ast.Name) and node.id == "engine") or (isinstance(node, ast.Attribute) and node.attr == "engine")

    uses: dict[str, list[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(repo)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Attribute) and is_engine(node.value):
                uses.setdefault(node.attr, []).append(where)
            probe = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
            if probe and node.args and is_engine(node.args[0]):
                uses.setdefault(node.func.id, []).append(where)
    return uses


def test_the_engine_base_class_declares_every_method_callers_use_with_a_docstring():
    import inspect

    from metabench.harness.engines import Engine

    uses = _engine_uses()
    assert {"value_and_grad", "make_meta_trainer", "make_evaluator", "trajectory"} <= set(uses)
    probes = {name: uses.pop(name) for name in ("getattr", "hasattr") if name in uses}
    assert not probes, f"engines probed instead of declared on Engine: {probes}"
    undeclared = {name: where for name, where in uses.items() if not hasattr(Engine, name)}
    assert not undeclared, f"engine attributes callers use but harness/engines/base.py does not declare: {undeclared}"
    undocumented = [name for name in uses if callable(getattr(Engine, name)) and not inspect.getdoc(getattr(Engine, name))]
    assert not undocumented, f"Engine methods without a docstring: {undocumented}"


def _task_uniform_draws(backend: str) -> dict:
    """``task_uniform`` eagerly and inside the engine's compiled task maps, for seeds [5, 5, 6]: JSON-able lists."""
    from keras import ops

    engine = get_engine(backend)
    seeds = np.array([5, 5, 6], "int32")
    draws = {"eager": [np.asarray(engine.task_uniform((2, 4), ops.convert_to_tensor(s))).tolist() for s in seeds],
             "stream": np.asarray(engine.task_uniform((2, 4), ops.convert_to_tensor(seeds[0]), stream=1)).tolist()}
    if backend == "tensorflow":
        import tensorflow as tf

        draw = lambda s: engine.task_uniform((2, 4), s)  # noqa: E731
        draws["mapped"] = tf.function(lambda s: tf.map_fn(draw, s, fn_output_signature=tf.float32))(seeds).numpy().tolist()
        draws["vectorized"] = tf.function(lambda s: tf.vectorized_map(draw, s))(seeds).numpy().tolist()
    else:
        import jax

        draws["mapped"] = np.asarray(jax.jit(lambda s: engine.map_tasks(lambda t: engine.task_uniform((2, 4), t["seed"]), {"seed": s}))(seeds)).tolist()
        draws["vectorized"] = np.asarray(jax.jit(jax.vmap(lambda s: engine.task_uniform((2, 4), s)))(seeds)).tolist()
    return draws


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_task_uniform_is_a_pure_function_of_the_seed_inside_compiled_task_maps(backend):
    # Reptile's per-task minibatch order: every task of a meta-batch draws its own, reproducibly.
    if backend == "tensorflow":
        draws = _task_uniform_draws("tensorflow")
    else:
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import test_engines; "
                "print('RESULT ' + json.dumps(test_engines._task_uniform_draws('jax')))")
        env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
        done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        draws = json.loads([line for line in done.stdout.splitlines() if line.startswith("RESULT ")][-1][len("RESULT "):])
    eager = np.array(draws["eager"])
    assert eager.shape == (3, 2, 4) and eager.min() >= 0.0 and eager.max() < 1.0
    np.testing.assert_array_equal(eager[0], eager[1])  # one seed, one draw
    assert not np.allclose(eager[0], eager[2]) and not np.allclose(eager[0], draws["stream"])  # another seed or stream, another draw
    np.testing.assert_allclose(draws["mapped"], eager, atol=1e-7)
    np.testing.assert_allclose(draws["vectorized"], eager, atol=1e-7)


def test_the_task_loop_traces_a_task_once_and_averages_every_tasks_gradient():
    # Least squares per task, w <- w - mean over tasks of each task's gradient (SGD, lr 1), by hand.
    import keras
    from keras import ops

    engine = get_engine("tensorflow")
    traces = {"task_loss": 0, "task_eval": 0}

    def task_loss(params, state, task):
        traces["task_loss"] += 1
        residual = ops.sum(task["x"] * params[0], axis=-1) - task["y"]
        return ops.mean(residual**2), ({"abs_error": ops.mean(ops.abs(residual))}, [])

    def task_eval(params, state, task):
        traces["task_eval"] += 1
        return {"prediction": ops.sum(task["x"] * params[0], axis=-1)}

    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(3, 4, 2)).astype("float32"), "y": rng.normal(size=(3, 4)).astype("float32")}
    w = np.array([1.0, -2.0], "float32")
    residual = batch["x"] @ w - batch["y"]  # [tasks 3, examples 4]
    gradient = np.mean(2 / 4 * np.einsum("te,tek->tk", residual, batch["x"]), axis=0)

    weights = keras.Variable(w)
    logs = engine.make_meta_trainer(task_loss, [weights], keras.optimizers.SGD(1.0))(batch)
    np.testing.assert_allclose(logs["loss"], np.mean(residual**2), rtol=1e-5)
    np.testing.assert_allclose(logs["abs_error"], np.mean(np.abs(residual)), rtol=1e-5)
    np.testing.assert_allclose(weights.numpy(), w - gradient, rtol=1e-5)
    predictions = engine.make_evaluator(task_eval, [weights])(batch)["prediction"]
    np.testing.assert_allclose(predictions, batch["x"] @ (w - gradient), rtol=1e-5)
    # Once each: a task traced twice doubles the graph that is built and optimized before the first step.
    assert traces == {"task_loss": 1, "task_eval": 1}


def test_a_fresh_tensorflow_engine_on_one_core_runs_two_tasks_at_once_one_thread_per_op():
    # In a process of its own: TensorFlow's pools can only be sized before its first op runs.
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "os.environ.pop('TF_NUM_INTRAOP_THREADS', None); os.environ.pop('TF_NUM_INTEROP_THREADS', None); "
        "from metabench.harness.engines import get_engine; engine = get_engine('tensorflow'); "
        "import tensorflow as tf; tf.constant(1.0) + 1.0; print(engine.parallelism())"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "{'intra_op': 1, 'inter_op': 2, 'tasks_in_flight': 2}"
