"""Metrics, intervals and slope fits against values worked out by hand."""

import math

import numpy as np
import pytest
import torch

from metarl_bench._src.core.stats import fit_log_log, summarize, summarize_exact


def test_metrics_by_hand():
    estimates = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0], [2.0, -3.0]], dtype=torch.float64)
    truth = torch.tensor([1.0, 0.0], dtype=torch.float64)
    out = summarize(estimates, truth)
    # mean (2, 0): |mean - truth| = 1; sample covariance trace (2/3) + (18/3) = 20/3, so the
    # noise in |mean - truth|^2 is (20/3)/4 = 5/3 > 1: no bias can be told from the noise
    assert out["bias_raw"] == pytest.approx(1.0)
    assert out["variance"] == pytest.approx(20 / 3)
    assert out["bias_noise"] == pytest.approx(math.sqrt(20 / 3 / 4))
    assert out["bias"] == 0.0
    assert out["mse"] == pytest.approx(20 / 3)                # the bias is 0: mse = variance
    assert out["cosine_raw"] == pytest.approx(1.0)
    cosines = [1.0, 1.0, 2 / math.sqrt(13), 2 / math.sqrt(13)]
    assert out["cosine_per_estimate"] == pytest.approx(np.mean(cosines))


def test_noise_corrected_bias_and_pearson_correlation_by_hand():
    # two estimates, mean (3, 1): |mean - truth| = sqrt(10); each coordinate deviates by 1,
    # so the sample variance (denominator 1) is 2 per coordinate, trace 4; noise^2 = 4/2
    estimates = torch.tensor([[4.0, 2.0], [2.0, 0.0]], dtype=torch.float64)
    truth = torch.tensor([0.0, 0.0], dtype=torch.float64)
    out = summarize(estimates, truth, n_boot=50)
    assert out["variance"] == pytest.approx(4.0)
    assert out["bias_raw"] == pytest.approx(math.sqrt(10))
    assert out["bias"] == pytest.approx(math.sqrt(10 - 4.0 / 2))
    assert out["mse"] == pytest.approx(8.0 + 4.0)
    # Pearson over coordinates: mean (3, 1, -1) against truth (1, 0, -1) -> centred (2, 0, -2)
    # and (1, 0, -1): correlation 1 (cosine below 1: the offsets differ)
    x = torch.tensor([[3.0, 1.0, -1.0]] * 3, dtype=torch.float64)
    exact = summarize(x, torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64), n_boot=20)
    assert exact["correlation"] == pytest.approx(1.0) and exact["bias_noise"] == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_intervals_narrow_like_one_over_root_s_and_an_estimated_truth_widens_them(seed):
    """Four times the draws halve an interval (1/sqrt(S); measured ratios 0.46..0.58 over
    these seeds, so 0.35..0.7 fails only a wrong resampling); a truth estimated from 400
    samples adds its own noise to the bias (exactly var/S + var_ref/S_ref) and widens the
    bias interval (measured 1.26..1.65 times), and leaves the variance interval as it was."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.linspace(-1.0, 1.0, 3, dtype=torch.float64)
    many = target + 0.3 + torch.randn(1600, 3, generator=gen, dtype=torch.float64)
    few = many[:400]
    truth_draws = target + torch.randn(400, 3, generator=gen, dtype=torch.float64)

    def width(out, metric):
        return out[f"{metric}_ci"][1] - out[f"{metric}_ci"][0]

    exact_truth = summarize(few, target, seed=seed)
    more_draws = summarize(many, target, seed=seed)
    estimated = summarize(few, truth_draws.mean(0), truth_draws, seed=seed)
    for metric in ("variance", "bias"):
        assert 0.35 < width(more_draws, metric) / width(exact_truth, metric) < 0.7, metric
    trace = lambda x: float(np.trace(np.cov(x.numpy().T)))  # noqa: E731
    assert estimated["bias_noise"] ** 2 == pytest.approx(trace(few) / 400
                                                         + trace(truth_draws) / 400)
    assert width(estimated, "bias") > width(exact_truth, "bias")
    assert width(estimated, "variance") == width(exact_truth, "variance")


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
    # two points always lie on a line: no slope is reported, nor one from a single point
    assert math.isnan(fit_log_log([1, 2], [1.0, 2.0]).slope)
    assert math.isnan(fit_log_log([1], [1.0]).slope)


def test_slopes_skip_values_at_floating_point_noise_and_biases_within_noise():
    from metarl_bench._src.evaluation.evaluate import fit_slopes

    def record(n, bias, variance, ci_low):
        return dict(task="t", estimator="e", n_inner=n, bias=bias, bias_ci=[ci_low, bias],
                    variance=variance, mse=bias ** 2 + variance, truth_norm=1.0)

    # an exactly unbiased estimator: bias at 1e-15 (float noise) at every N
    rows = [record(n, 1e-15 * n, 1.0 / n, 1e-15) for n in (1, 2, 4, 8)]
    slopes = {s["metric"]: s for s in fit_slopes(rows)}
    assert slopes["bias"]["slope"] is None and "0 of 4" in slopes["bias"]["reason"]
    assert slopes["variance"]["slope"] == pytest.approx(-1.0)
    # a bias whose interval reaches zero at two of four N leaves two points: no slope
    rows = [record(n, 0.1 / n, 1.0, 0.0 if n > 2 else 0.05 / n) for n in (1, 2, 4, 8)]
    slopes = {s["metric"]: s for s in fit_slopes(rows)}
    assert slopes["bias"]["slope"] is None and "2 of 4" in slopes["bias"]["reason"]
