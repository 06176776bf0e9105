"""The contract every algorithm passes, ours or a plugin's (as scikit-learn's ``check_estimator``).

``algorithm_checks(factory)`` yields ``(name, check)`` pairs, each runnable alone with a readable
test id; ``check_algorithm(factory)`` runs them all. ``factory()`` must return a fresh, unbuilt
algorithm. Each check trains on a tiny learnable task family with a fixed seed:

- ``learns``: after meta-training, adaptation beats no adaptation and chance by stated margins
  (classification: 5-way accuracy at least 0.25 above chance and 0.15 above the unadapted
  accuracy; regression: MSE at most 0.7 times the unadapted MSE; reinforcement: the return after
  the policy-gradient steps at least 5% of its size above the initial policy's unadapted return). For an algorithm that does not
  adapt by inner steps (``adapts_at_test = False``), "unadapted" is the same algorithm without
  meta-training, and the margin over it is 0.05.
- ``deterministic``: two trainings with the same seed give bit-identical per-episode metrics.
- ``no_query_label_leak``: shuffling the query labels never changes the adapted predictions (the
  harness hides them from ``task_eval``; this checks that nothing else carries them in).
- ``query_order``: reordering an episode's queries reorders its predictions and changes nothing
  else. Queries arrive sorted by class (labels ``0..N-1``, each repeated ``Q`` times), so an
  algorithm that predicted from a query's position would score perfectly without any label.
- ``ways_at_evaluation``: an algorithm that claims ``flexible_ways`` beats chance on 3-way
  episodes after 5-way training; one that does not is refused with a clear error.
- ``save_restore``: meta-parameters restored into a fresh instance give identical results.
- ``prequential_no_peeking``: in prequential evaluation (``evaluation.prequential``) a support
  example's prediction, made before its label is used, never depends on that label: after the
  algorithm was shown the episode with other labels it is the same (``harness.run.prequential``;
  an algorithm that memorises labels from one ``task_eval`` call to the next fails it). Untrained:
  it checks the protocol, not what training learned.

Task kinds: ``classification`` (toy images) and ``regression`` (toy lines) for supervised algorithms,
``reinforcement`` for an algorithm that acts in an environment (one that names it in an
``environment`` attribute, as ``algorithms/maml_rl.py`` does with ``"point_navigation"``): a
shrunken point-navigation family (horizon 10), scored by the harness with metric ``return``.
``ways_at_evaluation`` and ``prequential_no_peeking`` do not apply to it (no classes; no labelled
support examples arrive one at a time: adaptation rolls out its own trajectories), so they are not
yielded for it.

Every evaluation is scored by the harness (``harness.run.scoring``): ``task_eval`` gets no query
labels and returns only the query predictions after each inner step. An algorithm that reads the
labels (to adapt on them, or to score itself) or returns anything else fails every check that
evaluates it, with the reason (``ContractError`` reported as the check's ``AssertionError``).

Usage in a plugin's tests::

    @pytest.mark.parametrize("name, check", algorithm_checks(lambda: MyMAML(inner_lr=0.4)))
    def test_my_maml(name, check):
        check()
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterator

import numpy as np

from metabench.datasets.base import ClassPool, RegressionTaskFamily, RegressionTasks
from metabench.harness.config import ConfigError, resolve_config
from metabench.harness.data import episodes as ep
from metabench.harness.engines import get_engine
from metabench.harness.run.core import evaluate, train_and_evaluate
from metabench.harness.run.prepare import Prepared, prepare
from metabench.harness.run.prequential import peeking_evidence
from metabench.harness.run.scoring import ContractError
from metabench.harness.run.session import open_session

CLASSIFICATION_MARGIN_OVER_CHANCE = 0.25
CLASSIFICATION_MARGIN_OVER_UNADAPTED = 0.15
# A random conv embedding already separates the toy classes by nearest prototype (0.61 for ProtoNets'),
# so meta-training an algorithm without inner steps can add less on top of it.
CLASSIFICATION_MARGIN_OVER_UNTRAINED = 0.05
REGRESSION_RATIO = 0.7
# Returns are negative (point navigation's rewards are minus distances): the adapted return must be
# at least this fraction of the unadapted return's size above it.
RETURN_GAIN = 0.05
ENVIRONMENTS = ("point_navigation",)
"""Environments the ``reinforcement`` setting can run."""


def tiny_class_pool(name: str, classes: int = 20, images_per_class: int = 20, size: int = 8, seed: int = 0) -> ClassPool:
    """Learnable toy images ``[classes, images_per_class, size, size, 1]``: a fixed random pattern
    per class plus Gaussian pixel noise (sd 0.25), clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    prototypes = (rng.random((classes, 1, size, size, 1)) > 0.5).astype(np.float32)
    noise = rng.normal(0.0, 0.25, size=(classes, images_per_class, size, size, 1)).astype(np.float32)
    return ClassPool(name, np.clip(prototypes + noise, 0.0, 1.0), tuple(f"{name}{c}" for c in range(classes)))


