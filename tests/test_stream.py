"""The drifting sinusoid stream (issue 18): its drift and jumps, its seed and fingerprint, the stream
metrics, FTML's predict-before-learn order, and online fine-tuning from a MAML initialisation beating
scratch on it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from metabench.datasets.base import RegressionTasks
from metabench.datasets.sinusoid import Sinusoid
from metabench.harness.config import ConfigError, load_config
from metabench.harness.data.episodes import EpisodeError, EpisodeSpec, EvaluationSet
from metabench.harness.data.stream import STREAM_STREAM, drift_params, drifting_stream, stream_task
from metabench.harness.results.records import Evaluation
from metabench.harness.run.stream import FollowTheMetaLeader, OnlineLearner, StreamResult, run_stream, stream_evaluations

SPEC = EpisodeSpec(None, 5, 10)


# ---------------------------------------------------------------------- the stream


def test_drift_reflects_at_both_bounds_and_jumps_replace_the_parameters():
    # amplitude in [0, 5], phase in [0, 3]; by hand:
    # t1: 1 + 0.5 = 1.5, 2 - 2.5 = -0.5 -> 0.5;  t2: 1.5 + 4 = 5.5 -> 4.5, 0.5 + 0.1 = 0.6;
    # t3: jump to (2.5, 1.0);  t4: 2.5 - 3 = -0.5 -> 0.5, 1.0 + 7 = 8 -> fold 8 mod 6 = 2 -> 2.
    steps = [[0.5, -2.5], [4.0, 0.1], [9.0, 9.0], [-3.0, 7.0]]
    jumps = [False, False, True, False]
    fresh = [[0.0, 0.0], [0.0, 0.0], [2.5, 1.0], [0.0, 0.0]]
    params = drift_params([1.0, 2.0], steps, jumps, fresh, [0.0, 0.0], [5.0, 3.0])
    np.testing.assert_allclose(params, [[1.0, 2.0], [1.5, 0.5], [4.5, 0.6], [2.5, 1.0], [0.5, 2.0]], atol=1e-12)


def test_the_stream_draws_what_its_docstring_says():
    family = Sinusoid()
    stream = drifting_stream(family, SPEC, num_tasks=40, seed=7, drift=0.05, jump_probability=0.1)
    low, high = np.array([0.1, 0.0]), np.array([5.0, np.pi])
    rng = np.random.default_rng([7, STREAM_STREAM])
    start = rng.uniform(low, high)
    steps = rng.normal(size=(39, 2)) * 0.05 * (high - low)
    jumps = rng.random(39) < 0.1
    fresh = rng.uniform(low, high, size=(39, 2))
    x = rng.uniform(-5.0, 5.0, size=(40, 15, 1)).astype(np.float32)
    assert 0 < jumps.sum() < 39, "the seed should give some jumps and some drift"
    params = stream.episodes.params
    np.testing.assert_allclose(params[0], start, rtol=1e-6)
    for t in range(1, 40):
        if jumps[t - 1]:
            np.testing.assert_allclose(params[t], fresh[t - 1], rtol=1e-6)
        else:  # a drift step (reflected only near a bound)
            expected = params[t - 1].astype(np.float64) + steps[t - 1]
            inside = (expected > low) & (expected < high)
            np.testing.assert_allclose(params[t][inside], expected[inside], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([stream.episodes.support_x, stream.episodes.query_x], axis=1), x)
    amplitude, phase = params[:, :1, None], params[:, 1:, None]
    np.testing.assert_allclose(stream.episodes.query_y, amplitude * np.sin(stream.episodes.query_x - phase), rtol=1e-5, atol=1e-6)


def test_no_drift_and_no_jumps_is_one_task_and_certain_jumps_are_independent_tasks():
    still = drifting_stream(Sinusoid(), SPEC, num_tasks=10, seed=3, drift=0.0, jump_probability=0.0)
    assert (still.episodes.params == still.episodes.params[0]).all()
    jumpy = drifting_stream(Sinusoid(), SPEC, num_tasks=10, seed=3, drift=0.0, jump_probability=1.0)
    assert len(np.unique(jumpy.episodes.params[:, 0])) == 10
    slow = drifting_stream(Sinusoid(), SPEC, num_tasks=200, seed=3, drift=0.01, jump_probability=0.0)
    assert np.abs(np.diff(slow.episodes.params[:, 0])).max() < 0.01 * 4.9 * 5  # five standard deviations


def test_the_seed_decides_the_stream_and_the_fingerprint_covers_every_input():
    def make(**changes):
        options = dict(num_tasks=20, seed=1, drift=0.02, jump_probability=0.05) | changes
        return drifting_stream(Sinusoid(), SPEC, **options)

    first = make()
    assert make().fingerprint == first.fingerprint
    assert len({first.fingerprint, make(seed=2).fingerprint, make(drift=0.03).fingerprint,
                make(jump_probability=0.2).fingerprint, make(num_tasks=21).fingerprint}) == 5
    for name in ("support_x", "support_y", "query_x", "query_y", "params"):
        array = getattr(first.episodes, name).copy()
        array[-1, ...] += np.float32(0.5)
        nudged = dataclasses.replace(first, episodes=dataclasses.replace(first.episodes, **{name: array}))
        assert nudged.fingerprint != first.fingerprint, name
    first.validate()  # a stream is a regression evaluation set: every rule of the episode format holds


def test_a_stream_of_another_family_is_refused_with_the_fix():
    class Line(Sinusoid.__mro__[1]):  # a RegressionTaskFamily that is not a sinusoid
        name = "line"

    with pytest.raises(EpisodeError, match=r"drifts a sinusoid's amplitude and phase.*dataset.name = \"sinusoid\""):
        drifting_stream(Line(), SPEC, num_tasks=5, seed=0, drift=0.1, jump_probability=0.0)


def test_stream_options_are_validated_before_a_run():
    with pytest.raises(ConfigError, match=r"evaluation.stream_retest=400; expected 1 to evaluation.stream_tasks=300"):
        load_config("sinusoid_stream_scratch", ["evaluation.stream_retest=400"])
    with pytest.raises(ConfigError, match=r"evaluation.stream='online'; allowed values"):
        load_config("sinusoid_stream_scratch", ["evaluation.stream='online'"])


# ---------------------------------------------------------------------- the stream metrics


class _Still(OnlineLearner):
    """Learns nothing: its weights never change."""

    def update(self, task, t):
        pass


def _toy_stream() -> EvaluationSet:
    """Four tasks of one support and two query points, targets chosen by hand."""
    query_y = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 4.0], [1.0, 1.0]], np.float32)[..., None]
    tasks = RegressionTasks(
        params=np.zeros((4, 2), np.float32), support_x=np.zeros((4, 1, 1), np.float32), support_y=np.zeros((4, 1, 1), np.float32),
        query_x=np.zeros((4, 2, 1), np.float32), query_y=query_y,
    )
    return EvaluationSet("sinusoid", "stream", EpisodeSpec(None, 1, 2), 0, tasks)


def _zero_predictor(batch):
    """A non-adapting model that predicts 0, scored as the harness scores: MSE per task at steps 0 and 1."""
    mse = np.mean(batch["query_y"][..., 0] ** 2, axis=1)
    return {"metric": np.stack([mse, mse], axis=1), "predictions": np.zeros_like(batch["query_y"])}


def test_stream_metrics_of_a_non_adapting_learner_equal_the_hand_computed_values():
    stream = _toy_stream()
    result = run_stream(_zero_predictor, _Still(), stream, retest=2)
    evaluations = {e.metric: e for e in stream_evaluations(result, stream, steps=[0, 1], headline=1, last=0.5, notes={})}
    # per task: mean of squared targets = (1 + 9) / 2, (4 + 4) / 2, (0 + 16) / 2, (1 + 1) / 2
    np.testing.assert_allclose(evaluations["stream_mse"].values[1], [5.0, 4.0, 8.0, 1.0])
    np.testing.assert_allclose(evaluations["stream_last_mse"].values[1], [8.0, 1.0])
    np.testing.assert_allclose(evaluations["stream_retest_mse"].values[1], [5.0, 4.0])
    np.testing.assert_allclose(evaluations["stream_forgetting_mse"].values[1], [0.0, 0.0])
    assert {e.fingerprint for e in evaluations.values()} == {stream.fingerprint}
    assert {e.split for e in evaluations.values()} == {"stream"}


def test_forgetting_is_the_retest_minus_the_arrival_loss_and_the_last_part_rounds_up():
    stream = _toy_stream()
    result = StreamResult(np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([[2.5], [1.0]]), np.zeros((4, 2, 1)))
    evaluations = {e.metric: e for e in stream_evaluations(result, stream, steps=[0], headline=0, last=0.3, notes={})}
    np.testing.assert_allclose(evaluations["stream_forgetting_mse"].values[0], [1.5, -1.0])
    np.testing.assert_allclose(evaluations["stream_last_mse"].values[0], [3.0, 4.0])  # ceil(0.3 x 4) = 2 tasks


# ---------------------------------------------------------------------- FTML never peeks


def _maml_session(overrides=()):
    from metabench.harness.engines import get_engine, select_backend
    from metabench.harness.run.prepare import prepare
    from metabench.harness.run.session import open_session

    select_backend("tensorflow")
    config = load_config("sinusoid_stream_ftml", ["evaluation.episodes=2", "evaluation.inner_steps=[0, 1]",
                                                  "evaluation.prequential=false", *overrides])
    prepared = prepare(config)
    session, _, _ = open_session(config, prepared, get_engine("tensorflow", deterministic=True))
    return config, session


class _PeekingFTML(FollowTheMetaLeader):
    """An off-by-one FTML: it also meta-trains on the next task of the stream, before that task is predicted."""

    def __init__(self, algorithm, stream, **options):
        super().__init__(algorithm, **options)
        self.stream = stream

    def update(self, task, t):
        super().update(task, t)
        if t + 1 < len(self.stream):
            super().update(stream_task(self.stream, t + 1), t)


def test_ftml_predicts_each_task_before_it_learns_from_it_and_a_peeking_ftml_is_caught():
    from metabench.harness.run.stream import stream_peeking_evidence

    config, session = _maml_session()
    stream = drifting_stream(Sinusoid(), SPEC, num_tasks=6, seed=1, drift=0.02, jump_probability=0.0)
    algorithm = session.algorithm

    options = dict(meta_lr=0.01, meta_batch_size=8, updates=2, seed=1)
    before = algorithm.get_weights()
    honest = stream_peeking_evidence(algorithm, session.evaluator, lambda s: FollowTheMetaLeader(algorithm, **options), stream, probe=3)
    assert honest is None
    evidence = stream_peeking_evidence(algorithm, session.evaluator, lambda s: _PeekingFTML(algorithm, s, **options), stream, probe=3)
    assert evidence is not None and "stream task 3, made before its query labels are revealed" in evidence
    assert all((a == b).all() for a, b in zip(before, algorithm.get_weights())), "the check restores the weights"


def test_ftml_is_refused_for_an_algorithm_that_does_not_meta_train_on_episodes():
    with pytest.raises(ConfigError, match=r"'pretrain' trains on 'pooled' data, not episodes"):
        _maml_session(["algorithm.name=pretrain"])


def test_a_learner_that_cannot_update_the_algorithms_variables_is_refused_before_the_run():
    with pytest.raises(ConfigError, match=r"algorithm 'mamlpp' meta-learns other variables too"):
        _maml_session(["algorithm.name=mamlpp", "evaluation.stream=finetune"])


def test_no_meta_training_is_allowed_for_scratch_but_not_a_negative_count_or_a_cosine_schedule():
    assert load_config("sinusoid_stream_scratch")["train"]["meta_iterations"] == 0
    with pytest.raises(ConfigError, match=r"train.meta_iterations=-1; expected an integer >= 0"):
        load_config("sinusoid_maml", ["train.meta_iterations=-1"])
    with pytest.raises(ConfigError, match=r'not with train.meta_lr_schedule = "cosine"'):
        load_config("sinusoid_mamlpp", ["train.meta_iterations=0"])


# ---------------------------------------------------------------------- MAML initialisation beats scratch


def _stream_mse(tmp_path, iterations: int) -> np.ndarray:
    from metabench.harness.results.records import STREAM_METRICS
    from metabench.harness.results.store import ResultsStore
    from metabench.harness.run.lifecycle import run

    config = load_config("sinusoid_stream_maml", [
        f"train.meta_iterations={iterations}", "evaluation.episodes=4", "evaluation.inner_steps=[0, 1]",
        "evaluation.prequential=false", "evaluation.stream_tasks=60", "evaluation.stream_retest=10", "engine.deterministic=true",
    ])
    store = ResultsStore(tmp_path / f"{iterations}.sqlite")
    run(config, store=store, show_progress=False, checkpoint_dir=tmp_path / "checkpoints")
    rows = store.episode_metrics(metrics=STREAM_METRICS)
    rows = rows[(rows["metric"] == "stream_mse") & (rows["inner_steps"] == 1)].sort_values("episode")
    return rows["value"].to_numpy()


def test_online_fine_tuning_from_a_maml_initialisation_beats_scratch_on_the_stream(tmp_path):
    maml, scratch = _stream_mse(tmp_path, 400), _stream_mse(tmp_path, 0)
    assert len(maml) == len(scratch) == 60
    difference = scratch - maml  # paired, task by task on the same stream
    assert maml.mean() < 0.6 * scratch.mean(), (maml.mean(), scratch.mean())
    assert difference.mean() > 3 * difference.std(ddof=1) / np.sqrt(len(difference)), "a real margin, not noise"


# ---------------------------------------------------------------------- the report's online section


def _stream_evaluation(metric, values, fingerprint="f" * 64):
    return Evaluation(split="stream", ways=None, shots=5, queries=10, fingerprint=fingerprint, metric=metric, headline_steps=1,
                      values={1: np.asarray(values, np.float64)})


def test_the_report_ranks_and_pairs_online_measures_task_by_task(store):
    from scipy import stats

    from metabench.harness.analysis.leaderboard import build_report
    from metabench.harness.analysis.markdown import render_markdown
    from helpers import record_run

    rng = np.random.default_rng(0)
    good = rng.uniform(0.5, 1.0, size=40)
    bad = good + rng.uniform(0.2, 0.6, size=40)  # worse on every task
    close = good + rng.normal(0.0, 0.01, size=40)
    for algorithm, values in (("maml", good), ("pretrain", bad), ("reptile", close)):
        record_run(store, [_stream_evaluation("stream_mse", values), _stream_evaluation("stream_forgetting_mse", -values)],
                   algorithm=algorithm, config={"seed": 0, "algorithm": {"name": algorithm}})
    report = build_report(store)
    assert report.table.empty, "online measures stay out of the plain leaderboard"
    rows = report.online[report.online["measure"] == "stream_mse"].set_index("algorithm")
    assert rows.loc["maml", "rank"] == 1 and rows.loc["pretrain", "rank"] == 3
    assert rows.loc["pretrain", "vs_best"] == "significantly worse"
    np.testing.assert_allclose(rows.loc["pretrain", "mean"], bad.mean())
    pairs = report.online_pairs[report.online_pairs["measure"] == "stream_mse"]
    pair = pairs[(pairs["a"] == "maml") & (pairs["b"] == "pretrain")].iloc[0]
    np.testing.assert_allclose(pair["mean_difference"], (good - bad).mean())
    assert pair["episodes"] == 40
    np.testing.assert_allclose(pair["wilcoxon_p"], stats.wilcoxon(good - bad).pvalue)
    forgetting = report.online[report.online["measure"] == "stream_forgetting_mse"].set_index("algorithm")
    assert forgetting.loc["pretrain", "rank"] == 1, "lower is better for forgetting too (-bad is the lowest)"
    text = render_markdown(report)
    assert "## Online adaptation" in text and "drifting stream, average MSE over the stream" in text
    assert text.count("Paired comparisons (3 tested pair(s)") == 2
    from metabench.harness.analysis.html import render_html

    assert "Online adaptation</h2>" in render_html(report)
    from metabench.harness.analysis.latex import render_tex

    assert "drifting stream, average MSE over the stream" in render_tex(report)
