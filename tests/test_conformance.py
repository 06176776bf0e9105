"""Every shipped algorithm passes the contract; deliberately broken ones fail it."""

from pathlib import Path

import numpy as np
import pytest
from keras import ops

from metabench.algorithms.finetune import Baseline, BaselinePlusPlus, Pretrain
from metabench.algorithms.maml_rl import MAMLRL, OracleRL, PretrainRL, RandomRL
from metabench.algorithms.maml import MAML
from metabench.algorithms.mamlpp import MAMLPlusPlus
from metabench.algorithms.multitask import MultiTask
from metabench.algorithms.base import OBJECTIVES
from metabench.harness.testing.conformance import (
    algorithm_checks, check_algorithm, check_deterministic, check_no_query_label_leak, check_query_order,
    classification_setting,
)
from metabench.harness.registry import ALGORITHMS
from metabench.harness.run.scoring import ContractError, scored_task_eval
from helpers import contract_params, seedless_maml

# One table of algorithms under test: (registered name, task kind, factory with settings for the toy tasks).
# One table of algorithms under test: (registered name, task kind, factory with settings for the
# toy tasks, evaluation inner steps).
UNDER_TEST = [
    ("maml", "classification", lambda: MAML(inner_lr=0.4, inner_steps=1), 5),
    ("maml", "regression", lambda: MAML(inner_lr=0.1, inner_steps=1), 5),
    # On 8x8 toy images the last batch-norm layers see 1x1 maps of 5 images: running statistics
    # cannot stand in for batch statistics there, so the toy contract runs MAML++ transductively;
    # test_mamlpp.py covers per-step running statistics.
    ("mamlpp", "classification", lambda: MAMLPlusPlus(inner_lr=0.4, inner_steps=2, iterations_per_epoch=50, per_step_bn_statistics=False), 2),
    ("mamlpp", "regression", lambda: MAMLPlusPlus(inner_lr=0.1, inner_steps=1, iterations_per_epoch=50), 1),
    ("baseline", "classification", lambda: Baseline(finetune_lr=0.1), 30),
    ("baseline++", "classification", lambda: BaselinePlusPlus(finetune_lr=0.5), 30),
    ("pretrain", "classification", lambda: Pretrain(finetune_lr=0.05), 20),
    ("pretrain", "regression", lambda: Pretrain(finetune_lr=0.1), 5),
    ("multitask", "classification", lambda: MultiTask(num_tasks=50, finetune_lr=0.1), 30),
    ("multitask", "regression", lambda: MultiTask(num_tasks=50, finetune_lr=0.01), 30),
]

# Every algorithm's contract on one task kind runs by default, the rest with `pytest -m slow` (helpers.contract_params).
CASES = [
    case
    for name, kind, factory, steps in UNDER_TEST
    for case in contract_params(algorithm_checks(factory, kinds=(kind,), eval_steps=steps),
                                kinds_run={k for n, k, _, _ in UNDER_TEST if n == name}, prefix=f"{name}-")  # fmt: skip
]

#: policy-gradient algorithms, checked in the contract's reinforcement setting (point navigation shrunken
#: to horizon 10; they name their environment, so algorithm_checks picks the setting); MAML-RL by default,
#: the baselines with `pytest -m slow`. tests/test_point_navigation.py checks the estimator and rollouts by hand.
REINFORCEMENT_LEARNING = {"maml_rl": MAMLRL, "random_rl": RandomRL, "pretrain_rl": PretrainRL, "oracle_rl": OracleRL}
RL_CASES = [
    pytest.param(check, id=f"{name}-{test_id}", marks=[] if name == "maml_rl" else [pytest.mark.slow])
    for name, cls in REINFORCEMENT_LEARNING.items()
    for test_id, check in algorithm_checks(lambda cls=cls: cls(inner_lr=0.1), eval_steps=3)
]


