"""The JAX engine: runs where TensorFlow is not installed, learns, and gives nestable gradients.

Keras picks its backend once per process, so everything JAX runs in subprocesses. There a meta-path
finder hides TensorFlow from imports, as on the GPU machine, where it is not installed at all.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from metabench.harness.engines import EngineError

pytest.importorskip("jax")

#: Prepended to every subprocess: ``import tensorflow`` (or any submodule) raises ImportError.
HIDE_TENSORFLOW = textwrap.dedent(
    """
    import importlib.abc, sys

    class _NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, _NoTensorFlow())
    """
)


def _run_jax(code: str, *, keras_backend: str | None = "jax", timeout: int = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"})
    if keras_backend:
        env["KERAS_BACKEND"] = keras_backend
    return subprocess.run([sys.executable, "-c", HIDE_TENSORFLOW + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


QUICKSTART = """
    import json, sys
    from metabench.harness.cli.main import main
    from metabench.harness.results.store import ResultsStore

    code = main(["run", "quickstart", "--backend", "jax", "--store", STORE, "--json", "--no-progress", "--quiet",
                 "--set", "train.meta_iterations=50", "--set", "evaluation.episodes=20"])
    assert code == 0, code
    with ResultsStore(STORE) as results:
        runs = results.runs()
    leaked = sorted(name for name in sys.modules if name == "tensorflow" or name.startswith("tensorflow."))
    print(json.dumps({"backend": runs.iloc[0].backend, "status": runs.iloc[0].status, "device": runs.iloc[0].device,
                      "tensorflow_modules": leaked}))