@dataclasses.dataclass(frozen=True)
class CheckSetting:
    """How the checks train: a task kind, its config tables and the prepared data."""

    kind: str
    config: dict
    prepared: Prepared


class Lines(RegressionTaskFamily):
    """Toy regression tasks ``y = a x + b``, ``a ~ U[-2, 2]``, ``b ~ U[-1, 1]``, ``x ~ U[-2, 2]``: learnable in seconds."""

    name = "lines"

    def sample(self, rng, num_tasks, num_support, num_query):
        params = np.stack([rng.uniform(-2, 2, num_tasks), rng.uniform(-1, 1, num_tasks)], axis=1).astype(np.float32)
        x = self.sample_inputs(rng, num_tasks, num_support + num_query)
        y = self.targets(params, x)
        return RegressionTasks(params, x[:, :num_support], y[:, :num_support], x[:, num_support:], y[:, num_support:])

    def sample_inputs(self, rng, num_tasks, num_points):
        return rng.uniform(-2, 2, size=(num_tasks, num_points, 1)).astype(np.float32)

    def targets(self, params, x):
        return (params[:, 0][:, None, None] * x + params[:, 1][:, None, None]).astype(np.float32)


def _batch_size(pooled: bool, tasks: int) -> int:
    # Pooled pre-training draws images, not tasks: give it as many examples per step as the tasks hold.
    return 64 if pooled else tasks


@functools.lru_cache(maxsize=None)
def classification_setting(
    ways: int = 5, eval_ways: int | None = None, iterations: int = 150, eval_steps: int = 5, pooled: bool = False
) -> CheckSetting:
    train_pool, test_pool = tiny_class_pool("train", seed=0), tiny_class_pool("test", seed=1)
    eval_ways = eval_ways or ways
    spec = ep.EpisodeSpec(ways, 1, 5)
    eval_set = ep.classification_evaluation_set("toy", test_pool, ep.EpisodeSpec(eval_ways, 1, 5), 40, seed=3)
    raw = {
        "seed": 0,
        "dataset": {"name": "sinusoid"},  # unused: the data are prepared here
        "model": {"name": "conv4", "filters": 8},
        "algorithm": {"name": "maml"},  # unused: the factory builds the algorithm
        "train": {"ways": ways, "shots": 1, "queries": 5, "meta_iterations": iterations, "meta_batch_size": _batch_size(pooled, 8), "log_every": iterations},
        "evaluation": {"episodes": 40, "inner_steps": [0, eval_steps], "batch_size": 20},
        "engine": {"deterministic": True},
    }
    prepared = Prepared(train_pool, spec, [eval_set], test_pool, train_pool.image_shape, "classification")
    return CheckSetting("classification", resolve_config(raw), prepared)