#: algorithms whose test file runs the contract with its own factories (and trains them once for its other tests)
CONTRACT_IN_OWN_FILE = {"reptile": "test_reptile.py", "anil": "test_anil.py", "protonet": "test_protonet.py"}


def test_every_registered_algorithm_is_under_test():
    assert {"maml", "mamlpp", "baseline", "baseline++", "pretrain", "multitask", "reptile", "anil", "protonet"} <= set(ALGORITHMS.names())
    for file in CONTRACT_IN_OWN_FILE.values():
        assert "conformance.algorithm_checks(" in (Path(__file__).parent / file).read_text()
    assert set(ALGORITHMS.names()) <= {name for name, _, _, _ in UNDER_TEST} | set(CONTRACT_IN_OWN_FILE) | set(REINFORCEMENT_LEARNING)


@pytest.mark.parametrize("check", CASES)
def test_contract(check):
    check()


@pytest.mark.parametrize("check", RL_CASES)
def test_reinforcement_contract(check):
    check()


def test_reinforcement_setting_yields_the_checks_that_apply():
    ids = [test_id for test_id, _ in algorithm_checks(lambda: MAMLRL(inner_lr=0.1), eval_steps=3)]
    assert ids == ["reinforcement-learns", "reinforcement-deterministic", "reinforcement-no_query_label_leak",
                   "reinforcement-query_order", "reinforcement-save_restore"]  # fmt: skip


class PeekingMAML(MAML):
    """Broken on purpose: its adapted predictions depend on the query labels (which it cannot see any more)."""

    def task_eval(self, params, state, task, max_steps):
        results = super().task_eval(params, state, task, max_steps)
        hint = ops.one_hot(ops.cast(task["query_y"], "int32"), int(results["predictions"].shape[-1]))
        results["predictions"] = results["predictions"] + hint
        return results


class MetricOnlyLeakMAML(MAML):
    """Broken on purpose, the metric-only leak: honest predictions, plus a metric of its own computed after
    adapting on the query labels. It passed ``learns`` and ``no_query_label_leak`` while the runner stored
    algorithm-reported metrics; now the harness scores, and task_eval never sees the labels."""

    def task_eval(self, params, state, task, max_steps):
        honest = super().task_eval(params, state, task, max_steps)
        on_query_labels = dict(task, support_x=task["query_x"], support_y=task["query_y"])
        adapted = super().task_eval(params, state, on_query_labels, max_steps)["predictions"]
        return {**honest, "metric": ops.stack([self.objective.metric(p, task["query_y"]) for p in adapted])}