"""


@pytest.mark.slow  # 12 s (pytest -m slow)
def test_quickstart_meta_trains_and_evaluates_with_tensorflow_hidden(tmp_path):
    done = _run_jax(QUICKSTART.replace("STORE", repr(str(tmp_path / "results.sqlite"))))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    summary, facts = json.loads(lines[-2]), json.loads(lines[-1])
    assert summary["metric"] == "mse" and summary["episodes"] == 20 and summary["mean"] > 0 and summary["ci95"] > 0
    assert facts == {"backend": "jax", "status": "completed", "device": "CPU", "tensorflow_modules": []}


@pytest.mark.slow  # 11 s (pytest -m slow)
def test_backend_flag_alone_selects_jax_before_keras_starts(tmp_path):
    done = _run_jax(QUICKSTART.replace("STORE", repr(str(tmp_path / "results.sqlite"))), keras_backend=None)
    assert done.returncode == 0, done.stderr[-3000:]


#: Unit checks that share one JAX subprocess (each start costs seconds): name -> code that sets ``result``.
CHECKS = {
    "grads_nest_and_map_tasks": """
        import jax, jax.numpy as jnp, numpy as np
        from metabench.harness.engines import get_engine

        def loss(params, x):
            return jnp.sum(jnp.sin(params[0] * x) * params[1]), ()

        value_and_grad = get_engine("jax").value_and_grad(loss)
        # d/dw of (d/dw sum(sin(w x) b)) = -sum(x^2 sin(w x) b): the engine's gradient is differentiable.
        second = jax.grad(lambda w: value_and_grad([w, jnp.float32(2.0)], jnp.arange(3.0))[1][0])(jnp.float32(0.5))
        x = np.arange(3.0)
        batch = {"x": jnp.arange(10.0).reshape(5, 2)}
        mapped = {}
        for mode, chunk in (("vectorized", 1), ("loop", 2), ("unrolled", 2), ("unrolled", 1)):
            engine = get_engine("jax", task_map=mode, parallel_tasks=chunk)
            out = jax.jit(lambda b: engine.map_tasks(lambda task: {"s": jnp.sum(task["x"] ** 2)}, b))(batch)
            mapped[f"{mode}-{chunk}"] = np.asarray(out["s"]).tolist()
        result = {"second": float(second), "expected": float(-np.sum(x**2 * np.sin(0.5 * x) * 2.0)), "mapped": mapped}
    """,
    "task_maps_train_alike": """
        import keras, numpy as np
        from metabench.algorithms.maml import MAML
        from metabench.algorithms.models import mlp
        from metabench.harness.run.bench import set_numpy_weights
        from metabench.harness.engines import get_engine

        x = np.random.default_rng(0).uniform(-5, 5, size=(3, 5, 10, 1)).astype("float32")
        batches = [{"support_x": b[:, :5], "support_y": np.sin(b[:, :5]), "query_x": b[:, 5:], "query_y": np.sin(b[:, 5:])}
                   for b in x]
        result = {}
        for name, options in {"vectorized": {}, "grad_of_mean": {"grad_of_mean": True},
                              "loop": {"task_map": "loop", "parallel_tasks": 2},
                              "unrolled": {"task_map": "unrolled", "parallel_tasks": 2}}.items():
            engine = get_engine("jax", **options)
            engine.set_matmul_precision("highest")
            model = mlp(1, 1, hidden=[8, 8])
            set_numpy_weights(model, seed=3)
            maml = MAML(inner_lr=0.05, inner_steps=1).build(model, "regression", engine)
            step = engine.make_meta_trainer(maml.task_loss, maml.meta_variables(), keras.optimizers.Adam(0.01))
            result[name] = [step(batch)["loss"] for batch in batches]
            result[name].append(float(np.sum(np.asarray(maml.meta_variables()[0].value))))  # written back
    """,
    "live_variable_reads": """
        import keras, numpy as np
        from keras import ops
        from metabench.harness.engines import get_engine

        engine = get_engine("jax")
        w = keras.Variable(np.zeros(2, "float32"))
        counter = keras.Variable(np.zeros((), "float32"), trainable=False)

        def task_loss(params, state, task):
            loss = ops.sum((params[0] - counter.value - task["x"]) ** 2)
            return loss, ({"seen": counter.value + 0.0}, [state[0] + 1.0])

        step = engine.make_meta_trainer(task_loss, [w], keras.optimizers.SGD(0.1), [counter])
        evaluate = engine.make_evaluator(lambda p, s, task: {"seen": counter.value + 0.0 * task["x"][0]}, [w], [counter])
        batch = {"x": np.zeros((2, 2), "float32")}
        seen = [step(batch)["seen"] for _ in range(3)]
        result = {"train": seen, "eval": evaluate(batch)["seen"].tolist(), "counter": float(counter.value)}
    """,
    "trajectory": """
        import jax, numpy as np
        from keras import ops
        from metabench.harness.engines import get_engine

        engine = get_engine("jax")

        def run(task, steps=3):  # observe 3c after each c <- 2c + i
            return engine.trajectory(lambda c, i: [2.0 * c[0] + ops.cast(i, "float32")], lambda c: 3.0 * c[0], [task], steps)

        x = np.array([[1.0, 2.0], [3.0, 4.0]], "float32")
        result = {"vmapped": np.asarray(jax.jit(jax.vmap(run))(x)).tolist(),
                  "zero_steps": np.asarray(jax.jit(lambda task: run(task, 0))(x[0])).tolist()}
    """,
    "bad_options": """
        from metabench.harness.engines import EngineError, get_engine

        result = []
        for options in ({"task_map": "vmap"}, {"parallel_tasks": 0}, {"task_map": "loop", "grad_of_mean": True}):
            try:
                get_engine("jax", **options)
            except EngineError as error:
                result.append(str(error))
    """,
}

RUN_CHECKS = """
    import json, sys, textwrap, traceback
    results = {}
    for name, code in json.loads(sys.argv[1]).items():
        scope = {}
        try:
            exec(textwrap.dedent(code), scope)
            results[name] = scope["result"]
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def checks():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    done = subprocess.run([sys.executable, "-c", HIDE_TENSORFLOW + textwrap.dedent(RUN_CHECKS), json.dumps(CHECKS)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return _last_json(done.stdout)


def _check(checks, name):
    result = checks[name]
    assert not (isinstance(result, dict) and "error" in result), result.get("error") if isinstance(result, dict) else result
    return result


def test_engine_grads_nest_and_map_tasks_in_every_mode(checks):
    facts = _check(checks, "grads_nest_and_map_tasks")
    assert facts["second"] == pytest.approx(facts["expected"], rel=1e-5)
    expected = [1.0, 13.0, 41.0, 85.0, 145.0]
    assert all(values == expected for values in facts["mapped"].values()), facts["mapped"]


def test_every_task_map_and_gradient_form_trains_to_the_same_numbers(checks):
    runs = _check(checks, "task_maps_train_alike")
    for name, values in runs.items():
        assert values == pytest.approx(runs["vectorized"], rel=1e-5, abs=1e-6), name
    assert runs["vectorized"][1] != runs["vectorized"][0]  # the weights moved between steps


def test_trajectory_records_every_step_under_jit_and_vmap(checks):
    # The engine's default (a buffer updated in place in a fori_loop), as heads.fit uses it.
    facts = _check(checks, "trajectory")
    assert facts["vmapped"] == [[[3, 6], [6, 12], [15, 27], [36, 60]], [[9, 12], [18, 24], [39, 51], [84, 108]]]
    assert facts["zero_steps"] == [[3, 6]]


def test_compiled_steps_read_variables_live_like_tensorflow_graphs(checks):
    # A task function that reads a variable directly (not through params or state) must see its
    # current value on every call, not the value it had when the step was traced.
    assert _check(checks, "live_variable_reads") == {"train": [0.0, 1.0, 2.0], "eval": [3.0, 3.0], "counter": 3.0}


def test_jax_engine_refuses_bad_options_by_name(checks):
    messages = _check(checks, "bad_options")
    assert "Received task_map='vmap'; expected one of ['auto', 'vectorized', 'loop', 'unrolled']" in messages[0]
    assert "Received parallel_tasks=0; expected a positive integer" in messages[1]
    assert "Received grad_of_mean=True with task_map='loop'" in messages[2]


def test_switching_backend_in_a_running_process_is_refused():
    # This process runs Keras on TensorFlow (tests/conftest.py); JAX needs a process of its own.
    import keras

    from metabench.harness.engines import get_engine

    assert keras.backend.backend() == "tensorflow"
    with pytest.raises(EngineError, match="cannot switch to 'jax' in the same process. Set KERAS_BACKEND=jax"):
        get_engine("jax")
