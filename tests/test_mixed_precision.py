"""conv4's mixed precision (``dtype_policy="mixed_bfloat16"``): float32 weights, logits and gradients,
and second-order MAML meta-gradients within bfloat16's rounding of float64's."""

import numpy as np
import pytest

import keras

from metabench.algorithms.heads import split_head
from metabench.algorithms.maml import MAML
from metabench.algorithms.models import conv4
from metabench.harness.engines import get_engine

SHAPE, WAYS = (12, 12, 1), 3


def test_a_mixed_bfloat16_conv4_computes_in_bfloat16_from_float32_weights_to_float32_logits():
    model = conv4(SHAPE, WAYS, filters=4, dtype_policy="mixed_bfloat16")
    assert {v.dtype for v in model.weights} == {"float32"}
    assert model.layers[1].compute_dtype == "bfloat16" and model.layers[-1].compute_dtype == "float32"
    x = np.zeros((2, *SHAPE), "float32")
    assert keras.backend.standardize_dtype(model(x).dtype) == "float32"
    body = split_head(model)[0]  # what ANIL and ProtoNets read: float32 features
    assert keras.backend.standardize_dtype(body(x).dtype) == "float32"
    with pytest.raises(ValueError, match=r"Received dtype_policy='float16'; expected one of \['float32', 'mixed_bfloat16'\]"):
        conv4(SHAPE, WAYS, dtype_policy="float16")


def _omniglot_shaped_task(rng, ways=5, queries=15):
    x = rng.uniform(0, 1, size=(ways * (1 + queries), 28, 28, 1))
    y = np.tile(np.arange(ways), 1 + queries)
    return {"support_x": x[:ways], "support_y": y[:ways], "query_x": x[ways:], "query_y": y[ways:]}


def _full_size_maml(dtype_policy, weights=None):
    model = conv4((28, 28, 1), 5, dtype_policy=dtype_policy)  # 64 filters, as the benchmarks and Omniglot recipes
    if weights is not None:
        model.set_weights([w.astype(v.dtype) for w, v in zip(weights, model.weights)])
    return MAML(inner_lr=0.4, inner_steps=1, first_order=False).build(model, "classification", get_engine("tensorflow"))


def _flat(grads):
    return np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in grads])


@pytest.mark.parametrize("seed", [1, 2])
def test_bfloat16_second_order_meta_gradients_against_float64(seed, float64):
    # Measured (docs/performance.md): bfloat16's second-order meta-gradient on a 5-way 1-shot task is
    # 17-22% off float64 (cosine 0.975-0.986), float32 under 0.1%; bfloat16 is an option, not the default.
    # The reference is float64's analytic meta-gradient: tests/test_maml_gradients.py pins it to finite
    # differences on a smooth network (with ReLU the inner gradient jumps, so differences cannot).
    keras.utils.set_random_seed(seed)
    exact = _full_size_maml("float32")  # under the float64 fixture: a float64 model
    weights = [np.asarray(v.value) for v in exact.model.weights]
    task = _omniglot_shaped_task(np.random.default_rng(seed))
    params = [v.value for v in exact.meta_variables()]
    task64 = {k: keras.ops.convert_to_tensor(v) for k, v in task.items()}
    reference = _flat(exact.engine.value_and_grad(exact.task_loss)(params, [], task64)[1])

    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    task32 = {k: keras.ops.convert_to_tensor(v.astype("float32") if v.dtype == np.float64 else v) for k, v in task.items()}
    errors = {}
    for policy in ("float32", "mixed_bfloat16"):
        maml = _full_size_maml(policy, weights)
        (loss, _), grads = maml.engine.value_and_grad(maml.task_loss)([v.value for v in maml.meta_variables()], [], task32)
        assert keras.backend.standardize_dtype(loss.dtype) == "float32"
        assert {keras.backend.standardize_dtype(g.dtype) for g in grads} == {"float32"}  # float32 meta-gradients
        ours = _flat(grads)
        errors[policy] = (np.linalg.norm(ours - reference) / np.linalg.norm(reference),
                          ours @ reference / np.linalg.norm(ours) / np.linalg.norm(reference))
    assert errors["float32"][0] < 5e-3, errors  # float32: rounding two orders smaller
    assert 0.02 < errors["mixed_bfloat16"][0] < 0.3 and errors["mixed_bfloat16"][1] > 0.95, errors  # bfloat16's rounding, no more