@functools.lru_cache(maxsize=None)
def regression_setting(iterations: int = 300, eval_steps: int = 5, pooled: bool = False) -> CheckSetting:
    family = Lines()
    spec = ep.EpisodeSpec(None, 10, 10)
    eval_set = ep.regression_evaluation_set(family, ep.EpisodeSpec(None, 10, 20), 40, seed=3)
    raw = {
        "seed": 0,
        "dataset": {"name": "sinusoid"},
        "model": {"name": "mlp", "hidden": [40, 40]},
        "algorithm": {"name": "maml"},
        "train": {"shots": 10, "queries": 10, "meta_iterations": iterations, "meta_batch_size": 10, "log_every": iterations},
        "evaluation": {"episodes": 40, "inner_steps": [0, eval_steps], "batch_size": 20},
        "engine": {"deterministic": True},
    }
    prepared = Prepared(family, spec, [eval_set], None, (1,), "regression", 1)
    return CheckSetting("regression", resolve_config(raw), prepared)


@functools.lru_cache(maxsize=None)
def reinforcement_setting(iterations: int = 20, eval_steps: int = 3, environment: str = "point_navigation") -> CheckSetting:
    """Point navigation shrunken to seconds: horizon 10, 8 trajectories per step, 20 fixed evaluation goals."""
    if environment not in ENVIRONMENTS:
        raise ConfigError(
            f"Received environment={environment!r}; the contract's reinforcement setting runs {list(ENVIRONMENTS)}. "
            "Check an algorithm of another environment with your own tests."
        )
    raw = {
        "seed": 0,
        "dataset": {"name": environment, "horizon": 10},
        "model": {"name": "mlp", "hidden": [16]},
        "algorithm": {"name": "maml_rl"},  # unused: the factory builds the algorithm
        "train": {"shots": 8, "queries": 8, "meta_iterations": iterations, "meta_batch_size": 4, "log_every": iterations},
        "evaluation": {"episodes": 20, "queries": 8, "inner_steps": [0, eval_steps], "batch_size": 20},
        "engine": {"deterministic": True},
    }
    config = resolve_config(raw)
    return CheckSetting("reinforcement", config, prepare(config))


def _train(factory, setting: CheckSetting, seed: int | None = None, train: bool = True):
    config = dict(setting.config)
    if seed is not None:
        config["seed"] = seed
    engine = get_engine(config["backend"], **config["engine"])
    session, state, rebuild = open_session(config, setting.prepared, engine, algorithm_factory=factory)
    if train:  # the run core, as every run of a config goes (it also evaluates; the checks evaluate again as they need)
        session = train_and_evaluate(session, state, config, setting.prepared, rebuild=rebuild).session
    return session


_TRAINED: dict = {}


def _trained(factory, setting: CheckSetting):
    """One trained session per (factory, setting) and process, shared by the checks that only read it."""
    key = (factory, id(setting))
    if key not in _TRAINED:
        session = _train(factory, setting)
        _TRAINED[key] = (session, _values(session, setting))
    return _TRAINED[key]


def _values(session, setting) -> np.ndarray:
    evaluation = evaluate(session, setting.prepared, setting.config)[0]
    return np.stack([evaluation.values[s] for s in sorted(evaluation.values)])  # [steps, episodes]


def _fails_on_broken_contract(check):
    """``check``, failing with an ``AssertionError`` (the reason included) where ``task_eval`` breaks its contract."""

    @functools.wraps(check)
    def checked(factory, setting: CheckSetting) -> None:
        try:
            check(factory, setting)
        except ContractError as error:
            reason = error
            while isinstance(reason.__context__, ContractError):  # a compiled step re-raises a copy (autograph)
                reason = reason.__context__
            raise AssertionError(f"task_eval broke the contract: {reason}") from error

    return checked


