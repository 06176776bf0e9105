"""Reptile: the contract, toy tasks learned well above chance, its outer step as a pseudo-gradient,
its inner optimizers and minibatches, and its non-transductive evaluation."""

import keras
import numpy as np
import pytest
from keras import ops

from metabench.algorithms import inner
from metabench.algorithms.models import conv4, mlp
from metabench.algorithms.reptile import Reptile
from metabench.harness.engines import get_engine
from metabench.harness.testing import conformance
from helpers import contract_params

# One factory per task kind, shared by the contract and the margin tests (the suite trains each once).
CLASSIFICATION = lambda: Reptile(inner_optimizer="sgd", inner_lr=0.1, inner_steps=3)  # noqa: E731
REGRESSION = lambda: Reptile(inner_optimizer="sgd", inner_lr=0.05, inner_steps=5)  # noqa: E731
# The reference's Adam with its state carried across tasks and its minibatches in a fresh order per task: its state
# variables and the training tasks' seeds go through the whole contract too.
CARRIED = lambda: Reptile(inner_optimizer="adam", inner_lr=0.02, inner_steps=5, adam_state="carried",  # noqa: E731
                          inner_batch_size=5, minibatch_order="per_task")
CLASSIFICATION_ITERATIONS, REGRESSION_ITERATIONS, EVAL_STEPS = 50, 300, 5

# The regression contract runs by default, the classification one with `pytest -m slow` (helpers.contract_params).
CASES = [
    case
    for factory, kind in ((CLASSIFICATION, "classification"), (REGRESSION, "regression"), (CARRIED, "regression"))
    for case in contract_params(conformance.algorithm_checks(
        factory, kinds=(kind,), eval_steps=EVAL_STEPS, classification_iterations=CLASSIFICATION_ITERATIONS,
        regression_iterations=REGRESSION_ITERATIONS,
    ), kinds_run=("classification", "regression"))
]


@pytest.mark.parametrize("check", CASES)
def test_contract(check):
    check()


@pytest.mark.slow  # reads the classification contract's session (slow) (pytest -m slow)
def test_learns_the_toy_tasks_well_above_chance():
    # The settings exactly as algorithm_checks asks for them (lru_cache keys), so the contract's trained sessions are reused.
    setting = conformance.classification_setting(iterations=CLASSIFICATION_ITERATIONS, eval_steps=EVAL_STEPS, pooled=False)
    accuracy = conformance._trained(CLASSIFICATION, setting)[1]  # [steps, episodes]
    assert accuracy[-1].mean() >= 0.6, f"5-way accuracy {accuracy[-1].mean():.3f} after {EVAL_STEPS} steps (chance 0.2)"
    setting = conformance.regression_setting(iterations=REGRESSION_ITERATIONS, eval_steps=EVAL_STEPS, pooled=False)
    mse = conformance._trained(REGRESSION, setting)[1]
    assert mse[-1].mean() <= 0.2 * mse[0].mean(), f"MSE {mse[-1].mean():.3f} after adaptation, {mse[0].mean():.3f} before"


def _line_task(rng, support=6, query=4):
    x = rng.uniform(-2, 2, size=(support + query, 1)).astype("float32")
    y = (1.5 * x - 0.5).astype("float32")
    return {"support_x": x[:support], "support_y": y[:support], "query_x": x[support:], "query_y": y[support:]}


def _reptile(model, task_kind="regression", **options):
    keras.utils.set_random_seed(0)
    return Reptile(**options).build(model, task_kind, get_engine("tensorflow"))


def _support_gradient(algorithm, params, task):
    def loss(weights):
        return algorithm.objective.loss(algorithm.apply(weights, task["support_x"]), task["support_y"]), ()

    return algorithm.engine.value_and_grad(loss)(params)[1]


