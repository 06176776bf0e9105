"""The REINFORCE (vanilla policy gradient) estimator with a linear feature baseline, in ``keras.ops``.

What the MAML code's inner loop computes (rllab's VPG with ``LinearFeatureBaseline``), for one task's
batch of ``N`` trajectories of horizon ``H``:

1. discounted returns-to-go ``G_t = sum_{s >= t} discount^(s - t) r_s`` (:func:`returns_to_go`);
2. a linear baseline fitted to them by ridge regression on the features ``[o, o^2, t/100,
   (t/100)^2, (t/100)^3, 1]`` of the live steps (:func:`linear_baseline`, rllab's features and its
   ``reg_coeff = 1e-5``, applied to the features scaled to unit norm: rllab solves in float64, we
   in float32, where a policy that stays near its goal makes ``o``, ``o^2`` and ``1`` collinear and
   the unscaled system singular);
3. advantages ``A = G - b``, standardised over the live steps (rllab's ``center_adv``; it makes the
   step size independent of the reward's scale);
4. the surrogate ``L = -sum_live(log pi(a_t | o_t) A_t) / (live steps)``, whose gradient is the
   REINFORCE estimate of minus the policy gradient (:func:`surrogate`). Returns, baseline and
   advantages are constants: only ``log pi`` carries a gradient.
"""

from __future__ import annotations

import math

from keras import ops

#: rllab's ``LinearFeatureBaseline`` ridge coefficient
BASELINE_REG = 1e-5


def gaussian_log_prob(actions, means, log_std):
    """``log N(actions; means, diag(exp(log_std)^2))`` summed over the last axis: ``[...]``."""
    z = (actions - means) * ops.exp(-log_std)
    dim = int(actions.shape[-1])
    return -0.5 * ops.sum(ops.square(z), axis=-1) - ops.sum(log_std) - 0.5 * dim * math.log(2.0 * math.pi)


def returns_to_go(rewards, discount):
    """``[N, H]`` discounted returns-to-go of ``rewards [N, H]``."""
    horizon = int(rewards.shape[-1])
    t = ops.arange(horizon, dtype="float32")
    lag = t[None, :] - t[:, None]  # [t, s] = s - t
    weights = ops.where(lag >= 0, ops.power(ops.cast(discount, "float32"), ops.maximum(lag, 0.0)), 0.0)
    return ops.matmul(rewards, ops.transpose(weights))


def baseline_features(observations):
    """rllab's ``LinearFeatureBaseline`` features of ``observations [N, H, D]``: ``[N, H, 2D + 4]``."""
    o = ops.clip(observations, -10.0, 10.0)
    count, horizon = int(o.shape[0]), int(o.shape[1])
    al = ops.arange(horizon, dtype="float32")[None, :, None] / 100.0
    al = ops.broadcast_to(al, (count, horizon, 1))
    return ops.concatenate([o, ops.square(o), al, ops.square(al), al * al * al, ops.ones_like(al)], axis=-1)


def linear_baseline(observations, returns, live, reg=BASELINE_REG):
    """The ridge fit of ``returns [N, H]`` on the features of ``observations`` over the live steps,
    evaluated at every step: ``[N, H]`` (no gradient flows through it).

    The ridge ``reg`` acts on the features scaled to unit norm over the live steps (a feature that is
    zero on every live step stays zero), so the system's condition number is at most about
    ``features / reg`` whatever the policy does: float32 solves it (an unscaled ridge of 1e-5 beside
    a Gram diagonal of ~2,000 does not once the trajectories crowd around the goal)."""
    x = ops.stop_gradient(baseline_features(observations))
    y = ops.stop_gradient(returns)
    m = ops.stop_gradient(live)[..., None]
    flat_x = ops.reshape(x * m, (-1, int(x.shape[-1])))
    flat_y = ops.reshape(y[..., None] * m, (-1, 1))
    norms = ops.sqrt(ops.sum(ops.square(flat_x), axis=0))  # [F]
    norms = ops.where(norms > 0, norms, ops.ones_like(norms))
    scaled = flat_x / norms[None, :]
    gram = ops.matmul(ops.transpose(scaled), scaled) + reg * ops.eye(int(x.shape[-1]))
    coefficients = ops.solve(gram, ops.matmul(ops.transpose(scaled), flat_y)) / norms[:, None]  # [F, 1]
    return ops.squeeze(ops.matmul(x, coefficients), -1)


def advantages(observations, rewards, live, discount, *, baseline=True, normalize=True):
    """Advantages ``[N, H]`` of a batch of trajectories (0 where ``live`` is 0), constants."""
    returns = returns_to_go(rewards, discount)
    values = linear_baseline(observations, returns, live) if baseline else ops.zeros_like(returns)
    advantage = (returns - values) * live
    if normalize:
        count = ops.maximum(ops.sum(live), 1.0)
        mean = ops.sum(advantage) / count
        std = ops.sqrt(ops.sum(ops.square(advantage - mean) * live) / count)
        advantage = (advantage - mean) / (std + 1e-8) * live
    return ops.stop_gradient(advantage)


def surrogate(log_probs, advantage, live):
    """``-sum(live * log_probs * advantage) / sum(live)``: its gradient is minus the REINFORCE estimate."""
    return -ops.sum(log_probs * advantage * live) / ops.maximum(ops.sum(live), 1.0)
