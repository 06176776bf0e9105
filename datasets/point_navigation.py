"""2D point navigation, the meta-reinforcement-learning benchmark of the MAML paper (Finn et al. 2017,
section 5.3, and its code's ``PointEnvRandGoal``).

A point agent starts at the origin of the plane; a task is a goal drawn uniformly from
``[-0.5, 0.5]^2``. An action is a velocity command, clipped to ``[-0.1, 0.1]`` per coordinate and
added to the position. The reward of a step is read after the move: the negative distance to the
goal (``reward="distance"``, the default: the MAML code and its widely used ports) or the negative
squared distance (``reward="squared_distance"``, the paper's text). An episode ends when the agent
is within ``TOLERANCE`` = 0.01 of the goal (Euclidean distance, after the move; that step's reward
counts) or at the horizon (100 steps).

Three forms of one environment, which agree to float32 rounding (``tests/test_point_navigation.py``):

- :class:`PointNavigationEnv`: one episode in NumPy with Gymnasium's ``reset``/``step`` conventions
  (``reset(seed=, options=) -> (observation, info)``, ``step(action) -> (observation, reward,
  terminated, truncated, info)``); the reference the tests check by hand.
- :func:`rollout`: a batch of episodes of a Gaussian policy written with ``keras.ops``, one loop of
  ``horizon`` steps (``loop`` is the engine's ``trajectory``), so the rollouts of a whole meta-batch
  run inside the engine's compiled step. Its randomness is the task's noise (``[N, horizon, 2]``
  standard normals), drawn by the harness from the seed like any episode's data.
- :func:`rewards_of_actions`: the rewards and the live steps of action sequences, replayed open loop
  (the dynamics do not depend on the policy, so actions determine the whole episode). The harness
  scores an evaluation with it, from the actions the algorithm took: algorithms act, the harness
  computes the return.

The task family (:class:`PointNavigation`) lays a task out in the regression arrays the episode
machinery stores and fingerprints (``datasets.base.RegressionTasks``), so the evaluation tasks are a
fixed, fingerprinted set like any other:

- ``params [T, 2]``: the goals.
- ``support_x [T, S, ADAPTATION_BATCHES * horizon * 2]``: the noise of the ``S`` adaptation
  trajectories of each inner step (block ``k % ADAPTATION_BATCHES`` for step ``k``).
- ``support_y [T, S, 3]``: the environment of the task, ``(goal_x, goal_y, reward power)`` on every
  row: what the environment functions read to compute rewards. An algorithm hands it to them and
  never reads the goal itself (the oracle baseline excepted, which is told the goal by design).
- ``query_x [T, Q, horizon * 2]``: the noise of the ``Q`` evaluation rollouts.
- ``query_y [T, Q, horizon * 2]``: the environment again, ``(goal_x, goal_y, power, 0, ...)``,
  padded to the width of the actions an evaluation predicts (``[Q, horizon * 2]``); the harness
  removes it before ``task_eval`` and scores the actions against it.
"""

from __future__ import annotations

import numpy as np

from metabench.datasets.base import RegressionTaskFamily, RegressionTasks

#: the largest velocity command per coordinate
ACTION_BOUND = 0.1
#: an episode ends within this (Euclidean) distance of the goal
TOLERANCE = 0.01
#: the reward choices: the power of the distance in ``reward = -distance ** power``
REWARDS = {"distance": 1.0, "squared_distance": 2.0}
#: noise blocks of adaptation trajectories per task: inner step ``k`` uses block ``k % ADAPTATION_BATCHES``
ADAPTATION_BATCHES = 3
#: width of the environment row of ``support_y``: goal (2) and reward power (1)
ENV_WIDTH = 3


