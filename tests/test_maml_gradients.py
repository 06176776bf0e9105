"""MAML's meta-gradient against finite differences, in float64 on a tiny MLP."""

import numpy as np
import pytest

import keras

from metabench.algorithms.maml import MAML
from metabench.algorithms.models import BatchNorm, mlp
from metabench.harness.engines import get_engine


def _task(rng):
    x = rng.uniform(-2, 2, size=(6, 1))
    return {
        "support_x": x[:3],
        "support_y": np.sin(x[:3]) * 2.0,
        "query_x": x[3:],
        "query_y": np.sin(x[3:]) * 2.0,
    }


def _smooth_batch_norm_net():
    # conv4's layout with tanh instead of ReLU: finite differences need a smooth function.
    inputs = keras.Input((4, 4, 1))
    x = inputs
    for _ in range(4):
        x = keras.layers.Conv2D(3, 3, strides=2, padding="same")(x)
        x = BatchNorm()(x)
        x = keras.layers.Activation("tanh")(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def _image_task(rng):
    x = rng.uniform(0, 1, size=(8, 4, 4, 1))
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    return {"support_x": x[:4], "support_y": y[:4], "query_x": x[4:], "query_y": y[4:]}


def _meta_gradient_and_fd(first_order, inner_steps=2, batch_norm_model=False):
    keras.utils.set_random_seed(3)
    engine = get_engine("tensorflow")
    maml = MAML(inner_lr=0.1, inner_steps=inner_steps, first_order=first_order)
    if batch_norm_model:
        maml.build(_smooth_batch_norm_net(), "classification", engine)
        task = {k: keras.ops.convert_to_tensor(v) for k, v in _image_task(np.random.default_rng(0)).items()}
    else:
        maml.build(mlp(1, 1, hidden=[8, 8]), "regression", engine)
        task = {k: keras.ops.convert_to_tensor(v) for k, v in _task(np.random.default_rng(0)).items()}
    params = [np.asarray(v.value, dtype=np.float64) for v in maml.meta_variables()]
    (_, _), grads = engine.value_and_grad(maml.task_loss)([keras.ops.convert_to_tensor(p) for p in params], [], task)
    grads = [np.asarray(g) for g in grads]

    def loss_at(point):
        value, _ = maml.task_loss([keras.ops.convert_to_tensor(p) for p in point], [], task)
        return float(value)

    rng = np.random.default_rng(1)
    analytic, numeric = [], []
    eps = 1e-5
    for _ in range(6):
        direction = [rng.standard_normal(p.shape) for p in params]
        plus = loss_at([p + eps * d for p, d in zip(params, direction)])
        minus = loss_at([p - eps * d for p, d in zip(params, direction)])
        numeric.append((plus - minus) / (2 * eps))
        analytic.append(sum(float(np.sum(g * d)) for g, d in zip(grads, direction)))
    return np.array(analytic), np.array(numeric)


def test_second_order_meta_gradient_matches_finite_differences(float64):
    analytic, numeric = _meta_gradient_and_fd(first_order=False)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_second_order_meta_gradient_through_batch_statistics_matches_finite_differences(float64):
    # Batch norm on batch statistics puts the batch's mean and variance inside the inner loop;
    # their second derivatives must be exact too (tf.nn.moments alone would get them wrong).
    analytic, numeric = _meta_gradient_and_fd(first_order=False, batch_norm_model=True)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_first_order_meta_gradient_differs_from_the_true_gradient(float64):
    first_order, numeric = _meta_gradient_and_fd(first_order=True)
    second_order, _ = _meta_gradient_and_fd(first_order=False)
    # FOMAML drops the Hessian terms: its directional derivatives miss the true ones by far more
    # than the second-order error, yet still point roughly the same way.
    fo_error = np.max(np.abs(first_order - numeric))
    so_error = np.max(np.abs(second_order - numeric))
    assert fo_error > 1e-3
    assert fo_error > 1000 * so_error
    assert np.corrcoef(first_order, numeric)[0, 1] > 0.5
