"""Prequential (online) evaluation (issue 18): seeded arrival orders in the evaluation set's identity,
predictions made before each arriving label is used, the online metric and the curve by examples seen,
their storage, and the report's figure."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from metabench.datasets.base import ClassPool, RegressionTasks
from metabench.harness.config import ConfigError, config_hash, load_config
from metabench.harness.data import episodes as ep
from metabench.harness.results.records import PREQUENTIAL_METRICS, Evaluation
from helpers import record_run

F_PLAIN, F_PREQ = "a1" * 32, "b2" * 32


# ---------------------------------------------------------------------- toy algorithms


def _algorithms():
    """``(Fixed, Memorizer)``: a non-adapting algorithm (a fixed linear model), and one that peeks: it
    remembers every support label it was ever shown and predicts a remembered example by its label."""
    import keras
    from keras import ops

    from metabench.algorithms.base import Algorithm

    class Fixed(Algorithm):
        name = "fixed"
        adapts_at_test = False

        def task_loss(self, params, state, task):
            predictions = self.apply(params, task["query_x"])
            return self.objective.loss(predictions, task["query_y"]), ({}, state)

        def task_eval(self, params, state, task, max_steps):
            predictions = self.apply(params, task["query_x"], training=False)
            return {"predictions": ops.repeat(predictions[None], int(max_steps) + 1, axis=0)}

    class Memorizer(Fixed):
        """Peeks: remembers (in variables, so it works compiled) every support example it was ever shown
        with its label, and predicts a query it remembers by its latest label."""

        name = "memorizer"
        capacity = 256

        def build(self, model, task_kind, engine):
            super().build(model, task_kind, engine)
            size = int(np.prod(model.input_shape[1:]))
            self.seen_x = keras.Variable(np.full((self.capacity, size), np.nan, np.float32), trainable=False)
            self.seen_y = keras.Variable(np.zeros((self.capacity, 1), np.float32), trainable=False)
            return self

        def task_eval(self, params, state, task, max_steps):
            support_x = ops.reshape(task["support_x"], (int(task["support_x"].shape[0]), -1))
            support_y = ops.reshape(ops.cast(task["support_y"], "float32"), (int(task["support_y"].shape[0]), 1))
            seen_x = ops.concatenate([self.seen_x.value, support_x], axis=0)[-self.capacity:]
            seen_y = ops.concatenate([self.seen_y.value, support_y], axis=0)[-self.capacity:]
            self.seen_x.assign(seen_x)
            self.seen_y.assign(seen_y)
            query = ops.reshape(task["query_x"], (int(task["query_x"].shape[0]), -1))
            match = ops.flip(ops.all(ops.equal(query[:, None, :], seen_x[None]), axis=-1), axis=1)  # latest first
            found = ops.any(match, axis=-1)
            label = ops.take(ops.flip(seen_y, axis=0), ops.argmax(ops.cast(match, "int32"), axis=-1), axis=0)  # [Q, 1]
            predictions = self.apply(params, task["query_x"], training=False)
            if self.objective.kind == "classification":
                label = 10.0 * ops.one_hot(ops.cast(label[:, 0], "int32"), int(predictions.shape[-1]))
            predictions = ops.where(found[:, None], label, predictions)  # peek: a label shown in an earlier call
            return {"predictions": ops.repeat(predictions[None], int(max_steps) + 1, axis=0)}

    return Fixed, Memorizer


def _built(cls, kind: str):
    """``cls()`` built on a one-layer model with known weights: regression ``f(x) = 2 x + 0.5``;
    classification (2-way, 1x1x1 images) logits ``[x - 0.5, 0.5 - x]``, i.e. class 0 iff ``x > 0.5``."""
    import keras

    from metabench.harness.engines import get_engine

    engine = get_engine("tensorflow", deterministic=True)
    if kind == "regression":
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.set_weights([np.array([[2.0]], np.float32), np.array([0.5], np.float32)])
    else:
        model = keras.Sequential([keras.Input((1, 1, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
        model.set_weights([np.array([[1.0, -1.0]], np.float32), np.array([-0.5, 0.5], np.float32)])
    return cls().build(model, kind, engine)


def _regression_set() -> ep.EvaluationSet:
    """Two tasks of 4 support points ``x = 0, 1, 2, 3`` and 3 queries; ``f(x) = 2 x + 0.5`` misses
    support points 1 and 3 and queries 2 and 3 by exactly 1."""
    support_x = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)
    support_y = np.array([[0.5], [3.5], [4.5], [5.5]], np.float32)  # errors 0, -1, 0, +1
    query_x = np.array([[0.5], [1.5], [2.5]], np.float32)
    query_y = np.array([[1.5], [4.5], [4.5]], np.float32)  # errors 0, -1, +1
    tasks = RegressionTasks(np.zeros((2, 2), np.float32), *(np.stack([a, a]) for a in (support_x, support_y, query_x, query_y)))
    eval_set = ep.EvaluationSet("toy", "test", ep.EpisodeSpec(None, 4, 3), 0, tasks)
    return dataclasses.replace(eval_set, arrivals=np.array([[2, 0, 3, 1], [1, 0, 2, 3]], np.int64))


def _classification_set():
    """One 2-way 3-shot episode with 2 queries per class, 1x1x1 images whose value is the pixel."""
    images = np.array([[0.9, 0.2, 0.8, 0.7, 0.1], [0.1, 0.6, 0.3, 0.4, 0.9]], np.float32).reshape(2, 5, 1, 1, 1)
    pool = ClassPool("test", images, ("a", "b"))
    episodes = ep.ClassificationEpisodes(
        classes=np.array([[0, 1]]), rotations=np.zeros((1, 2), np.int64),
        support=np.array([[[0, 1, 2], [0, 1, 2]]]), query=np.array([[[3, 4], [3, 4]]]),
    )  # fmt: skip
    eval_set = ep.EvaluationSet("toy", "test", ep.EpisodeSpec(2, 3, 2), 0, episodes, "none", ep.pool_digest(pool))
    # support rows: class 0 (label 0) 0.9 0.2 0.8, class 1 (label 1) 0.1 0.6 0.3; row 3 (class 1) and row 0 first
    return dataclasses.replace(eval_set, arrivals=np.array([[3, 0, 1, 4, 2, 5]], np.int64)), pool


def _prequential(algorithm, eval_set, pool, batch_size=1, max_steps=1):
    from metabench.harness.run.prequential import prequential_values
    from metabench.harness.run.scoring import scored_task_eval

    engine = algorithm.engine
    plain = engine.make_evaluator(scored_task_eval(algorithm, max_steps), algorithm.meta_variables(), algorithm.state_variables())
    online, seen = prequential_values(algorithm, plain, eval_set, pool, batch_size=batch_size, max_steps=max_steps, headline=1)
    batches = list(eval_set.batches(batch_size, pool))
    query = np.concatenate([plain(batch)["metric"][:, 1] for batch in batches])
    return online, seen, query


# ---------------------------------------------------------------------- the metrics, by hand


def test_the_online_mse_of_a_non_adapting_algorithm_is_its_plain_mse_computed_by_hand():
    Fixed, _ = _algorithms()
    online, seen, query = _prequential(_built(Fixed, "regression"), _regression_set(), None, batch_size=1)  # 2 batches
    # task 0 arrives as points 2, 0, 3, 1: point 2 is the warm-up; 0, 3, 1 are predicted first: errors 0, 1, -1
    # task 1 arrives as points 1, 0, 2, 3: 0, 2, 3 are predicted first: errors 0, 0, 1
    np.testing.assert_allclose(online, [[2 / 3, 2 / 3], [1 / 3, 1 / 3]], rtol=1e-6)  # [episodes, steps 0..1]
    np.testing.assert_allclose(query, [2 / 3, 2 / 3], rtol=1e-6)  # the queries: errors 0, -1, 1
    np.testing.assert_allclose(online[0], query[0], rtol=1e-6)
    np.testing.assert_allclose(seen, np.full((2, 4), 2 / 3), rtol=1e-6)  # n = 1..4 seen: it never adapts


def test_the_online_accuracy_of_a_non_adapting_classifier_is_its_plain_accuracy_computed_by_hand():
    Fixed, _ = _algorithms()
    eval_set, pool = _classification_set()
    online, seen, query = _prequential(_built(Fixed, "classification"), eval_set, pool)
    # class 0 iff x > 0.5. Warm-up: rows 3 and 0 (one per class). Scored: rows 1 (0.2, label 0: wrong),
    # 4 (0.6, label 1: wrong), 2 (0.8, label 0: right), 5 (0.3, label 1: right) -> 2 of 4.
    np.testing.assert_allclose(online, [[0.5, 0.5]])
    # queries: 0.7 and 0.1 of class 0 (right, wrong), 0.4 and 0.9 of class 1 (right, wrong) -> 2 of 4
    np.testing.assert_allclose(query, [0.5])
    np.testing.assert_allclose(seen, [[0.5] * 5])  # n = 2..6 seen


# ---------------------------------------------------------------------- no prediction sees its own label


def test_each_arrival_is_predicted_from_the_arrivals_before_it_its_label_withheld():
    from metabench.harness.run.prequential import arrival_batch, in_arrival_order
    from metabench.harness.run.scoring import HIDDEN_KEYS

    eval_set = _regression_set()
    batch = next(eval_set.batches(2))
    ordered = in_arrival_order(batch, eval_set.arrivals)
    for e, order in enumerate(eval_set.arrivals):
        np.testing.assert_array_equal(ordered["support_x"][e], batch["support_x"][e][order])
    for t in range(eval_set.warmup, eval_set.support_size):
        task = arrival_batch(ordered, t)
        for e, order in enumerate(eval_set.arrivals):
            np.testing.assert_array_equal(task["support_x"][e], batch["support_x"][e][order[:t]])  # the first t only
            np.testing.assert_array_equal(task["query_x"][e, 0], batch["support_x"][e][order[t]])  # the next one
            np.testing.assert_array_equal(task["query_y"][e, 0], batch["support_y"][e][order[t]])  # the harness's only
            assert not any(np.array_equal(row, task["query_x"][e, 0]) for row in task["support_x"][e])
    assert "query_y" in HIDDEN_KEYS  # which task_eval never sees


def test_the_no_peeking_check_catches_an_algorithm_that_predicts_an_arrival_from_its_own_label():
    from metabench.harness.run.prequential import peeking_evidence

    Fixed, Memorizer = _algorithms()
    eval_set, pool = _classification_set()
    assert peeking_evidence(_built(Fixed, "classification"), eval_set, pool, steps=1) is None
    evidence = peeking_evidence(_built(Memorizer, "classification"), eval_set, pool, steps=1)
    assert evidence is not None and "episode 0: the prediction of support arrival 3" in evidence, evidence
    assert peeking_evidence(_built(Fixed, "regression"), _regression_set(), None, steps=1) is None
    assert peeking_evidence(_built(Memorizer, "regression"), _regression_set(), None, steps=1) is not None


def test_the_conformance_check_passes_maml_and_fails_the_peeking_algorithm():
    from metabench.algorithms.maml import MAML
    from metabench.harness.testing.conformance import check_prequential_no_peeking, regression_setting

    _, Memorizer = _algorithms()
    setting = regression_setting()
    check_prequential_no_peeking(lambda: MAML(inner_lr=0.01), setting)
    with pytest.raises(AssertionError, match=r"made before its label is used, changed"):
        check_prequential_no_peeking(Memorizer, setting)


# ---------------------------------------------------------------------- the evaluation set's identity


def test_arrival_orders_are_seeded_permutations_with_one_example_per_class_first():
    spec = ep.EpisodeSpec(5, 4, 3)
    order = ep.arrival_order(spec, 50, seed=1)
    assert order.shape == (50, 20) and order.dtype == np.int64
    np.testing.assert_array_equal(np.sort(order, axis=-1), np.tile(np.arange(20), (50, 1)))
    np.testing.assert_array_equal(np.sort(order[:, :5] // 4, axis=-1), np.tile(np.arange(5), (50, 1)))
    np.testing.assert_array_equal(order, ep.arrival_order(spec, 50, seed=1))
    assert not np.array_equal(order, ep.arrival_order(spec, 50, seed=2))
    assert len({tuple(row) for row in order}) == 50
    regression = ep.arrival_order(ep.EpisodeSpec(None, 10, 5), 3, seed=1)
    np.testing.assert_array_equal(np.sort(regression, axis=-1), np.tile(np.arange(10), (3, 1)))


def _sinusoid_set():
    from metabench.datasets.sinusoid import Sinusoid

    return ep.regression_evaluation_set(Sinusoid(), ep.EpisodeSpec(None, 5, 10), 6, seed=1)


def test_the_arrival_order_enters_the_fingerprint_only_when_present():
    plain = _sinusoid_set()
    before = plain.fingerprint
    prequential = plain.with_arrivals()
    assert prequential.fingerprint != before
    assert prequential.without_arrivals().fingerprint == before == plain.index_digest  # unchanged when off
    other = dataclasses.replace(prequential, arrivals=prequential.arrivals[:, ::-1].copy())
    assert other.fingerprint not in (before, prequential.fingerprint)
    assert "prequential" in prequential.identity() and "prequential" not in plain.identity()


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_episode_files_carry_the_arrival_order(tmp_path, suffix):
    prequential = _sinusoid_set().with_arrivals()
    loaded = ep.EvaluationSet.load(prequential.save(tmp_path / f"set{suffix}"))
    np.testing.assert_array_equal(loaded.arrivals, prequential.arrivals)
    assert loaded.fingerprint == prequential.fingerprint
    plain = ep.EvaluationSet.load(_sinusoid_set().save(tmp_path / f"plain{suffix}"))
    assert plain.arrivals is None and plain.fingerprint == _sinusoid_set().fingerprint


def _tampered(tmp_path, edit, spec=ep.EpisodeSpec(3, 2, 2)):
    images = np.zeros((6, 6, 1, 1, 1), np.float32)
    pool = ClassPool("test", images, tuple(f"c{i}" for i in range(6)))
    eval_set = ep.classification_evaluation_set("toy", pool, spec, 4, seed=1).with_arrivals()
    payload = json.loads(eval_set.save(tmp_path / "valid.json").read_text())
    arrivals = payload["arrays"]["arrivals"]["data"]
    edit(arrivals)
    reloaded = ep.EvaluationSet(
        "toy", "test", spec, 1, eval_set.episodes, "none", payload["pool_digest"], {}, 6, 6, np.array(arrivals, np.int64)
    )
    payload["fingerprint"] = ep.compose_fingerprint(reloaded.index_digest, {})  # re-hashed: only the rule can tell
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(payload))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a[2].__setitem__(1, a[2][0]), r"episode 2 breaks rule 'arrivals': arrivals .* must be a permutation"),
        (lambda a: a[1].__setitem__(slice(None), [0, 1, 2, 3, 4, 5]),  # classes 0, 0, 1 first
         r"episode 1 breaks rule 'arrivals': the first 3 arrivals \[0, 1, 2\] must be one support row of each class"),
        (lambda a: a.pop(), r"breaks rule 'arrivals': array 'arrivals' has dtype <i8 and shape \(3, 6\); expected .* \(4, 6\)"),
    ],
)
def test_a_broken_arrival_order_is_refused_by_rule(tmp_path, edit, message):
    path = _tampered(tmp_path, edit)
    with pytest.raises(ep.EpisodeFileError, match=message) as caught:
        ep.EvaluationSet.load(path)
    assert caught.value.rule == "arrivals"


# ---------------------------------------------------------------------- the config option


def test_prequential_is_hash_neutral_off_and_part_of_the_recipe_on():
    config = load_config("quickstart")
    assert config["evaluation"]["prequential"] is False
    without = json.loads(json.dumps(config))
    del without["evaluation"]["prequential"]
    assert config_hash(config) == config_hash(without)
    assert config_hash(load_config("quickstart", ["evaluation.prequential=true"])) != config_hash(config)


def test_prepare_builds_the_prequential_sets_and_refuses_one_shot_streams():
    from metabench.harness.run.prepare import prepare

    plain = prepare(load_config("quickstart", ["evaluation.episodes=5"]))
    assert plain.prequential_sets == []
    on = prepare(load_config("quickstart", ["evaluation.episodes=5", "evaluation.prequential=true"]))
    assert [s.fingerprint for s in on.eval_sets] == [s.fingerprint for s in plain.eval_sets]
    assert [s.without_arrivals().fingerprint for s in on.prequential_sets] == [s.fingerprint for s in plain.eval_sets]
    assert all(s.arrivals is not None for s in on.prequential_sets)
    with pytest.raises(ConfigError, match=r"evaluation.prequential = true .* one support point"):
        prepare(load_config("quickstart", ["evaluation.prequential=true", "evaluation.shots=[1]"]))


# ---------------------------------------------------------------------- through the run core, into the store


def test_the_run_core_records_the_prequential_evaluations_under_the_arrival_fingerprint():
    from metabench.harness.config import resolve_config
    from metabench.harness.run.core import evaluate
    from metabench.harness.testing.conformance import Lines, _train, regression_setting

    Fixed, _ = _algorithms()
    setting = regression_setting()
    raw = json.loads(json.dumps(setting.config))
    raw["evaluation"].update(prequential=True, inner_steps=[0, 2], episodes=8)
    config = resolve_config(raw)
    plain_set = ep.regression_evaluation_set(Lines(), ep.EpisodeSpec(None, 3, 5), 8, seed=3)
    prepared = dataclasses.replace(setting.prepared, eval_sets=[plain_set])  # prequential_sets: made by evaluate
    session = _train(Fixed, dataclasses.replace(setting, config=config, prepared=prepared), train=False)
    evaluations = evaluate(session, prepared, config)
    assert [e.metric for e in evaluations] == ["mse", "online_mse", "mse_by_seen"]
    plain, online, seen = evaluations
    assert plain.fingerprint == plain_set.fingerprint
    assert online.fingerprint == seen.fingerprint == plain_set.with_arrivals().fingerprint != plain.fingerprint
    assert sorted(online.values) == [0, 2] and online.headline_steps == 2
    assert sorted(seen.values) == [1, 2, 3] and seen.headline_steps == 3
    for values in seen.values.values():  # a non-adapting model: the curve is flat at its query MSE
        np.testing.assert_allclose(values, plain.values[2], rtol=1e-5)
    assert "prequential" in online.notes and "prequential" in seen.notes


def _prequential_run(store, algorithm, online_values, seen_values, seed=0):
    plain = Evaluation("test", None, 5, 10, F_PLAIN, "mse", 1, {0: np.full(3, 2.0), 1: np.full(3, 1.0)})
    online = Evaluation("test", None, 5, 10, F_PREQ, "online_mse", 1, {0: np.full(3, 3.0), 1: np.asarray(online_values)})
    seen = Evaluation("test", None, 5, 10, F_PREQ, "mse_by_seen", 5,
                      {n: np.asarray(seen_values) / n for n in range(1, 6)})  # fmt: skip
    config = {"seed": seed, "algorithm": {"name": algorithm}}
    return record_run(store, [plain, online, seen], algorithm=algorithm, seed=seed, config=config)


def test_the_store_keeps_prequential_rows_apart_unless_asked(store):
    _prequential_run(store, "maml", [1.0, 2.0, 3.0], [5.0, 5.0, 5.0])
    assert set(store.episode_metrics()["metric"]) == {"mse"}
    assert set(store.episode_metrics(metrics=None)["metric"]) == {"mse", "online_mse", "mse_by_seen"}
    assert set(store.episode_metrics(metrics=PREQUENTIAL_METRICS)["metric"]) == {"online_mse", "mse_by_seen"}
    with pytest.raises(ValueError, match="expected one of"):
        Evaluation("test", None, 5, 10, F_PLAIN, "f1", 1, {1: np.zeros(2)})


def test_bundles_carry_the_prequential_results(store, tmp_path):
    from metabench.harness.results.bundles import export_runs, import_bundles
    from metabench.harness.results.store import ResultsStore

    _prequential_run(store, "maml", [1.0, 2.0, 3.0], [5.0, 5.0, 5.0])
    export_runs(store, None, tmp_path / "runs.jsonl.gz")
    with ResultsStore(tmp_path / "copy.sqlite") as copy:
        import_bundles(copy, tmp_path / "runs.jsonl.gz")
        columns = ["metric", "fingerprint", "inner_steps", "episode", "value"]
        original, copied = store.episode_metrics(metrics=None)[columns], copy.episode_metrics(metrics=None)[columns]
    assert original.equals(copied)


def test_the_report_plots_the_curve_per_setting_and_keeps_the_leaderboard_plain(store, tmp_path):
    from metabench.harness.analysis.leaderboard import build_report
    from metabench.harness.analysis.report import write_report

    _prequential_run(store, "maml", [1.0, 2.0, 3.0], [5.0, 5.0, 5.0])
    _prequential_run(store, "reptile", [2.0, 2.0, 2.0], [10.0, 10.0, 10.0])
    report = build_report(store)
    assert set(report.table["metric"]) == {"mse"} and len(report.table) == 2
    curve = report.prequential
    assert sorted(curve["label"].unique()) == ["maml", "reptile"] and set(curve["metric"]) == {"mse"}
    maml = curve[curve["label"] == "maml"].sort_values("seen")
    assert maml["seen"].tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(maml["mean"], [5.0 / n for n in range(1, 6)])
    np.testing.assert_allclose(maml["online_mean"], 2.0)
    assert set(maml["online_steps"]) == {1} and set(maml["fingerprint"]) == {F_PREQ}
    written = {p.name for p in write_report(store, tmp_path / "report")}
    assert "prequential.csv" in written
    assert sum(name.startswith("prequential_") and name.endswith(".svg") for name in written) == 1
    markdown = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "prequential, query metric vs support examples seen" in markdown and "online_mse" not in markdown


def test_a_report_without_prequential_results_writes_no_such_files(store, tmp_path):
    from metabench.harness.analysis.report import write_report

    record_run(store, [Evaluation("test", None, 5, 10, F_PLAIN, "mse", 1, {1: np.full(3, 1.0)})])
    written = {p.name for p in write_report(store, tmp_path / "report")}
    assert not any("prequential" in name for name in written)


def test_episodes_export_writes_the_arrival_order_of_a_prequential_config(tmp_path, capsys):
    from metabench.harness.cli.main import main
    from metabench.harness.run.prepare import prepare

    overrides = ["evaluation.prequential=true", "evaluation.episodes=5"]
    args = [arg for override in overrides for arg in ("--set", override)]
    assert main(["episodes", "export", "quickstart", *args, "--shots", "5", "--out", str(tmp_path / "set.json")]) == 0
    assert "arrivals" in capsys.readouterr().out
    loaded = ep.EvaluationSet.load(tmp_path / "set.json")
    expected = next(s for s in prepare(load_config("quickstart", overrides)).prequential_sets if s.spec.shots == 5)
    np.testing.assert_array_equal(loaded.arrivals, expected.arrivals)
    assert loaded.fingerprint == expected.fingerprint