class PointNavigationEnv:
    """One episode of point navigation in NumPy, with Gymnasium's ``reset``/``step`` conventions.

    Example:
        >>> env = PointNavigationEnv(goal=(0.3, -0.2))
        >>> observation, info = env.reset()
        >>> observation, reward, terminated, truncated, info = env.step(np.array([0.5, 0.0]))
        >>> observation, round(reward, 4)   # the action was clipped to 0.1
        (array([0.1, 0. ], dtype=float32), -0.2828)
    """

    def __init__(self, goal=(0.0, 0.0), *, horizon=100, reward="distance"):
        if reward not in REWARDS:
            raise ValueError(f"Received reward={reward!r}; expected one of {list(REWARDS)}.")
        self.goal = np.asarray(goal, dtype=np.float32)
        self.horizon = int(horizon)
        self.reward = reward
        self.position = np.zeros(2, dtype=np.float32)
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        """Back to the origin; ``options={"goal": (x, y)}`` sets a new goal. Returns ``(observation, info)``."""
        if options and "goal" in options:
            self.goal = np.asarray(options["goal"], dtype=np.float32)
        self.position = np.zeros(2, dtype=np.float32)
        self.steps = 0
        return self.position.copy(), {"goal": self.goal.copy()}

    def step(self, action):
        """Move by the clipped ``action``; returns ``(observation, reward, terminated, truncated, info)``."""
        move = np.clip(np.asarray(action, dtype=np.float32), -ACTION_BOUND, ACTION_BOUND)
        self.position = (self.position + move).astype(np.float32)
        self.steps += 1
        distance = float(np.linalg.norm(self.position - self.goal))
        reward = -(distance ** REWARDS[self.reward])
        terminated = distance < TOLERANCE
        truncated = not terminated and self.steps >= self.horizon
        return self.position.copy(), reward, terminated, truncated, {"distance": distance}


def rewards_of_actions(actions, env):
    """Rewards and live steps of action sequences, replayed from the origin (``keras.ops``; NumPy in, tensors out).

    Args:
        actions: ``[..., H, 2]`` the raw actions (clipped here, as the environment does).
        env: ``[..., ENV_WIDTH]`` (or wider; the first three entries are read): goal and reward power.

    Returns:
        ``(rewards [..., H], live [..., H])``: ``live[t]`` is 1 where step ``t`` happened (no earlier
        step ended the episode) and 0 after; ``rewards`` are 0 where ``live`` is 0.
    """
    from keras import ops  # deferred: Keras reads its backend once, at import, after the caller selected it

    actions = ops.convert_to_tensor(actions, "float32")
    env = ops.convert_to_tensor(env, "float32")
    positions = ops.cumsum(ops.clip(actions, -ACTION_BOUND, ACTION_BOUND), axis=-2)  # after each step
    distance = ops.sqrt(ops.sum(ops.square(positions - env[..., None, 0:2]), axis=-1))
    reached = ops.cast(ops.less(distance, TOLERANCE), "float32")
    survived = ops.cumprod(1.0 - reached, axis=-1)  # 1 while no step up to t ended the episode
    live = ops.concatenate([ops.ones_like(survived[..., :1]), survived[..., :-1]], axis=-1)
    rewards = -ops.power(distance, env[..., 2:3]) * live
    return rewards, live


def returns_of_actions(actions, env):
    """Undiscounted return of each action sequence ``[..., H, 2]`` in ``env [..., >= 3]``: ``[...]``."""
    from keras import ops  # deferred: Keras reads its backend once, at import, after the caller selected it

    rewards, _ = rewards_of_actions(actions, env)
    return ops.sum(rewards, axis=-1)