@_fails_on_broken_contract
def check_learns(factory, setting: CheckSetting) -> None:
    _, values = _trained(factory, setting)
    unadapted, adapted = values[0].mean(), values[-1].mean()
    margin = CLASSIFICATION_MARGIN_OVER_UNADAPTED
    if not factory().adapts_at_test:  # step 0 is the method's own prediction: compare with no meta-training instead
        unadapted = _values(_train(factory, setting, train=False), setting)[-1].mean()
        margin = CLASSIFICATION_MARGIN_OVER_UNTRAINED
    if setting.kind == "classification":
        chance = 1.0 / setting.prepared.eval_sets[0].spec.ways
        assert adapted >= chance + CLASSIFICATION_MARGIN_OVER_CHANCE, (
            f"adapted accuracy {adapted:.3f} is not {CLASSIFICATION_MARGIN_OVER_CHANCE} above chance {chance:.3f}"
        )
        assert adapted >= unadapted + margin, f"adapted accuracy {adapted:.3f} is not {margin} above unadapted {unadapted:.3f}"
    elif setting.kind == "reinforcement":
        # against the initial policy, unadapted: the oracle needs no adaptation, the random baseline no training
        initial = _values(_train(factory, setting, train=False), setting)[0].mean()
        assert adapted - initial >= RETURN_GAIN * abs(initial), (
            f"adapted return {adapted:.3f} is not {RETURN_GAIN:.0%} of its size above the initial policy's "
            f"unadapted return {initial:.3f}"
        )
    else:
        assert adapted <= REGRESSION_RATIO * unadapted, f"adapted MSE {adapted:.3f} is not below {REGRESSION_RATIO} x unadapted {unadapted:.3f}"


@_fails_on_broken_contract
def check_deterministic(factory, setting: CheckSetting) -> None:
    _, first = _trained(factory, setting)
    second = _values(_train(factory, setting), setting)
    assert np.array_equal(first, second, equal_nan=True), (
        f"two trainings with seed {setting.config['seed']} differ in {int(np.sum(first != second))} of {first.size} "
        "per-episode values: every random choice must flow from the seed"
    )


@_fails_on_broken_contract
def check_no_query_label_leak(factory, setting: CheckSetting) -> None:
    session, _ = _trained(factory, setting)
    eval_set = setting.prepared.eval_sets[0]
    batch = next(eval_set.batches(20, setting.prepared.eval_pool))
    shuffled = dict(batch)
    rng = np.random.default_rng(0)
    if setting.kind == "classification":
        shuffled["query_y"] = np.stack([rng.permutation(y) for y in batch["query_y"]])
    else:
        shuffled["query_y"] = rng.permutation(batch["query_y"].reshape(-1)).reshape(batch["query_y"].shape) + 1.0
    original, perturbed = session.evaluator(batch)["predictions"], session.evaluator(shuffled)["predictions"]
    assert np.array_equal(original, perturbed), (
        f"adapted predictions changed by up to {np.max(np.abs(original - perturbed)):.3g} when only the query labels "
        "changed: adaptation must use the support set alone"
    )


@_fails_on_broken_contract
def check_query_order(factory, setting: CheckSetting) -> None:
    session, _ = _trained(factory, setting)
    batch = next(setting.prepared.eval_sets[0].batches(20, setting.prepared.eval_pool))
    rng = np.random.default_rng(1)
    order = np.stack([rng.permutation(batch["query_x"].shape[1]) for _ in range(batch["query_x"].shape[0])])  # [B, Q]
    reordered = dict(batch)
    for key in ("query_x", "query_y"):
        reordered[key] = np.take_along_axis(batch[key], order.reshape(order.shape + (1,) * (batch[key].ndim - 2)), axis=1)
    original = np.asarray(session.evaluator(batch)["predictions"])
    permuted = np.asarray(session.evaluator(reordered)["predictions"])
    expected = np.take_along_axis(original, order[..., None], axis=1)
    assert np.allclose(permuted, expected, rtol=1e-4, atol=1e-5), (
        f"reordering the queries changed their predictions by up to {np.max(np.abs(permuted - expected)):.3g}: a "
        "query's prediction must depend on its input and the support set, never on its position (queries "
        "arrive sorted by class, so position gives the label away)"
    )


@_fails_on_broken_contract
def check_ways_at_evaluation(factory, setting: CheckSetting) -> None:
    if setting.kind != "classification":
        return
    other = classification_setting(
        ways=5, eval_ways=3, iterations=setting.config["train"]["meta_iterations"],
        eval_steps=max(setting.config["evaluation"]["inner_steps"]), pooled=factory().training_data == "pooled",
    )
    if not factory().flexible_ways:
        try:
            _train(factory, other, train=False)
        except ConfigError as error:
            assert "ways" in str(error)
            return
        raise AssertionError("an algorithm without flexible_ways accepted 3-way evaluation after 5-way training")
    accuracy = _trained(factory, other)[1][-1].mean()
    assert accuracy >= 1 / 3 + CLASSIFICATION_MARGIN_OVER_CHANCE, f"3-way accuracy {accuracy:.3f} after 5-way training is near chance"


