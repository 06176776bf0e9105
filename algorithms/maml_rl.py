"""MAML for reinforcement learning (Finn, Abbeel and Levine 2017, section 5.3) and the baselines of its
Figure 5, on the point navigation task family (``metabench.datasets.point_navigation``).

The policy is the model (the registry's ``mlp`` with ``hidden = [100, 100]``: position -> action
mean) and a learned log standard deviation per action dimension, a meta-variable of the algorithm
(initialised to 0, rllab's ``init_std = 1``). Adaptation is vanilla policy gradient: roll out
``shots`` trajectories of the current policy, form the REINFORCE surrogate with a linear feature
baseline fitted on them (``metabench.algorithms.policy_gradient``), take one gradient step of size
``inner_lr``. Each inner step rolls out fresh trajectories (noise block ``k`` of the task's
``support_x``).

The outer objective of MAML-RL (``MAMLRL.task_loss``): the REINFORCE surrogate of ``queries``
trajectories of the *post-update* policy, with the inner step differentiated through (second
order), and the harness's plain Adam on its task mean. This is the estimator of the MAML paper and
code, which the paper optimised with TRPO instead of Adam: like theirs, it treats the pre-update
trajectories as fixed samples (the dependence of their distribution on the meta-parameters, which
DiCE or ProMP add, is dropped), so it is biased but low-variance; we use plain Adam because the
harness's outer loop is Adam on a differentiable loss and the issue allows it.

Scoring: ``task_eval`` returns the raw actions of the ``queries`` evaluation rollouts after 0, 1,
..., ``max_steps`` policy-gradient steps, ``[max_steps + 1, Q, horizon * 2]``; the harness replays
them against the task's environment (``query_y``, which ``task_eval`` never sees) and records the
mean undiscounted return (metric ``"return"``, higher is better).

Baselines (Figure 5 of the paper): ``pretrain_rl`` (one policy trained with REINFORCE on all goals
jointly, then adapted like MAML's), ``random_rl`` (the randomly initialised policy, adapted the same
way; meta-training leaves it unchanged) and ``oracle_rl`` (a policy that is told the goal: it sees
the position relative to the goal instead of the position, trained jointly).
"""

from __future__ import annotations

import keras
from keras import ops

from metabench.algorithms import inner
from metabench.algorithms import policy_gradient as pg
from metabench.algorithms.base import Algorithm, Objective
from metabench.datasets import point_navigation as nav


def _mean_return(predictions, env):
    """Mean return of the actions ``predictions [Q, horizon * 2]`` in ``env [Q, >= 3]``: the harness's metric."""
    horizon = int(predictions.shape[-1]) // 2
    actions = ops.reshape(predictions, (-1, horizon, 2))
    return ops.mean(nav.returns_of_actions(actions, env[:, : nav.ENV_WIDTH]))


RETURN = Objective("regression", lambda p, y: -_mean_return(p, y), _mean_return, "return", True)
"""The objective of point navigation: the metric is the mean return (higher is better), the loss its negative."""


