"""Every shipped algorithm passes the contract; deliberately broken ones fail it."""

import numpy as np
import pytest
from keras import ops

from metabench.algorithms.finetune import Baseline, BaselinePlusPlus, Pretrain
from metabench.algorithms.maml import MAML
from metabench.algorithms.mamlpp import MAMLPlusPlus
from metabench.algorithms.multitask import MultiTask
from metabench.harness.conformance import algorithm_checks, check_deterministic, check_no_query_label_leak, classification_setting
from metabench.harness.registry import ALGORITHMS

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

CASES = [
    pytest.param(check, id=f"{name}-{test_id}")
    for name, kind, factory, steps in UNDER_TEST
    for test_id, check in algorithm_checks(factory, kinds=(kind,), eval_steps=steps)
]


def test_every_registered_algorithm_is_under_test():
    assert {"maml", "mamlpp", "baseline", "baseline++", "pretrain", "multitask"} <= set(ALGORITHMS.names())
    assert set(ALGORITHMS.names()) <= {name for name, _, _, _ in UNDER_TEST}


@pytest.mark.parametrize("check", CASES)
def test_contract(check):
    check()


class PeekingMAML(MAML):
    """Broken on purpose: its adapted predictions depend on the query labels."""

    def task_eval(self, params, state, task, max_steps):
        results = super().task_eval(params, state, task, max_steps)
        hint = ops.one_hot(ops.cast(task["query_y"], "int32"), int(results["predictions"].shape[-1]))
        results["predictions"] = results["predictions"] + hint
        return results


class SeedlessMAML(MAML):
    """Broken on purpose: perturbs its initial weights from an unseeded generator."""

    def build(self, model, task_kind, engine):
        super().build(model, task_kind, engine)
        rng = np.random.default_rng()  # no seed: different every time
        for variable in model.trainable_variables:
            variable.assign(variable.value + rng.normal(0, 0.05, size=tuple(variable.shape)).astype("float32"))
        return self


def test_the_contract_catches_an_algorithm_that_peeks_at_query_labels():
    with pytest.raises(AssertionError, match="only the query labels"):
        check_no_query_label_leak(lambda: PeekingMAML(inner_lr=0.4), classification_setting(iterations=20))


def test_the_contract_catches_an_algorithm_that_ignores_its_seed():
    with pytest.raises(AssertionError, match="every random choice must flow from the seed"):
        check_deterministic(lambda: SeedlessMAML(inner_lr=0.4), classification_setting(iterations=20))