@_fails_on_broken_contract
def check_save_restore(factory, setting: CheckSetting) -> None:
    trained, expected = _trained(factory, setting)
    weights = trained.algorithm.get_weights()
    fresh = _train(factory, setting, seed=setting.config["seed"] + 1, train=False)
    before = _values(fresh, setting)
    fresh.algorithm.set_weights(weights)
    restored = _values(fresh, setting)
    assert not np.array_equal(before, expected), "a fresh instance already matched the trained one; the check proves nothing"
    assert np.array_equal(restored, expected, equal_nan=True), "restored meta-parameters give different results"


def prequential_stream(setting: CheckSetting):
    """``(evaluation set with arrivals, pool)`` the prequential check streams: the setting's own
    regression tasks; for classification 2-shot episodes of its evaluation pool (at 1 shot every
    arrival is a class's first, and none is scored)."""
    if setting.kind == "regression":
        return setting.prepared.eval_sets[0].with_arrivals(), None
    pool, ways = setting.prepared.eval_pool, setting.prepared.eval_sets[0].spec.ways
    return ep.classification_evaluation_set("toy", pool, ep.EpisodeSpec(ways, 2, 5), 4, seed=3).with_arrivals(), pool


@_fails_on_broken_contract
def check_prequential_no_peeking(factory, setting: CheckSetting) -> None:
    session = _train(factory, setting, train=False)  # a property of the protocol, not of training
    eval_set, pool = prequential_stream(setting)
    steps = max(setting.config["evaluation"]["inner_steps"])
    evidence = peeking_evidence(session.algorithm, eval_set, pool, steps=steps, episodes=2)
    assert evidence is None, evidence


CHECKS: tuple[tuple[str, Callable], ...] = (
    ("learns", check_learns),
    ("deterministic", check_deterministic),
    ("no_query_label_leak", check_no_query_label_leak),
    ("query_order", check_query_order),
    ("ways_at_evaluation", check_ways_at_evaluation),
    ("save_restore", check_save_restore),
    ("prequential_no_peeking", check_prequential_no_peeking),
)


def algorithm_checks(
    factory, *, kinds=None, eval_steps: int = 5, classification_iterations: int = 150, regression_iterations: int = 300,
    reinforcement_iterations: int = 20,
) -> Iterator[tuple[str, Callable]]:
    """Yield ``(test id, check)`` for every check and every task kind the algorithm handles (or the
    given ``kinds``); ``eval_steps`` is the adaptation length the checks evaluate. An algorithm with an
    ``environment`` attribute is checked in the ``reinforcement`` setting of that environment."""
    probe = factory()
    environment = getattr(probe, "environment", None)
    kinds = kinds or (("reinforcement",) if environment else probe.task_kinds)
    pooled = probe.training_data == "pooled"
    settings = []
    if "classification" in kinds:
        settings.append(("classification", lambda: classification_setting(iterations=classification_iterations, eval_steps=eval_steps, pooled=pooled)))
    if "regression" in kinds:
        settings.append(("regression", lambda: regression_setting(iterations=regression_iterations, eval_steps=eval_steps, pooled=pooled)))
    if "reinforcement" in kinds:
        settings.append(("reinforcement", lambda: reinforcement_setting(reinforcement_iterations, eval_steps, environment or "point_navigation")))
    for kind, make_setting in settings:
        for name, check in CHECKS:
            if name == "ways_at_evaluation" and kind != "classification":
                continue
            if name == "prequential_no_peeking" and kind == "reinforcement":
                continue
            yield f"{kind}-{name}", (lambda check=check, make_setting=make_setting: check(factory, make_setting()))


def check_algorithm(factory, **options) -> None:
    """Run every check; raises ``AssertionError`` naming the first that fails."""
    for name, check in algorithm_checks(factory, **options):
        try:
            check()
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from error