class PositionalMAML(MAML):
    """Broken on purpose: predicts each query's class from its position (queries arrive sorted by class)."""

    def task_eval(self, params, state, task, max_steps):
        predictions = super().task_eval(params, state, task, max_steps)["predictions"]
        steps, queries, ways = (int(d) for d in predictions.shape)
        by_position = ops.one_hot(ops.arange(queries) * ways // queries, ways) * 100.0
        return {"predictions": predictions + ops.broadcast_to(by_position, (steps, queries, ways))}


@pytest.mark.slow  # 22 s (pytest -m slow)
def test_the_contract_catches_an_algorithm_that_reads_the_query_order():
    with pytest.raises(AssertionError, match="never on its position"):
        check_query_order(lambda: PositionalMAML(inner_lr=0.4), classification_setting(iterations=20))


def test_the_contract_catches_an_algorithm_that_peeks_at_query_labels():
    with pytest.raises(AssertionError, match="task_eval must not read the query labels"):
        check_no_query_label_leak(lambda: PeekingMAML(inner_lr=0.4), classification_setting(iterations=20))


@pytest.mark.slow  # 12 s (pytest -m slow)
def test_the_suite_fails_the_metric_only_leak():
    with pytest.raises(AssertionError, match=r"^classification-learns: task_eval broke the contract: .*"
                                             r"MetricOnlyLeakMAML\.task_eval read task\['query_y'\]: task_eval must not read"):
        check_algorithm(lambda: MetricOnlyLeakMAML(inner_lr=0.4), kinds=("classification",), classification_iterations=20)


@pytest.mark.slow  # 33 s (pytest -m slow)
def test_the_contract_catches_an_algorithm_that_ignores_its_seed():
    with pytest.raises(AssertionError, match="every random choice must flow from the seed"):
        check_deterministic(lambda: seedless_maml(inner_lr=0.4), classification_setting(iterations=20))


# The harness's scoring on its own (harness.run.scoring), eagerly, with stand-ins for built algorithms.
TASK = {
    "support_x": np.zeros((3, 2), "float32"), "support_y": np.arange(3, dtype="int32"),
    "query_x": np.zeros((6, 2), "float32"), "query_y": np.array([0, 1, 2, 0, 1, 2], "int32"),
    "label_set": np.arange(3, dtype="int32"),
}
LOGITS = np.random.default_rng(0).normal(size=(3, 6, 3)).astype("float32")  # [max_steps + 1, Q, ways], max_steps 2


class Returns:
    """A stand-in for a built classification algorithm whose task_eval returns ``returned(task)``."""

    def __init__(self, returned):
        self.objective, self.returned, self.seen = OBJECTIVES["classification"], returned, None

    def task_eval(self, params, state, task, max_steps):
        self.seen = set(task)
        return self.returned(task)


def test_the_harness_scores_each_step_of_the_predictions_without_showing_the_labels():
    algorithm = Returns(lambda task: {"predictions": ops.convert_to_tensor(LOGITS)})
    result = scored_task_eval(algorithm, 2)([], [], TASK)
    assert algorithm.seen == {"support_x", "support_y", "query_x", "label_set"}
    objective = OBJECTIVES["classification"]
    expected = [float(objective.metric(ops.convert_to_tensor(step), TASK["query_y"])) for step in LOGITS]
    np.testing.assert_array_equal(np.asarray(result["metric"]), np.float32(expected))
    assert np.asarray(result["loss"]).shape == (3,)
    np.testing.assert_array_equal(np.asarray(result["predictions"]), LOGITS[-1])


@pytest.mark.parametrize(
    "returned, match",
    [
        pytest.param(lambda task: {"predictions": LOGITS, "metric": np.zeros(3, "float32")},
                     r"returned the keys \['metric', 'predictions'\]: since the harness scores evaluations, task_eval "
                     r"returns only .* the harness computes the metric and the loss from them\. Drop \['metric'\]", id="metric"),
        pytest.param(lambda task: {"predictions": LOGITS[-1]}, r"returned predictions of shape \(6, 3\); expected "
                     r"\{'predictions': \[max_steps \+ 1, Q, outputs\]\} = \[3, 6, outputs\] \(\(3, 6, 3\)", id="last-step-only"),
        pytest.param(lambda task: {"predictions": LOGITS[:, :5]}, r"shape \(3, 5, 3\)", id="queries"),
        pytest.param(lambda task: {"predictions": LOGITS.round().astype("int32")}, r"returned int32 predictions; expected "
                     r"floating-point logits or outputs", id="dtype"),
        pytest.param(lambda task: {"logits": LOGITS}, r"returned the keys \['logits'\]; expected exactly", id="other-key"),
        pytest.param(lambda task: LOGITS, r"Returns\.task_eval returned ndarray; expected a dict", id="not-a-dict"),
        pytest.param(lambda task: {"predictions": LOGITS + task["query_y"][None, :, None]},
                     r"Returns\.task_eval read task\['query_y'\]: task_eval must not read the query labels", id="reads-labels"),
    ],
)
def test_the_harness_refuses_what_breaks_the_contract(returned, match):
    with pytest.raises(ContractError, match=match):
        scored_task_eval(Returns(returned), 2)([], [], TASK)
