"""Pure statistics over per-episode metrics: plain arrays in, small named results out.

Nothing here imports the store, the runner or a backend, so every function works on any array or
CSV column. Conventions follow section 6 of the protocols reference: the few-shot 95% CI is
``1.96 * s / sqrt(n)`` with ``s`` the population standard deviation (``np.std``, ddof 0), as in
the MAML, Closer-Look and ProtoNet code; the t-based alternative uses ``t_{(1+c)/2, n-1}`` and
ddof 1, as in RFS. Both reflect episode-sampling noise of one set of trained models only, not
training-seed variance.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["MeanCI", "mean_ci95", "mean_ci_t"]

_Z95 = 1.96  # the constant the few-shot literature uses, not norm.ppf(0.975) = 1.95996...


class MeanCI(NamedTuple):
    """A mean with a symmetric confidence interval ``[low, high] = mean -/+ half_width``.

    Attributes:
        mean: arithmetic mean of the values, in the values' unit.
        half_width: half the interval's width, in the values' unit (the "±" number).
        low: ``mean - half_width``.
        high: ``mean + half_width``.
        n: number of values.
        std: standard deviation of the values with ``ddof``.
        ddof: delta degrees of freedom of ``std`` (divisor ``n - ddof``).
        method: ``"normal-1.96"`` (few-shot convention) or ``"student-t"``.
    """

    mean: float
    half_width: float
    low: float
    high: float
    n: int
    std: float
    ddof: int
    method: str


def mean_ci95(values, *, ddof: int = 0) -> MeanCI:
    """Mean and the few-shot 95% CI ``1.96 * std(values, ddof) / sqrt(n)``.

    This is the convention of the MAML, Closer-Look and ProtoNet code, which call ``np.std`` and
    so use ddof 0 (the default here); pass ``ddof=1`` for the sample standard deviation. For
    n = 600 episodes the choice changes the width by under 0.1%.

    Args:
        values: 1-D array-like ``[n]`` of finite per-episode metrics (e.g. accuracy fractions).
        ddof: delta degrees of freedom of the standard deviation; ``n`` must exceed it.

    Returns:
        MeanCI with ``method="normal-1.96"``.

    Raises:
        ValueError: ``values`` is empty, not 1-D, not numeric, contains NaN or infinity, or has
            no more than ``ddof`` entries.

    Example::

        >>> round(mean_ci95([0, 1, 1, 1]).half_width, 6)  # 1.96 * 0.4330127 / 2
        0.424352
    """
    array = _mean_ci_iv(values, ddof=ddof, name="mean_ci95")
    return _mean_ci(array, ddof, _Z95, "normal-1.96")


def mean_ci_t(values, confidence: float = 0.95) -> MeanCI:
    """Mean and the Student-t CI ``t_{(1+confidence)/2, n-1} * std(values, ddof=1) / sqrt(n)``.

    Args:
        values: 1-D array-like ``[n]`` of finite values, n >= 2.
        confidence: coverage of the interval, strictly between 0 and 1.

    Returns:
        MeanCI with ``ddof=1`` and ``method="student-t"``.

    Raises:
        ValueError: as :func:`mean_ci95` (with ddof 1, so n >= 2), or ``confidence`` outside (0, 1).
    """
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"Received confidence={confidence!r}; expected a number strictly between 0 and 1, e.g. 0.95.")
    array = _mean_ci_iv(values, ddof=1, name="mean_ci_t")
    critical = float(_scipy_stats.t.ppf((1.0 + confidence) / 2.0, df=array.size - 1))
    return _mean_ci(array, 1, critical, "student-t")


def _mean_ci(array: np.ndarray, ddof: int, critical: float, method: str) -> MeanCI:
    mean = float(np.mean(array))
    std = float(np.std(array, ddof=ddof))
    half_width = critical * std / math.sqrt(array.size)
    return MeanCI(mean, half_width, mean - half_width, mean + half_width, int(array.size), std, ddof, method)


def _mean_ci_iv(values, *, ddof: int, name: str) -> np.ndarray:
    """Validate the inputs of the mean-CI functions; returns ``values`` as a float64 array ``[n]``."""
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ValueError(f"{name}: received ddof={ddof!r}; expected a non-negative integer (0 or 1).")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: values must be numeric; could not convert them to floats ({err}).") from err
    if array.ndim != 1:
        raise ValueError(
            f"{name}: received values of shape {array.shape}; expected a 1-D array [n] of "
            "per-episode values (flatten it, or compute one CI per row)."
        )
    if array.size == 0:
        raise ValueError(f"{name}: received an empty array; need at least one value.")
    bad = ~np.isfinite(array)
    if bad.any():
        nan_count = int(np.isnan(array).sum())
        raise ValueError(
            f"{name}: received {nan_count} NaN and {int(bad.sum()) - nan_count} infinite value(s) "
            f"among {array.size} (first at index {int(np.argmax(bad))}); drop or investigate "
            "them (a diverged episode?) before computing a CI."
        )
    if array.size <= ddof:
        raise ValueError(
            f"{name}: received {array.size} value(s) with ddof={ddof}; the standard deviation "
            f"needs more than {ddof} value(s)."
        )
    return array
