"""ANIL: the contract, toy tasks learned well above chance, an inner loop that moves the head alone,
and meta-gradients equal to MAML's with the body held out of the inner loop."""

import keras
import numpy as np
import pytest
from keras import ops

from metabench.algorithms.anil import ANIL
from metabench.algorithms.maml import MAML
from metabench.algorithms.models import conv4, mlp
from metabench.harness.engines import get_engine
from metabench.harness.testing import conformance
from helpers import contract_params

CLASSIFICATION = lambda: ANIL(inner_lr=1.0, inner_steps=1)  # noqa: E731
REGRESSION = lambda: ANIL(inner_lr=0.1, inner_steps=1)  # noqa: E731
CLASSIFICATION_STEPS, REGRESSION_STEPS = 10, 5

# The regression contract runs by default, the classification one with `pytest -m slow` (helpers.contract_params).
CASES = [
    case
    for factory, kind, steps in ((CLASSIFICATION, "classification", CLASSIFICATION_STEPS), (REGRESSION, "regression", REGRESSION_STEPS))
    for case in contract_params(conformance.algorithm_checks(factory, kinds=(kind,), eval_steps=steps), kinds_run=("classification", "regression"))
]


@pytest.mark.parametrize("check", CASES)
def test_contract(check):
    check()


@pytest.mark.slow  # reads the classification contract's session (slow) (pytest -m slow)
def test_learns_the_toy_tasks_well_above_chance():
    # The settings exactly as algorithm_checks asks for them (lru_cache keys), so the contract's trained sessions are reused.
    accuracy = conformance._trained(CLASSIFICATION, conformance.classification_setting(iterations=150, eval_steps=CLASSIFICATION_STEPS, pooled=False))[1]
    assert accuracy[-1].mean() >= 0.5, f"5-way accuracy {accuracy[-1].mean():.3f} after adaptation (chance 0.2)"
    mse = conformance._trained(REGRESSION, conformance.regression_setting(iterations=300, eval_steps=REGRESSION_STEPS, pooled=False))[1]
    assert mse[-1].mean() <= 0.2 * mse[0].mean(), f"MSE {mse[-1].mean():.3f} after adaptation, {mse[0].mean():.3f} before"


def _build(algorithm, model, kind):
    keras.utils.set_random_seed(0)
    return algorithm.build(model, kind, get_engine("tensorflow"))


def test_one_inner_step_changes_the_head_only():
    anil = _build(ANIL(inner_lr=0.4), conv4((8, 8, 1), 5, filters=4), "classification")
    rng = np.random.default_rng(0)
    support_x, support_y = ops.convert_to_tensor(rng.random((5, 8, 8, 1)).astype("float32")), ops.convert_to_tensor(np.arange(5, dtype="int32"))
    params = [v.value for v in anil.meta_variables()]
    adapted = anil.adapt(params, support_x, support_y, steps=1)
    head = {v.path for v in anil.model.layers[-1].trainable_variables}
    assert len(head) == 2
    for variable, before, after in zip(anil.meta_variables(), params, adapted):
        if variable.path in head:
            assert not np.allclose(np.asarray(before), np.asarray(after)), f"{variable.path} did not move"
        else:
            np.testing.assert_array_equal(np.asarray(before), np.asarray(after), err_msg=f"{variable.path} moved")
    assert anil.notes()["adapted"].startswith("head only")


def _line_task(rng):
    x = rng.uniform(-2, 2, size=(10, 1)).astype("float32")
    y = (0.7 * x + 0.3).astype("float32")
    return {"support_x": x[:5], "support_y": y[:5], "query_x": x[5:], "query_y": y[5:]}


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradients_are_those_of_maml_with_the_body_held(first_order):
    """ANIL adapts the head on body features computed once; MAML holding every body weight in its inner
    loop runs the whole network at each step: the same loss and meta-gradient, second order or first."""
    options = dict(inner_lr=0.3, inner_steps=2, first_order=first_order)
    anil = _build(ANIL(**options), mlp(1, 1, hidden=[6, 6]), "regression")
    maml = _build(MAML(adapt_batch_norm=False, **options), mlp(1, 1, hidden=[6, 6]), "regression")
    maml._held = [v.path not in {w.path for w in maml.model.layers[-1].trainable_variables} for v in maml.model.trainable_variables]
    task = {k: ops.convert_to_tensor(v) for k, v in _line_task(np.random.default_rng(1)).items()}
    params = [v.value for v in anil.meta_variables()]
    (anil_loss, _), anil_grads = anil.engine.value_and_grad(anil.task_loss)(params, [], task)
    (maml_loss, _), maml_grads = maml.engine.value_and_grad(maml.task_loss)(params, [], task)
    np.testing.assert_allclose(float(anil_loss), float(maml_loss), rtol=1e-5)
    for a, m in zip(anil_grads, maml_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(m), rtol=1e-4, atol=1e-6)
    assert any(np.abs(np.asarray(g)).max() > 0 for g in anil_grads[:-2])  # the body learns in the outer loop


def test_second_order_terms_reach_the_body():
    task = {k: ops.convert_to_tensor(v) for k, v in _line_task(np.random.default_rng(2)).items()}
    grads = {}
    for first_order in (False, True):
        anil = _build(ANIL(inner_lr=0.3, inner_steps=2, first_order=first_order), mlp(1, 1, hidden=[6]), "regression")
        params = [v.value for v in anil.meta_variables()]
        grads[first_order] = anil.engine.value_and_grad(anil.task_loss)(params, [], task)[1]
    assert not np.allclose(np.asarray(grads[False][0]), np.asarray(grads[True][0]))


def test_evaluation_steps_the_head_from_the_meta_learned_one():
    anil = _build(ANIL(inner_lr=0.2, eval_inner_lr=0.1), mlp(1, 1, hidden=[6]), "regression")
    task = {k: ops.convert_to_tensor(v) for k, v in _line_task(np.random.default_rng(3)).items()}
    params = [v.value for v in anil.meta_variables()]
    predictions = np.asarray(anil.task_eval(params, [], task, 3)["predictions"])  # [4, Q, 1]
    for step in range(4):
        expected = anil.apply(anil.adapt(params, task["support_x"], task["support_y"], steps=step, lr=0.1, first_order=True), task["query_x"])
        np.testing.assert_allclose(predictions[step], np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_refuses_a_model_whose_last_layer_is_not_a_linear_head():
    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="tanh")(keras.layers.Dense(4)(inputs)))
    with pytest.raises(ValueError, match="linear head"):
        _build(ANIL(), model, "regression")