def test_the_outer_gradient_is_theta_minus_the_adapted_weights():
    reptile = _reptile(mlp(1, 1, hidden=[8]), inner_optimizer="sgd", inner_lr=0.1, inner_steps=1)
    task = {k: ops.convert_to_tensor(v) for k, v in _line_task(np.random.default_rng(0)).items()}
    params = [v.value for v in reptile.meta_variables()]
    (loss, (metrics, _)), pseudo = reptile.engine.value_and_grad(reptile.task_loss)(params, [], task)
    adapted = [p - 0.1 * g for p, g in zip(params, _support_gradient(reptile, params, task))]
    for g, p, a in zip(pseudo, params, adapted):  # one SGD step: theta - phi = lr * support gradient
        np.testing.assert_allclose(np.asarray(g), np.asarray(p - a), rtol=1e-5, atol=1e-7)
    query_loss = reptile.objective.loss(reptile.apply(adapted, task["query_x"]), task["query_y"])
    np.testing.assert_allclose(float(loss), float(query_loss), rtol=1e-6)  # the value reported: the adapted query loss
    assert float(metrics["mse"]) == pytest.approx(float(query_loss), rel=1e-6)


def test_an_sgd_outer_step_is_the_batched_reptile_update():
    epsilon, lr, steps = 0.5, 0.05, 2
    reptile = _reptile(mlp(1, 1, hidden=[8]), inner_optimizer="sgd", inner_lr=lr, inner_steps=steps)
    rng = np.random.default_rng(1)
    tasks = [_line_task(rng), _line_task(rng)]
    theta = [v.value for v in reptile.meta_variables()]
    adapted = []
    for task in tasks:
        phi = list(theta)
        for _ in range(steps):
            phi = [p - lr * g for p, g in zip(phi, _support_gradient(reptile, phi, {k: ops.convert_to_tensor(v) for k, v in task.items()}))]
        adapted.append([np.asarray(p) for p in phi])
    expected = [np.asarray(t) + epsilon * np.mean([a[i] - np.asarray(t) for a in adapted], axis=0) for i, t in enumerate(theta)]
    step = reptile.engine.make_meta_trainer(reptile.task_loss, reptile.meta_variables(), keras.optimizers.SGD(epsilon))
    step({k: np.stack([t[k] for t in tasks]) for k in tasks[0]})
    for variable, value in zip(reptile.meta_variables(), expected):
        np.testing.assert_allclose(np.asarray(variable.value), value, rtol=1e-5, atol=1e-6)


def test_the_adam_rule_is_keras_adam():
    rng = np.random.default_rng(2)
    params = [rng.normal(size=(3, 2)).astype("float32"), rng.normal(size=(2,)).astype("float32")]
    grads = [[rng.normal(size=p.shape).astype("float32") for p in params] for _ in range(3)]
    init, update = inner.adam(0.01, beta1=0.0, beta2=0.999, epsilon=1e-7)
    ours, moments = [ops.convert_to_tensor(p) for p in params], init(params)
    variables = [keras.Variable(p) for p in params]
    optimizer = keras.optimizers.Adam(0.01, beta_1=0.0, beta_2=0.999, epsilon=1e-7)
    for step, g in enumerate(grads):
        ours, moments = update(ours, [ops.convert_to_tensor(x) for x in g], moments, step)
        optimizer.apply(g, variables)
    for mine, theirs in zip(ours, variables):
        np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs.value), rtol=1e-5, atol=1e-7)


def test_minibatches_pass_over_reshuffled_copies_of_the_set():
    reptile = Reptile(inner_batch_size=2, shuffle_seed=3)
    order = np.asarray(reptile._order(size=6, batch_size=2, steps=3))
    assert sorted(order.tolist()) == list(range(6))  # three batches of 2: one pass, each example once
    order = np.asarray(reptile._order(size=5, batch_size=10, steps=1))  # a batch larger than the set runs on
    assert sorted(order[:5].tolist()) == sorted(order[5:].tolist()) == list(range(5))
    assert reptile._order(size=5, batch_size=5, steps=4) is None and reptile._order(size=5, batch_size=0, steps=4) is None


def test_a_per_task_order_is_drawn_from_each_tasks_seed():
    reptile = _reptile(mlp(1, 1, hidden=(4,)), inner_batch_size=10, minibatch_order="per_task", shuffle_seed=3)
    seed = lambda value: ops.convert_to_tensor(np.int32(value))  # noqa: E731
    orders = [np.asarray(reptile._order(size=50, batch_size=10, steps=5, task_seed=seed(s))) for s in (11, 11, 12)]
    assert sorted(orders[0].tolist()) == list(range(50))  # five batches of 10: one pass over the set
    np.testing.assert_array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], orders[2])  # another task, another order
    fixed = np.asarray(reptile._order(size=50, batch_size=10, steps=5))
    assert not np.array_equal(orders[0], fixed)