class PolicyGradientRL(Algorithm):
    """Policy-gradient adaptation of a Gaussian MLP policy; subclasses say what meta-training optimises.

    Args:
        inner_lr: step size of a policy-gradient step (0.1 in the MAML paper).
        inner_steps: policy-gradient steps in meta-training (MAML-RL; 1 in the paper).
        eval_inner_lr: step size at evaluation; ``0.0`` means ``inner_lr``.
        discount: the returns' discount (0.99, the MAML code's).
        baseline: fit the linear feature baseline (``False``: advantages are the returns-to-go).
    """

    name = ""
    task_kinds = ("regression",)
    #: the environment it acts in: the conformance suite checks it in that environment's ``reinforcement`` setting
    environment = "point_navigation"
    #: the policy sees the goal (the oracle)
    sees_goal = False
    #: what meta-training optimises, recorded as the "outer" note
    outer = ""

    def __init__(self, *, inner_lr=0.1, inner_steps=1, eval_inner_lr=0.0, discount=0.99, baseline=True):
        super().__init__()
        inner.check_inner_loop(inner_lr, inner_steps, eval_inner_lr)
        if not 0 < discount <= 1:
            raise ValueError(f"Received discount={discount}; expected a value in (0, 1].")
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_lr = eval_inner_lr
        self.discount = discount
        self.baseline = baseline

    def build(self, model, task_kind, engine):
        super().build(model, task_kind, engine)
        if int(model.outputs[0].shape[-1]) != 2 or int(model.inputs[0].shape[-1]) != 2:
            raise ValueError(f"{type(self).__name__} needs a policy network from 2 inputs to 2 outputs (point navigation).")
        self.objective = RETURN
        self.log_std = keras.Variable(ops.zeros((2,)), name="log_std")
        return self

    def meta_variables(self):
        return list(self.model.trainable_variables) + [self.log_std]

    # -- the policy --------------------------------------------------------------------------------

    def _inputs(self, positions, env):
        return positions - env[0:2] if self.sees_goal else positions

    def _means(self, params, positions, env):
        """Action means ``[..., 2]`` at ``positions [..., 2]``."""
        shape = tuple(positions.shape)
        flat = ops.reshape(self._inputs(positions, env), (-1, 2))
        return ops.reshape(self.apply(params[:-1], flat), shape)

    def _rollout(self, params, env, noise):
        fixed = [ops.stop_gradient(p) for p in params]
        return nav.rollout(lambda x: self._means(fixed, x, env), fixed[-1], env, noise, loop=self.engine.trajectory)

    def _surrogate(self, params, trajectories, env):
        advantage = pg.advantages(
            trajectories["observations"], trajectories["rewards"], trajectories["live"], self.discount, baseline=self.baseline
        )
        log_probs = pg.gaussian_log_prob(trajectories["actions"], self._means(params, trajectories["observations"], env), params[-1])
        return pg.surrogate(log_probs, advantage, trajectories["live"])

    # -- adaptation --------------------------------------------------------------------------------

    def _inner_step(self, params, task, step, lr):
        env = task["support_y"][0]
        trajectories = self._rollout(params, env, self._support_noise(task, step))
        (_, _), grads = self.engine.value_and_grad(lambda p: (self._surrogate(p, trajectories, env), ()))(params)
        return [p - lr * g for p, g in zip(params, grads)]

    def _support_noise(self, task, step):
        x = task["support_x"]
        size = int(x.shape[-1]) // nav.ADAPTATION_BATCHES
        start = (step % nav.ADAPTATION_BATCHES) * size
        return ops.reshape(x[:, start : start + size], (int(x.shape[0]), size // 2, 2))

    @staticmethod
    def _query_noise(task):
        x = task["query_x"]
        return ops.reshape(x, (int(x.shape[0]), int(x.shape[1]) // 2, 2))

    def task_eval(self, params, state, task, max_steps):
        lr = self.eval_inner_lr or self.inner_lr
        env = task["support_y"][0]
        fast = [ops.stop_gradient(p) for p in params]
        predictions = []
        for step in range(int(max_steps) + 1):
            if step:
                fast = [ops.stop_gradient(p) for p in self._inner_step(fast, task, step - 1, lr)]
            actions = self._rollout(fast, env, self._query_noise(task))["actions"]
            predictions.append(ops.reshape(actions, (int(actions.shape[0]), -1)))
        return {"predictions": ops.stack(predictions)}

    def _joint_loss(self, params, state, task):
        """REINFORCE on the task's query trajectories of the unadapted policy (joint training over goals)."""
        env = task["support_y"][0]
        trajectories = self._rollout(params, env, self._query_noise(task))
        loss = self._surrogate(params, trajectories, env)
        return loss, ({"return": ops.mean(ops.sum(trajectories["rewards"], axis=-1))}, state)

    def notes(self):
        return {"outer": type(self).outer}


class MAMLRL(PolicyGradientRL):
    """MAML-RL: the post-update REINFORCE surrogate, differentiated through ``inner_steps`` policy-gradient steps."""

    name = "maml_rl"
    outer = "Adam on the post-update REINFORCE surrogate, second order through the inner VPG step"

    def task_loss(self, params, state, task):
        env = task["support_y"][0]
        fast = params
        for step in range(int(self.inner_steps)):
            fast = self._inner_step(fast, task, step, self.inner_lr)
        trajectories = self._rollout(fast, env, self._query_noise(task))
        loss = self._surrogate(fast, trajectories, env)
        return loss, ({"return": ops.mean(ops.sum(trajectories["rewards"], axis=-1))}, state)


class PretrainRL(PolicyGradientRL):
    """One policy trained with REINFORCE on all goals jointly (the paper's "pretrained"), adapted at evaluation."""

    name = "pretrain_rl"
    outer = "Adam on the REINFORCE surrogate of all goals jointly"

    def task_loss(self, params, state, task):
        return self._joint_loss(params, state, task)


class OracleRL(PolicyGradientRL):
    """The oracle: a policy told the goal (it sees its position relative to the goal), trained jointly."""

    name = "oracle_rl"
    sees_goal = True
    outer = "Adam on the REINFORCE surrogate of all goals jointly; the policy sees position - goal"

    def task_loss(self, params, state, task):
        return self._joint_loss(params, state, task)


class RandomRL(PolicyGradientRL):
    """The randomly initialised policy: meta-training leaves it unchanged (its loss has zero gradient)."""

    name = "random_rl"
    outer = "none: the initialisation is kept"

    def task_loss(self, params, state, task):
        loss = ops.sum(ops.stack([0.0 * ops.sum(p) for p in params]))
        return loss, ({"return": ops.zeros(())}, state)
