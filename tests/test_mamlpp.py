"""Each MAML++ switch changes what it claims to change."""

import numpy as np
import pytest
from keras import ops

from metabench.algorithms.mamlpp import MAMLPlusPlus
from metabench.harness.testing.conformance import classification_setting
from metabench.harness.engines import get_engine
from metabench.harness.run.checkpoint import TrainingState
from metabench.harness.run.core import train_and_evaluate
from metabench.harness.run.session import build


def meta_train(session, config):
    """Meta-train ``session`` through the run core (which also evaluates it)."""
    return train_and_evaluate(session, TrainingState(), config, classification_setting(iterations=1, eval_steps=3).prepared, rebuild=None).session


def _session(iterations=0, **options):
    setting = classification_setting(iterations=max(iterations, 1), eval_steps=3)
    config = dict(setting.config, train=dict(setting.config["train"], meta_iterations=max(iterations, 1)))
    options = {"inner_lr": 0.4, "inner_steps": 3, "iterations_per_epoch": 10, **options}
    session = build(config, setting.prepared, get_engine("tensorflow"), algorithm=MAMLPlusPlus(**options))
    if iterations:
        meta_train(session, config)
    return session, setting


def _eval_batch(setting):
    return next(setting.prepared.eval_sets[0].batches(8, setting.prepared.eval_pool))


def test_msl_weights_follow_the_authors_schedule():
    maml = MAMLPlusPlus(inner_steps=5, msl_epochs=10)
    for epoch, non_final, final in ((0, 0.20, 0.20), (1, 0.18, 0.28), (5, 0.10, 0.60), (9, 0.02, 0.92)):
        weights = np.asarray(maml._step_loss_weights(ops.convert_to_tensor(float(epoch))))
        np.testing.assert_allclose(weights[:4], non_final, atol=1e-6)
        np.testing.assert_allclose(weights[4], final, atol=1e-6)
    after = np.asarray(maml._step_loss_weights(ops.convert_to_tensor(10.0)))
    np.testing.assert_allclose(after, [0, 0, 0, 0, 1])
    off = MAMLPlusPlus(inner_steps=5, multi_step_loss=False)
    np.testing.assert_allclose(np.asarray(off._step_loss_weights(ops.convert_to_tensor(0.0))), [0, 0, 0, 0, 1])


def test_msl_changes_the_outer_loss():
    losses = {}
    for msl in (True, False):
        session, _ = _session(multi_step_loss=msl)
        task = {k: v[0] for k, v in _first_training_batch(session).items()}
        params = [v.value for v in session.algorithm.meta_variables()]
        state = [v.value for v in session.algorithm.state_variables()]
        losses[msl] = float(session.algorithm.task_loss(params, state, task)[0])
    assert abs(losses[True] - losses[False]) > 1e-4


def _first_training_batch(session):
    return {k: ops.convert_to_tensor(v) for k, v in session.source.batch(0).items()}


@pytest.mark.slow  # 17 s (pytest -m slow)
def test_lslr_rates_are_meta_learned():
    session, _ = _session()
    rates = session.algorithm._rates[0]
    before = np.asarray(rates.value).copy()
    assert before.shape == (3, len(session.algorithm._adapted)) and np.all(before == 0.4)
    session.trainer(session.source.batch(0))
    after = np.asarray(rates.value)
    assert not np.allclose(before, after)
    fixed, _ = _session(learned_inner_lr=False)
    assert not fixed.algorithm._rates


@pytest.mark.slow  # 17 s (pytest -m slow)
def test_bnwb_keeps_one_scale_and_offset_per_step_and_learns_them_apart():
    session, _ = _session()
    per_step = session.algorithm._bn
    assert all(tuple(v.shape)[0] == 4 for v in per_step)  # steps 0..3
    session.trainer(session.source.batch(0))
    gamma = np.asarray(per_step[0].value)
    assert not np.allclose(gamma[0], gamma[1])  # steps get different updates
    shared, _ = _session(per_step_bn_weights=False)
    assert all(len(v.shape) == 1 for v in shared.algorithm._bn)


@pytest.mark.slow  # 25 s (pytest -m slow)
def test_bnrs_keeps_statistics_per_step_and_uses_step_i_at_step_i():
    session, setting = _session(iterations=3)
    statistics = session.algorithm.state_variables()
    assert statistics and all(tuple(v.shape)[0] == 4 for v in statistics)
    values = np.asarray(statistics[0].value)
    assert not np.allclose(values[0], values[1])  # each step has its own running mean
    batch = _eval_batch(setting)
    before = session.evaluator(batch)["metric"]
    # Corrupt the statistics of step 2 only: evaluation must change from step 2 on, not before.
    for variable in statistics:
        value = np.asarray(variable.value).copy()
        value[2] = value[2] * 5.0 + 3.0
        variable.assign(value)
    after = session.evaluator(batch)["metric"]
    np.testing.assert_array_equal(before[:, :2], after[:, :2])
    assert not np.array_equal(before[:, 2], after[:, 2])


def test_without_bnrs_evaluation_uses_batch_statistics():
    session, setting = _session(per_step_bn_statistics=False)
    assert session.algorithm.state_variables() == []
    assert "transductive" in session.algorithm.notes()["batch_norm"]


def test_derivative_order_annealing_switches_to_second_order_after_its_epoch():
    session, _ = _session(second_order_epoch=0, multi_step_loss=False)
    algorithm, engine = session.algorithm, get_engine("tensorflow")
    params = [v.value for v in algorithm.meta_variables()]
    state = [v.value for v in algorithm.state_variables()]
    batch = _first_training_batch(session)
    grads = {}
    for iteration in (0, 10):  # epoch 0: first order; epoch 1 (> 0): second order
        task = {k: v[0] for k, v in batch.items()}
        task["iteration"] = ops.convert_to_tensor(iteration)
        (_, _), grads[iteration] = engine.value_and_grad(algorithm.task_loss)(params, state, task)
    difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(grads[0], grads[10]))
    assert difference > 1e-6


@pytest.mark.slow  # 14 s (pytest -m slow)
def test_cosine_annealing_of_the_meta_learning_rate():
    setting = classification_setting(iterations=1, eval_steps=3)
    config = dict(setting.config, train=dict(setting.config["train"], meta_lr_schedule="cosine", meta_iterations=4, meta_lr_min=1e-5))
    session = build(config, setting.prepared, get_engine("tensorflow"), algorithm=MAMLPlusPlus(inner_steps=1))
    meta_train(session, config)
    expected = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + np.cos(np.pi * 4 / 4))
    assert float(np.asarray(session.optimizer.learning_rate)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow  # 29 s (pytest -m slow)
def test_reference_style_evaluation_ignores_the_running_statistics():
    session, setting = _session(iterations=3, test_statistics="batch")
    batch = _eval_batch(setting)
    before = session.evaluator(batch)["metric"]
    for variable in session.algorithm.state_variables():
        variable.assign(np.asarray(variable.value) * 5.0 + 3.0)
    np.testing.assert_array_equal(before, session.evaluator(batch)["metric"])
    assert "transductive" in session.algorithm.notes()["batch_norm"]
