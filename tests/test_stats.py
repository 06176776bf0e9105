"""Mean and confidence-interval helpers against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from metabench.harness.analysis.stats import MeanCI, mean_ci95, mean_ci_t


def test_mean_ci95_matches_hand_computed_few_shot_convention():
    # values [0, 1, 1, 1]: mean 0.75; population variance (0.5625 + 3 * 0.0625) / 4 = 0.1875
    result = mean_ci95([0, 1, 1, 1])
    assert result.mean == pytest.approx(0.75)
    assert result.std == pytest.approx(0.4330127, abs=1e-7)
    assert result.half_width == pytest.approx(1.96 * 0.4330127 / 2, abs=1e-7)
    assert result.half_width == pytest.approx(0.4243524, abs=1e-7)
    assert result.low == pytest.approx(0.75 - 0.4243524, abs=1e-7)
    assert result.high == pytest.approx(0.75 + 0.4243524, abs=1e-7)
    assert (result.n, result.ddof, result.method) == (4, 0, "normal-1.96")


def test_mean_ci95_with_ddof_1_uses_the_sample_std():
    # sample variance 0.75 / 3 = 0.25, std 0.5, half width 1.96 * 0.5 / 2 = 0.49
    result = mean_ci95([0, 1, 1, 1], ddof=1)
    assert result.std == pytest.approx(0.5)
    assert result.half_width == pytest.approx(0.49)
    assert result.ddof == 1


def test_mean_ci95_equals_numpy_formula_on_600_episodes():
    values = np.random.default_rng(0).random(600)
    result = mean_ci95(values)
    assert result.mean == pytest.approx(values.mean())
    assert result.half_width == pytest.approx(1.96 * np.std(values) / math.sqrt(600))


def test_mean_ci_t_matches_hand_computed_values():
    # t_{0.975, 3} = 3.182446 (tables); std ddof 1 = 0.5; half width 3.182446 * 0.5 / 2
    result = mean_ci_t([0, 1, 1, 1])
    assert result.mean == pytest.approx(0.75)
    assert result.std == pytest.approx(0.5)
    assert result.half_width == pytest.approx(3.182446 * 0.25, rel=1e-6)
    assert (result.n, result.ddof, result.method) == (4, 1, "student-t")
    # t_{0.95, 3} = 2.353363
    assert mean_ci_t([0, 1, 1, 1], confidence=0.90).half_width == pytest.approx(2.353363 * 0.25, rel=1e-6)


def test_normal_and_t_intervals_agree_closely_at_600_episodes():
    values = np.random.default_rng(1).random(600)
    normal, student = mean_ci95(values), mean_ci_t(values)
    assert normal.mean == student.mean
    assert abs(student.half_width / normal.half_width - 1) < 0.005


def test_result_is_a_named_tuple():
    result = mean_ci95(pd.Series([0.5, 0.5, 0.5]))
    assert isinstance(result, MeanCI)
    mean, half_width, low, high, n, std, ddof, method = result
    assert (mean, half_width, low, high, n, std) == (0.5, 0.0, 0.5, 0.5, 3, 0.0)
    assert result._asdict()["method"] == "normal-1.96"


def test_a_single_value_has_zero_width_with_ddof_0():
    assert mean_ci95([0.8]) == MeanCI(0.8, 0.0, 0.8, 0.8, 1, 0.0, 0, "normal-1.96")


@pytest.mark.parametrize(
    ("values", "kwargs", "message"),
    [
        ([], {}, r"mean_ci95: received an empty array; need at least one value"),
        ([0.5, float("nan"), 0.7], {}, r"received 1 NaN and 0 infinite value\(s\) among 3 \(first at index 1\)"),
        ([0.5, float("inf")], {}, r"received 0 NaN and 1 infinite value\(s\) among 2 \(first at index 1\)"),
        ([[0.5, 0.6], [0.7, 0.8]], {}, r"received values of shape \(2, 2\); expected a 1-D array \[n\]"),
        (0.5, {}, r"received values of shape \(\); expected a 1-D array"),
        (["a", "b"], {}, r"values must be numeric"),
        ([0.5, 0.6], {"ddof": -1}, r"received ddof=-1; expected a non-negative integer"),
        ([0.5], {"ddof": 1}, r"received 1 value\(s\) with ddof=1; the standard deviation needs more than 1"),
    ],
)
def test_mean_ci95_rejects_bad_input_by_name(values, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mean_ci95(values, **kwargs)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, 95, "0.95"])
def test_mean_ci_t_rejects_bad_confidence(confidence):
    expected = rf"Received confidence={confidence!r}; expected a number strictly between 0 and 1"
    with pytest.raises(ValueError, match=expected):
        mean_ci_t([0.1, 0.2, 0.3], confidence=confidence)


def test_mean_ci_t_needs_two_values():
    with pytest.raises(ValueError, match=r"mean_ci_t: received 1 value\(s\) with ddof=1"):
        mean_ci_t([0.3])
