"""Adaptive Guidance Scaling: the distribution of λ, not just one draw."""

import math

import numpy as np
import pytest
import scipy.stats

from pipeline_dalda import AdaptiveGuidanceScaling


DRAWS = 20_000


def scipy_truncnorm(mean, sigma, low, high):
    return scipy.stats.truncnorm((low - mean) / sigma, (high - mean) / sigma, loc=mean, scale=sigma)


@pytest.mark.parametrize(
    "score, num_shots, low, high",
    [(0.9, 1, 0.1, 0.4), (0.31, 4, 0.1, 0.4), (0.3, 1, 0.7, 0.9), (0.05, 2, 0.7, 0.9), (0.6, 16, 0.1, 0.4)],
)
def test_truncnorm_matches_scipy_truncated_normal(score, num_shots, low, high):
    ags = AdaptiveGuidanceScaling()
    samples = ags.sample(np.full(DRAWS, score), num_shots=num_shots, generator=0)

    assert samples.min() >= low and samples.max() <= high
    mean = low + (high - low) * (1 - score)
    expected = scipy_truncnorm(mean, 0.05 * num_shots, low, high)
    assert scipy.stats.kstest(samples, expected.cdf).pvalue > 1e-3
    assert samples.mean() == pytest.approx(expected.mean(), abs=4 * expected.std() / math.sqrt(DRAWS))
    assert samples.std() == pytest.approx(expected.std(), rel=0.05)


def test_one_vectorised_draw_handles_both_branches():
    scores = np.tile([0.1, 0.95], DRAWS // 2)
    samples = AdaptiveGuidanceScaling().sample(scores, num_shots=2, generator=1)
    low_branch, high_branch = samples[scores <= 0.3], samples[scores > 0.3]
    assert low_branch.min() >= 0.7 and low_branch.max() <= 0.9
    assert high_branch.min() >= 0.1 and high_branch.max() <= 0.4
    assert scipy.stats.kstest(high_branch, scipy_truncnorm(0.115, 0.1, 0.1, 0.4).cdf).pvalue > 1e-3


def test_higher_score_gives_lower_mean_scale():
    ags = AdaptiveGuidanceScaling()
    means = [ags.sample(np.full(DRAWS, s), num_shots=1, generator=2).mean() for s in (0.0, 0.2, 0.3, 0.4, 0.7, 1.0)]
    assert means == sorted(means, reverse=True)
    low_means, high_means = means[:3], means[3:]
    assert min(low_means) > max(high_means)


def test_same_seed_same_scales_and_different_seed_differs():
    ags = AdaptiveGuidanceScaling()
    scores = np.linspace(0, 1, 64)
    np.testing.assert_array_equal(ags.sample(scores, 4, generator=7), ags.sample(scores, 4, generator=7))
    assert not np.array_equal(ags.sample(scores, 4, generator=7), ags.sample(scores, 4, generator=8))


@pytest.mark.parametrize("num_shots", [1, 4, 16])
def test_reference_mode_clamps_with_widened_high_bound(num_shots):
    ags = AdaptiveGuidanceScaling(mode="reference")
    high = ags.sample(np.full(DRAWS, 0.5), num_shots=num_shots, generator=3)
    top = 0.4 + 0.1 * math.sqrt(num_shots)
    assert high.min() >= 0.1 and high.max() <= top + 1e-12
    # Clamping piles mass on the bounds, and inside them the draws are the unclamped normal's.
    sigma = 0.05 * num_shots
    normal = scipy.stats.norm(0.1 + 0.3 * 0.5, sigma)
    assert np.mean(high == 0.1) == pytest.approx(normal.cdf(0.1), abs=0.02)
    assert np.mean(high == top) == pytest.approx(normal.sf(top), abs=0.02)

    low = ags.sample(np.full(DRAWS, 0.2), num_shots=num_shots, generator=3)
    assert low.min() >= 0.7 and low.max() <= 0.9
    assert np.mean((low == 0.7) | (low == 0.9)) > 0.05


def test_random_and_fixed_ablations():
    random = AdaptiveGuidanceScaling(mode="random").sample(np.full(DRAWS, 0.5), generator=4)
    assert scipy.stats.kstest(random, scipy.stats.uniform(0, 1).cdf).pvalue > 1e-3
    fixed = AdaptiveGuidanceScaling(mode="fixed", fixed_scale=0.6).sample([0.1, 0.9])
    np.testing.assert_array_equal(fixed, [0.6, 0.6])


def test_given_sigma_overrides_shots():
    ags = AdaptiveGuidanceScaling(sigma=0.01)
    samples = ags.sample(np.full(DRAWS, 0.5), num_shots=16, generator=5)
    assert samples.std() == pytest.approx(scipy_truncnorm(0.25, 0.01, 0.1, 0.4).std(), rel=0.05)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"low_min": 0.95}, "low_min"),
        ({"high_min": 0.5, "high_max": 0.2}, "high_min"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma_per_shot": 0.0}, "sigma_per_shot"),
        ({"mode": "adaptive"}, "mode"),
        ({"mode": "fixed"}, "fixed_scale"),
        ({"low_max": float("nan")}, "low_max"),
    ],
)
def test_invalid_parameters_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        AdaptiveGuidanceScaling(**kwargs)


@pytest.mark.parametrize("num_shots", [0, -2, 1.5, True])
def test_invalid_num_shots_is_named(num_shots):
    with pytest.raises(ValueError, match="`num_shots`"):
        AdaptiveGuidanceScaling().sample([0.5], num_shots=num_shots)


def test_nan_score_is_named_with_its_position():
    with pytest.raises(ValueError, match=r"`clip_scores\[1\]`"):
        AdaptiveGuidanceScaling().sample([0.5, float("nan")])
