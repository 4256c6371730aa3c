"""Metrics, intervals and slope fits against values worked out by hand."""

import math

import numpy as np
import pytest
import torch

from metarl_bench._src.stats import fit_log_log, summarize, summarize_exact


def test_metrics_by_hand():
    estimates = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0], [2.0, -3.0]], dtype=torch.float64)
    truth = torch.tensor([1.0, 0.0], dtype=torch.float64)
    out = summarize(estimates, truth)
    # mean (2, 0): bias 1; sample covariance trace (2/3) + (18/3) = 20/3
    assert out["bias"] == pytest.approx(1.0)
    assert out["variance"] == pytest.approx(20 / 3)
    # MSE = mean |g - g*|^2 = (0 + 4 + 10 + 10) / 4; equals bias^2 + variance (S-1)/S
    assert out["mse"] == pytest.approx(6.0)
    assert out["mse"] == pytest.approx(out["bias"] ** 2 + out["variance"] * 3 / 4)
    assert out["cosine"] == pytest.approx(1.0)
    cosines = [1.0, 1.0, 2 / math.sqrt(13), 2 / math.sqrt(13)]
    assert out["cosine_per_estimate"] == pytest.approx(np.mean(cosines))
    assert out["bias_noise"] == pytest.approx(math.sqrt(20 / 3 / 4))


def test_intervals_cover_the_truth_at_about_the_stated_rate():
    # 200 seeded experiments of 400 draws from N(mu, I): the 95% intervals of the variance
    # (true value 3) and of the bias (true value |mu - g*| = 0.5) cover in 88%..99% of them
    gen = torch.Generator().manual_seed(0)
    truth = torch.zeros(3, dtype=torch.float64)
    mu = torch.tensor([0.3, 0.4, 0.0], dtype=torch.float64)
    covered = {"variance": 0, "bias": 0}
    for trial in range(200):
        draws = mu + torch.randn(400, 3, generator=gen, dtype=torch.float64)
        out = summarize(draws, truth, seed=trial)
        covered["variance"] += out["variance_ci"][0] <= 3.0 <= out["variance_ci"][1]
        covered["bias"] += out["bias_ci"][0] <= 0.5 <= out["bias_ci"][1]
    assert 176 <= covered["variance"] <= 198, covered
    assert 176 <= covered["bias"] <= 198, covered


def test_unbiased_draws_get_a_bias_interval_reaching_zero():
    gen = torch.Generator().manual_seed(1)
    draws = torch.randn(500, 4, generator=gen, dtype=torch.float64)
    out = summarize(draws, torch.zeros(4, dtype=torch.float64))
    assert out["bias_ci"][0] == 0.0 and out["bias"] > 0


def test_exact_summary_has_point_intervals():
    out = summarize_exact(torch.tensor([1.0, 1.0]), torch.diag(torch.tensor([0.5, 0.25])),
                          torch.tensor([1.0, 0.0]), 0.7)
    assert out["bias"] == 1.0 and out["variance"] == 0.75 and out["mse"] == 1.75
    assert out["bias_ci"] == [1.0, 1.0] and out["cosine"] == pytest.approx(1 / math.sqrt(2))


def test_log_log_slope_of_an_exact_power_law_and_a_noisy_one():
    n = np.array([1, 2, 4, 8, 16, 32])
    fit = fit_log_log(n, 3.0 * n ** -0.5)
    assert fit.slope == pytest.approx(-0.5) and fit.stderr == pytest.approx(0.0, abs=1e-12)
    noisy = fit_log_log(n, 3.0 * n ** -0.5 * np.array([1.1, 0.9, 1.05, 0.95, 1.1, 0.9]))
    assert noisy.stderr > 0 and abs(noisy.slope + 0.5) < 3 * noisy.stderr
    assert math.isnan(fit_log_log([1, 2], [1.0, 2.0]).stderr)
    assert math.isnan(fit_log_log([1], [1.0]).slope)