def rollout(mean_fn, log_std, env, noise, loop=None):
    """Roll out ``N`` episodes of the Gaussian policy ``a ~ N(mean_fn(position), exp(log_std)^2)``.

    Args:
        mean_fn: ``positions [N, 2] -> action means [N, 2]``.
        log_std: ``[2]`` the policy's log standard deviation.
        env: ``[ENV_WIDTH]`` the environment (goal and reward power).
        noise: ``[N, H, 2]`` standard normal draws: action ``t`` is ``mean + exp(log_std) * noise[:, t]``.
        loop: ``loop(update, observe, init, steps) -> [steps + 1, ...]``, the engine's ``trajectory``
            (one compiled loop); ``None``: a Python loop (NumPy tests, eager use).

    Returns:
        ``{"observations" [N, H, 2], "actions" [N, H, 2], "rewards" [N, H], "live" [N, H]}``: the
        position each action was chosen at, the raw actions, and the rewards and live steps of
        :func:`rewards_of_actions`. Positions stop changing once an episode ended.
    """
    from keras import ops  # deferred: Keras reads its backend once, at import, after the caller selected it

    noise = ops.convert_to_tensor(noise, "float32")
    env = ops.convert_to_tensor(env, "float32")
    count, horizon = int(noise.shape[0]), int(noise.shape[1])
    std = ops.exp(log_std)
    goal = env[0:2]

    def update(carry, t):
        position, alive, _ = carry
        action = mean_fn(position) + std * ops.take(noise, t, axis=1)
        position = position + alive[:, None] * ops.clip(action, -ACTION_BOUND, ACTION_BOUND)
        distance = ops.sqrt(ops.sum(ops.square(position - goal), axis=-1))
        alive = alive * ops.cast(ops.greater_equal(distance, TOLERANCE), "float32")
        return position, alive, action

    def observe(carry):
        position, _, action = carry
        return ops.concatenate([position, action], axis=-1)  # [N, 4]

    init = (ops.zeros((count, 2)), ops.ones((count,)), ops.zeros((count, 2)))
    if loop is None:
        carry, frames = init, [observe(init)]
        for t in range(horizon):
            carry = update(carry, ops.convert_to_tensor(t, "int32"))
            frames.append(observe(carry))
        trajectory = ops.stack(frames)
    else:
        trajectory = loop(update, observe, init, horizon)  # [H + 1, N, 4]
    trajectory = ops.transpose(trajectory, (1, 0, 2))
    observations, actions = trajectory[:, :-1, 0:2], trajectory[:, 1:, 2:4]
    rewards, live = rewards_of_actions(actions, env[None])
    return {"observations": observations, "actions": actions, "rewards": rewards, "live": live}


class PointNavigation(RegressionTaskFamily):
    """Point navigation tasks: goals uniform in ``goal_range^2``, horizon ``horizon``.

    ``shots`` count the adaptation trajectories of each inner step (20 in the MAML paper) and
    ``queries`` the evaluation rollouts per task; the arrays are described in the module docstring.

    Args:
        goal_range: ``(low, high)`` of each goal coordinate's uniform draw.
        horizon: steps of an episode (100).
        reward: ``"distance"`` (negative distance, the MAML code; the default) or
            ``"squared_distance"`` (negative squared distance, the MAML paper's text).

    Example:
        >>> tasks = PointNavigation().sample(np.random.default_rng(0), num_tasks=4, num_support=20, num_query=10)
        >>> tasks.support_x.shape, tasks.query_y.shape
        ((4, 20, 600), (4, 10, 200))
    """

    name = "point_navigation"
    input_dim = 2
    output_dim = 2

    def __init__(self, *, goal_range=(-0.5, 0.5), horizon=100, reward="distance"):
        if len(goal_range) != 2 or not goal_range[0] < goal_range[1]:
            raise ValueError(f"Received goal_range={tuple(goal_range)}; expected (low, high) with low < high.")
        if int(horizon) < 2 or int(horizon) != horizon:
            raise ValueError(f"Received horizon={horizon}; expected an integer of at least 2.")
        if reward not in REWARDS:
            raise ValueError(f"Received reward={reward!r}; expected one of {list(REWARDS)}.")
        self.goal_range = tuple(float(v) for v in goal_range)
        self.horizon = int(horizon)
        self.reward = reward

    def sample(self, rng, num_tasks, num_support, num_query):
        goals = rng.uniform(*self.goal_range, size=(num_tasks, 2)).astype(np.float32)
        width = 2 * self.horizon
        support_noise = rng.standard_normal((num_tasks, num_support, ADAPTATION_BATCHES * width), dtype=np.float32)
        query_noise = rng.standard_normal((num_tasks, num_query, width), dtype=np.float32)
        env = self.env_rows(goals)  # [T, 3]
        padded = np.zeros((num_tasks, width), dtype=np.float32)
        padded[:, :ENV_WIDTH] = env
        return RegressionTasks(
            params=goals,
            support_x=support_noise,
            support_y=np.repeat(env[:, None], num_support, axis=1),
            query_x=query_noise,
            query_y=np.repeat(padded[:, None], num_query, axis=1),
        )

    def env_rows(self, goals: np.ndarray) -> np.ndarray:
        """``[T, ENV_WIDTH]``: each goal with the reward power."""
        power = np.full((len(goals), 1), REWARDS[self.reward], dtype=np.float32)
        return np.concatenate([np.asarray(goals, dtype=np.float32), power], axis=1)
