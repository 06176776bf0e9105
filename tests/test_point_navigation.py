"""Point navigation (MAML paper 5.3): the environment against hand-computed rollouts, the REINFORCE
estimator against a finite-sample analytic case, and MAML-RL's pieces on the engine."""

import numpy as np
import pytest

import keras
from keras import ops

from metabench.algorithms import policy_gradient as pg
from metabench.datasets import point_navigation as nav
from metabench.harness.engines import get_engine

# Goal (0.3, -0.2), the action (0.5, 0) three times: clipped to (0.1, 0), positions (0.1, 0), (0.2, 0),
# (0.3, 0); distances sqrt(0.08), sqrt(0.05), 0.2.
GOAL = (0.3, -0.2)
HAND_DISTANCES = [np.sqrt(0.08), np.sqrt(0.05), 0.2]


def _env(goal, reward="distance"):
    return np.array([*goal, nav.REWARDS[reward]], dtype=np.float32)


@pytest.mark.parametrize("reward, power", [("distance", 1), ("squared_distance", 2)])
def test_gymnasium_env_matches_hand_computed_rollout(reward, power):
    env = nav.PointNavigationEnv(goal=GOAL, horizon=3, reward=reward)
    observation, info = env.reset(seed=0)
    np.testing.assert_array_equal(observation, [0.0, 0.0])
    total = 0.0
    for t, distance in enumerate(HAND_DISTANCES):
        observation, r, terminated, truncated, _ = env.step(np.array([0.5, 0.0]))
        np.testing.assert_allclose(observation, [0.1 * (t + 1), 0.0], atol=1e-7)
        assert r == pytest.approx(-(distance**power), abs=1e-6)
        assert not terminated
        assert truncated == (t == 2)  # the horizon
        total += r
    assert total == pytest.approx(-sum(d**power for d in HAND_DISTANCES), abs=1e-6)  # -0.70645 or -0.17


