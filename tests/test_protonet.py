"""Prototypical Networks: the contract, toy tasks learned well above chance (at more ways in training
than at test too), hand-computed nearest-prototype predictions, and non-transductive evaluation."""

import keras
import numpy as np
import pytest

from metabench.algorithms.models import conv4
from metabench.algorithms.protonet import PrototypicalNetwork
from metabench.harness.engines import get_engine
from metabench.harness.testing import conformance
from helpers import contract_params

FACTORY = lambda: PrototypicalNetwork()  # noqa: E731
STEPS = 0  # no inner steps: the nearest prototype after 0 steps is the method's prediction
# The contract's ``learns`` compares it with the untrained embedding (``adapts_at_test = False``), which
# already reaches 0.61 on the toy; 400 iterations take it to 0.71 (150 gave 0.66).
ITERATIONS = 400

# The contract but the checks that train sessions of their own runs by default (helpers.contract_params).
CASES = contract_params(conformance.algorithm_checks(FACTORY, eval_steps=STEPS, classification_iterations=ITERATIONS),
                        kinds_run=("classification",))


@pytest.mark.parametrize("check", CASES)
def test_contract(check):
    check()


@pytest.mark.slow  # 10 s (pytest -m slow)
def test_more_ways_in_training_than_at_evaluation():
    setting = conformance.classification_setting(ways=10, eval_ways=5, iterations=100, eval_steps=STEPS)
    assert setting.prepared.train_spec.ways == 10 and setting.prepared.eval_sets[0].spec.ways == 5
    accuracy = conformance._trained(FACTORY, setting)[1][-1].mean()
    assert accuracy >= 0.2 + 0.25, f"5-way accuracy {accuracy:.3f} after 10-way training (chance 0.2)"


def _identity_protonet():
    """A ProtoNet whose embedding is the identity on 3-d inputs (the Dense head after it is unused)."""
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Identity()(inputs)))
    return PrototypicalNetwork().build(model, "classification", get_engine("tensorflow"))


def test_predictions_are_the_hand_computed_nearest_prototypes():
    rng = np.random.default_rng(0)
    ways, shots = 3, 2
    support_y = np.repeat(np.arange(ways), shots).astype("int32")
    support_x = (rng.normal(size=(ways * shots, 3)) + 3.0 * np.eye(ways)[support_y]).astype("float32")
    query_x = rng.normal(size=(7, 3)).astype("float32") * 2.0
    task = {"support_x": support_x, "support_y": support_y, "query_x": query_x, "label_set": np.arange(ways, dtype="int32")}
    protonet = _identity_protonet()
    assert protonet.meta_variables() == []
    predictions = np.asarray(protonet.task_eval([], [], task, 2)["predictions"])  # [3, Q, ways]

    centres = np.stack([support_x[support_y == k].mean(axis=0) for k in range(ways)])  # [ways, 3]
    squared = np.array([[np.sum((q - c) ** 2) for c in centres] for q in query_x])  # [Q, ways]
    assert predictions.shape == (3, 7, ways)
    for step in predictions:  # every "step" is the same prediction
        np.testing.assert_allclose(step, -squared, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(step.argmax(axis=-1), squared.argmin(axis=-1))
    assert len(set(squared.argmin(axis=-1))) > 1  # the episode is not trivial


def _image_task(rng, ways=5, queries=2):
    return {
        "support_x": rng.random((ways, 8, 8, 1)).astype("float32"), "support_y": np.arange(ways, dtype="int32"),
        "query_x": rng.random((ways * queries, 8, 8, 1)).astype("float32"),
        "query_y": np.repeat(np.arange(ways, dtype="int32"), queries), "label_set": np.arange(ways, dtype="int32"),
    }


def test_training_keeps_running_statistics_and_evaluation_uses_them_per_image():
    keras.utils.set_random_seed(0)
    protonet = PrototypicalNetwork().build(conv4((8, 8, 1), 5, filters=4), "classification", get_engine("tensorflow"))
    assert len(protonet.meta_variables()) == len(protonet.model.trainable_variables) - 2  # the unused head is not learned
    params, state = [v.value for v in protonet.meta_variables()], [v.value for v in protonet.state_variables()]
    task = _image_task(np.random.default_rng(1))
    _, (_, new_state) = protonet.task_loss(params, state, task)
    assert len(new_state) == len(state) and any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(state, new_state))
    others = dict(task, query_x=np.concatenate([task["query_x"][:1], 1.0 - task["query_x"][1:]]))
    first = np.asarray(protonet.task_eval(params, state, task, 0)["predictions"])[0, 0]
    np.testing.assert_allclose(np.asarray(protonet.task_eval(params, state, others, 0)["predictions"])[0, 0], first, rtol=1e-5, atol=1e-5)
    assert "not transductive" in protonet.notes()["batch_norm"]
    with pytest.raises(ValueError, match="batch_norm"):
        PrototypicalNetwork(batch_norm="per_step")