def test_a_per_task_order_needs_the_training_tasks_seed_and_follows_it():
    reptile = _reptile(mlp(1, 1, hidden=[8]), inner_optimizer="sgd", inner_lr=0.1, inner_steps=2, inner_batch_size=2,
                       minibatch_order="per_task")
    task = {k: ops.convert_to_tensor(v) for k, v in _line_task(np.random.default_rng(0)).items()}
    params = [v.value for v in reptile.meta_variables()]
    with pytest.raises(ValueError, match="minibatch_order='per_task' needs each training task's 'task_seed'"):
        reptile.task_loss(params, [], task)

    def direction(seed):  # theta - phi after two SGD steps on the minibatches of this seed's order
        pseudo = reptile.engine.value_and_grad(reptile.task_loss)(params, [], {**task, "task_seed": ops.convert_to_tensor(np.int32(seed))})[1]
        return np.concatenate([np.ravel(np.asarray(g)) for g in pseudo])

    np.testing.assert_array_equal(direction(1), direction(1))
    assert not np.allclose(direction(1), direction(2))


def _image_task(rng, queries=6):
    return {
        "support_x": rng.random((5, 8, 8, 1)).astype("float32"), "support_y": np.arange(5, dtype="int32"),
        "query_x": rng.random((queries, 8, 8, 1)).astype("float32"), "label_set": np.arange(5, dtype="int32"),
    }


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_non_transductive_evaluation_normalises_each_query_with_the_support_set_alone(optimizer):
    reptile = _reptile(conv4((8, 8, 1), 5, filters=4), "classification", inner_optimizer=optimizer, inner_lr=0.05)
    assert reptile.notes()["evaluation"].endswith("non-transductive: each query batch-normalised with the support set alone")
    params = [v.value for v in reptile.meta_variables()]
    task = _image_task(np.random.default_rng(4))
    others = dict(task, query_x=np.concatenate([task["query_x"][:1], 1.0 - task["query_x"][1:]]))
    predictions = np.asarray(reptile.task_eval(params, [], task, 2)["predictions"])  # [3, Q, 5]
    assert predictions.shape == (3, 6, 5) and not np.allclose(predictions[0], predictions[2])
    np.testing.assert_allclose(np.asarray(reptile.task_eval(params, [], others, 2)["predictions"])[:, 0], predictions[:, 0],
                               rtol=1e-5, atol=1e-6)
    alone = reptile.apply(params, np.concatenate([task["support_x"], task["query_x"][:1]]))[-1]
    np.testing.assert_allclose(predictions[0, 0], np.asarray(alone), rtol=1e-5, atol=1e-6)
    transductive = _reptile(conv4((8, 8, 1), 5, filters=4), "classification", inner_optimizer=optimizer, inner_lr=0.05,
                            evaluation="transductive")
    first = np.asarray(transductive.task_eval(params, [], task, 0)["predictions"])[0, 0]
    assert not np.allclose(first, np.asarray(transductive.task_eval(params, [], others, 0)["predictions"])[0, 0], atol=1e-4)


def _adam_by_hand(theta, task, reptile, first, second, taken, steps, lr, beta2=0.999, epsilon=1e-8):
    """Adam (beta1 0) from the moments ``first``, ``second`` after ``taken`` steps: ``(phi, first, second)``."""
    phi, first, second = [np.asarray(p) for p in theta], [np.asarray(m) for m in first], [np.asarray(v) for v in second]
    for step in range(steps):
        grads = [np.asarray(g) for g in _support_gradient(reptile, [ops.convert_to_tensor(p) for p in phi], task)]
        t = taken + step + 1
        first = grads
        second = [beta2 * v + (1 - beta2) * g**2 for v, g in zip(second, grads)]
        phi = [p - lr * np.sqrt(1 - beta2**t) * m / (np.sqrt(v) + epsilon) for p, m, v in zip(phi, first, second)]
    return phi, first, second