def test_early_termination_within_tolerance_and_clipping_both_ways():
    # goal (0.205, 0): positions 0.1 (distance 0.105), then 0.2 (distance 0.005 < 0.01: the episode ends there).
    env = nav.PointNavigationEnv(goal=(0.205, 0.0), horizon=5)
    env.reset()
    _, r1, done1, _, _ = env.step([3.0, 0.0])
    _, r2, done2, truncated, _ = env.step([0.1, -0.004])
    assert (r1, done1) == (pytest.approx(-0.105, abs=1e-6), False)
    assert done2 and not truncated and r2 == pytest.approx(-np.hypot(0.005, 0.004), abs=1e-6)
    # the replay: same rewards, the steps after the end are not live and earn nothing
    actions = np.array([[3.0, 0.0], [0.1, -0.004], [-1.0, 0.05], [0.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    rewards, live = (ops.convert_to_numpy(a) for a in nav.rewards_of_actions(actions, _env((0.205, 0.0))))
    np.testing.assert_allclose(rewards[:2], [r1, r2], atol=1e-6)
    np.testing.assert_array_equal(live, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(rewards[2:], 0)
    # clipping below: (-1, 0.05) moves by (-0.1, 0.05)
    env = nav.PointNavigationEnv(goal=(0.0, 0.0), horizon=5)
    env.reset()
    observation, r, *_ = env.step([-1.0, 0.05])
    np.testing.assert_allclose(observation, [-0.1, 0.05], atol=1e-7)
    assert r == pytest.approx(-np.hypot(0.1, 0.05), abs=1e-6)


def test_horizon_and_vectorized_rollout_agree_with_the_env():
    rng = np.random.default_rng(0)
    goals = np.array([[0.3, -0.2], [0.05, 0.02], [-0.4, 0.45]], dtype=np.float32)
    noise = rng.standard_normal((3, 4, 100, 2)).astype(np.float32)  # 4 rollouts per goal
    log_std = np.log(np.array([0.05, 0.08], dtype=np.float32))

    def mean_fn(env):
        return lambda positions: 0.3 * (env[0:2] - positions)  # a goal-seeking linear policy

    engine = get_engine(keras.backend.backend())
    for g, goal in enumerate(goals):
        env_row = _env(goal)
        for loop in (None, engine.trajectory):
            out = {k: ops.convert_to_numpy(v) for k, v in
                   nav.rollout(mean_fn(ops.convert_to_tensor(env_row)), ops.convert_to_tensor(log_std), env_row, noise[g], loop).items()}
            assert out["actions"].shape == (4, 100, 2) and out["rewards"].shape == (4, 100)
            for n in range(4):
                env = nav.PointNavigationEnv(goal=goal, horizon=100)
                position, _ = env.reset()
                rewards = []
                for t in range(100):
                    np.testing.assert_allclose(out["observations"][n, t], position, atol=1e-5)
                    position, r, terminated, truncated, _ = env.step(out["actions"][n, t])
                    rewards.append(r)
                    if terminated or truncated:
                        break
                assert len(rewards) == int(out["live"][n].sum()) <= 100
                np.testing.assert_allclose(out["rewards"][n, : len(rewards)], rewards, atol=1e-5)
                assert float(ops.convert_to_numpy(nav.returns_of_actions(out["actions"][n], env_row))) == pytest.approx(sum(rewards), abs=1e-4)
    # the far goal is not reached: all 100 steps of its 4 rollouts are live
    assert out["live"].sum() == 400


def test_family_layout_and_fixed_draws():
    family = nav.PointNavigation(reward="squared_distance", horizon=10)
    tasks = family.sample(np.random.default_rng(3), num_tasks=5, num_support=20, num_query=4)
    assert tasks.params.shape == (5, 2) and np.all(np.abs(tasks.params) <= 0.5)
    assert tasks.support_x.shape == (5, 20, nav.ADAPTATION_BATCHES * 20) and tasks.query_x.shape == (5, 4, 20)
    np.testing.assert_array_equal(tasks.support_y[:, 0, :2], tasks.params)
    assert np.all(tasks.support_y[..., 2] == 2.0) and np.all(tasks.query_y[..., 2] == 2.0)
    np.testing.assert_array_equal(tasks.query_y[..., :2], np.broadcast_to(tasks.params[:, None], (5, 4, 2)))
    again = family.sample(np.random.default_rng(3), num_tasks=5, num_support=20, num_query=4)
    np.testing.assert_array_equal(again.query_x, tasks.query_x)
    with pytest.raises(ValueError, match="reward"):
        nav.PointNavigation(reward="manhattan")


def test_reinforce_estimator_finite_sample_analytic():
    """One-step Gaussian bandit: the policy mean mu and log-std s are the parameters; with N fixed samples
    a_i = mu + exp(s) eps_i, rewards r_i, no discounting, the surrogate's gradient in mu is exactly
    -(1/N) sum_i (a_i - mu) / sigma^2 * A_i, with A_i the standardised residuals of the ridge
    baseline's fit. Here the features of a one-step trajectory at the origin are constant, so the
    baseline is the mean reward (up to the ridge term) and A_i = (r_i - mean r) / std r."""
    rng = np.random.default_rng(1)
    n = 8
    mu, log_std = np.array([0.2, -0.1]), np.array([-0.5, 0.3])
    eps = rng.standard_normal((n, 2))
    actions = mu + np.exp(log_std) * eps
    rewards = rng.standard_normal(n)
    observations = np.zeros((n, 1, 2), dtype=np.float32)
    live = np.ones((n, 1), dtype=np.float32)

    adv = ops.convert_to_numpy(pg.advantages(observations, rewards[:, None].astype(np.float32), live, 0.99))[:, 0]
    expected_adv = (rewards - rewards.mean()) / rewards.std()
    np.testing.assert_allclose(adv, expected_adv, atol=1e-3)

    engine = get_engine(keras.backend.backend())

    def loss(params):
        log_probs = pg.gaussian_log_prob(ops.convert_to_tensor(actions[:, None], "float32"), params[0][None, None], params[1])
        return pg.surrogate(log_probs, ops.convert_to_tensor(expected_adv[:, None], "float32"), live), ()

    params = [ops.convert_to_tensor(mu, "float32"), ops.convert_to_tensor(log_std, "float32")]
    (value, _), grads = engine.value_and_grad(loss)(params)
    sigma2 = np.exp(2 * log_std)
    grad_mu = -np.mean((actions - mu) / sigma2 * expected_adv[:, None], axis=0)
    grad_log_std = -np.mean(((actions - mu) ** 2 / sigma2 - 1.0) * expected_adv[:, None], axis=0)
    np.testing.assert_allclose(ops.convert_to_numpy(grads[0]), grad_mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(grads[1]), grad_log_std, rtol=1e-4, atol=1e-5)
    log_probs = -0.5 * np.sum(eps**2, 1) - log_std.sum() - np.log(2 * np.pi)
    assert float(ops.convert_to_numpy(value)) == pytest.approx(-np.mean(log_probs * expected_adv), abs=1e-5)


def test_returns_to_go_and_exact_linear_baseline():
    rewards = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    np.testing.assert_allclose(ops.convert_to_numpy(pg.returns_to_go(rewards, 0.5)), [[1 + 1 + 0.75, 2 + 1.5, 3]], atol=1e-6)
    # returns that are a linear function of the features: the baseline fits them, the advantages vanish
    rng = np.random.default_rng(0)
    obs = rng.uniform(-0.5, 0.5, size=(6, 5, 2)).astype(np.float32)
    features = ops.convert_to_numpy(pg.baseline_features(obs))
    coefficients = rng.standard_normal(features.shape[-1]).astype(np.float32)
    returns = features @ coefficients
    fitted = ops.convert_to_numpy(pg.linear_baseline(obs, returns, np.ones((6, 5), np.float32)))
    np.testing.assert_allclose(fitted, returns, atol=1e-2)


def test_linear_baseline_fits_trajectories_crowded_at_the_goal():
    """A policy that stays near its goal makes the features o, o^2 and 1 almost collinear (the oracle's
    meta-training hit a singular float32 system at iteration 38): the scaled ridge still solves it, and
    fits returns that depend on time alone."""
    rng = np.random.default_rng(1)
    goal = np.array([0.3, -0.2], np.float32)
    obs = (goal + rng.normal(0.0, 1e-4, size=(20, 100, 2))).astype(np.float32)
    t = np.arange(100, dtype=np.float32) / 100.0
    returns = np.broadcast_to(-5.0 * (1.0 - t) + 2.0 * t**2, (20, 100)).astype(np.float32)
    live = np.ones((20, 100), np.float32)
    fitted = ops.convert_to_numpy(pg.linear_baseline(obs, returns, live))
    assert np.all(np.isfinite(fitted))
    np.testing.assert_allclose(fitted, returns, atol=0.05)
    advantage = ops.convert_to_numpy(pg.advantages(obs, returns * 0.0 + 1.0, live, 0.99))
    assert np.all(np.isfinite(advantage))


@pytest.mark.parametrize("algorithm", ["maml_rl", "random_rl"])
def test_shipped_config_runs_through_the_run_core(algorithm):
    """A shrunken shipped config (horizon 10) trains and evaluates through the run core: the harness
    scores the actions with metric "return" on the fixed, fingerprinted goals."""
    from metabench.harness.config import load_config
    from metabench.harness.run.core import train_and_evaluate
    from metabench.harness.run.prepare import prepare
    from metabench.harness.run.session import open_session

    name = "point_navigation_" + algorithm.removesuffix("_rl")
    overrides = ["dataset.horizon=10", "train.meta_iterations=2", "train.meta_batch_size=2", "train.shots=4",
                 "train.queries=3", "evaluation.episodes=3", "evaluation.batch_size=3", "model.hidden=[8]"]
    config = load_config(name, overrides)
    prepared = prepare(config)
    again = prepare(config)
    assert prepared.eval_sets[0].fingerprint == again.eval_sets[0].fingerprint
    session, state, rebuild = open_session(config, prepared, get_engine(keras.backend.backend()))
    before = [w.copy() for w in session.algorithm.get_weights()]
    result = train_and_evaluate(session, state, config, prepared, rebuild=rebuild)
    (evaluation,) = result.evaluations
    assert evaluation.metric == "return" and sorted(evaluation.values) == [0, 1, 2, 3]
    for values in evaluation.values.values():
        assert values.shape == (3,) and np.all(np.isfinite(values)) and np.all(values < 0)
    after = session.algorithm.get_weights()
    unchanged = all(np.array_equal(a, b) for a, b in zip(before, after))
    assert unchanged == (algorithm == "random_rl")


def test_returns_go_through_the_store_and_leaderboard_higher_is_better(store):
    """Metric "return" is stored per episode and ranked higher-is-better on the leaderboard, paired on one fingerprint."""
    from helpers import record_run

    from metabench.harness.analysis.leaderboard import build_report
    from metabench.harness.results.records import Evaluation

    rng = np.random.default_rng(0)
    base = rng.normal(-40.0, 10.0, size=30)
    for algorithm, shift in (("maml_rl", 20.0), ("pretrain_rl", 0.0)):
        values = {0: base, 1: base + shift + rng.normal(0, 2, size=30)}
        evaluation = Evaluation("test", None, 20, 20, "f" * 64, "return", 1, values)
        record_run(store, [evaluation], algorithm=algorithm, dataset="point_navigation",
                   config={"seed": 0, "algorithm": {"name": algorithm}})
    report = build_report(store)
    assert list(report.table["algorithm"]) == ["maml_rl", "pretrain_rl"]  # best (highest return) first
    (pair,) = report.pairs.to_dict("records")
    assert pair["significant"] and abs(pair["mean_difference"]) > 15