def test_a_carried_adam_state_starts_every_task_and_becomes_their_mean():
    lr, steps, taken = 0.01, 2, 7.0
    reptile = _reptile(mlp(1, 1, hidden=[8]), inner_optimizer="adam", inner_lr=lr, inner_steps=steps, adam_state="carried")
    n = len(reptile.meta_variables())
    assert len(reptile.state_variables()) == 2 * n + 1 and "state carried" in reptile.notes()["inner"]
    rng = np.random.default_rng(5)
    start_second = [rng.uniform(0.01, 0.1, size=v.shape).astype("float32") for v in reptile.meta_variables()]
    for variable, value in zip(reptile.state_variables(), [np.zeros(v.shape, "float32") for v in reptile.meta_variables()]
                               + start_second + [np.float32(taken)]):
        variable.assign(value)
    tasks = [_line_task(rng), _line_task(rng)]
    theta = [np.asarray(v.value) for v in reptile.meta_variables()]
    by_hand = [_adam_by_hand(theta, {k: ops.convert_to_tensor(v) for k, v in t.items()}, reptile,
                             [np.zeros_like(p) for p in theta], start_second, taken, steps, lr) for t in tasks]
    # Evaluation starts from the same state (and leaves it as it is).
    predictions = np.asarray(reptile.task_eval([ops.convert_to_tensor(p) for p in theta], [v.value for v in reptile.state_variables()],
                                               {k: v for k, v in tasks[0].items() if k != "query_y"}, steps)["predictions"])
    expected = reptile.apply([ops.convert_to_tensor(p) for p in by_hand[0][0]], tasks[0]["query_x"])
    np.testing.assert_allclose(predictions[-1], np.asarray(expected), rtol=1e-4, atol=1e-6)
    step = reptile.engine.make_meta_trainer(reptile.task_loss, reptile.meta_variables(), keras.optimizers.SGD(1.0),
                                            reptile.state_variables())
    step({k: np.stack([t[k] for t in tasks]) for k in tasks[0]})
    for variable, i in zip(reptile.meta_variables(), range(n)):  # SGD step 1: theta becomes the mean adapted weights
        np.testing.assert_allclose(np.asarray(variable.value), np.mean([h[0][i] for h in by_hand], axis=0), rtol=1e-4, atol=1e-6)
    state = [np.asarray(v.value) for v in reptile.state_variables()]
    for i in range(n):
        np.testing.assert_allclose(state[n + i], np.mean([h[2][i] for h in by_hand], axis=0), rtol=1e-5, atol=1e-9)
    assert state[2 * n] == taken + steps
    per_task = _reptile(mlp(1, 1, hidden=[8]), inner_optimizer="adam", inner_lr=lr, inner_steps=steps)
    assert per_task.state_variables() == []  # the default: moments from zero in every task, nothing carried


def test_the_reference_outer_step_is_sgd_annealed_linearly():
    from metabench.harness.run.session import compile_meta_step

    reptile = _reptile(mlp(1, 1, hidden=[8]), inner_optimizer="sgd", inner_lr=0.1, inner_steps=1)
    train = {"meta_lr": 1.0, "meta_lr_schedule": "linear", "meta_lr_min": 0.0, "meta_iterations": 4,
             "meta_optimizer": "sgd", "clip_meta_grad": 0.0}
    optimizer, _ = compile_meta_step(reptile, train, reptile.engine)
    assert isinstance(optimizer, keras.optimizers.SGD) and not isinstance(optimizer, keras.optimizers.Adam)
    schedule = optimizer._learning_rate  # the schedule the optimizer evaluates at its iteration count
    rates = [float(schedule(k)) for k in range(5)]
    assert rates == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])  # the reference's frac_done interpolation


def test_refuses_unknown_options():
    with pytest.raises(ValueError, match="adam_state='carried' with inner_optimizer='sgd'"):
        Reptile(inner_optimizer="sgd", adam_state="carried")
    for options in ({"inner_optimizer": "rmsprop"}, {"train_on": "query"}, {"evaluation": "batch"}, {"inner_lr": 0.0},
                    {"inner_steps": 0}, {"inner_batch_size": -1}, {"adam_state": "shared"},
                    {"minibatch_order": "random"}):
        with pytest.raises(ValueError, match="Received"):
            Reptile(**options)
