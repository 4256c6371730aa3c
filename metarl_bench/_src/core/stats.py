"""Statistics of a batch of estimates against a truth (docs/metrics.md).

For S estimates g_1..g_S with mean m and a truth g*:

* ``variance``: trace of the sample covariance (denominator S - 1, unbiased);
* ``bias_raw`` = |m - g*|, which overstates the true bias by sampling noise: its square has
  expectation bias^2 + noise^2 with ``bias_noise`` = sqrt(variance/S + the truth's own
  variance of the mean when the truth is estimated);
* ``bias`` = sqrt(max(bias_raw^2 - bias_noise^2, 0)), the noise-corrected estimate of the true
  bias, which is what tables, plots and slopes use;
* ``mse`` = bias^2 + variance: the same identity as for exact moments, so ``mse`` is never below
  ``variance`` (with the clamp at 0 it is the noise-corrected mean squared error);
* ``cosine`` and ``correlation`` (Pearson, over coordinates) of m with g*, bootstrap
  bias-corrected (2 x raw - mean over resamples: noise in m pulls both towards 0), with the
  uncorrected values as ``cosine_raw`` and ``correlation_raw``;
* ``cosine_per_estimate``: the mean cosine of single estimates with g*.

Intervals (``<metric>_ci``, 95%) come from one bootstrap over the S estimates (and over the
truth's samples when it is estimated), all resamples at once as a matrix of multinomial
counts: the basic (reverse-percentile) interval of the squared bias and of the cosine and
correlation (which corrects the same noise shift as the point estimates), percentile
intervals for the others. An interval that a skewed bootstrap distribution would leave just
beside its point estimate is widened to reach it, so a point always lies in its interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

#: Metrics with an interval, in table order.
METRICS = ("bias", "variance", "mse", "cosine", "correlation", "cosine_per_estimate")


def _resample_weights(n: int, n_boot: int, generator: torch.Generator,
                      like: torch.Tensor) -> torch.Tensor:
    """(n_boot, n) bootstrap counts divided by n: each row is a resample's weights."""
    index = torch.randint(n, (n_boot, n), generator=generator)
    counts = torch.zeros(n_boot, n, dtype=like.dtype).scatter_add_(
        1, index, torch.ones(n_boot, n, dtype=like.dtype))
    return (counts / n).to(like.device)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over the last axis (NaN with fewer than 2 coordinates)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def _contain(point: float, lo: float, hi: float) -> list[float]:
    if math.isnan(point):
        return [lo, hi]
    return [min(lo, point), max(hi, point)]


def summarize(estimates: torch.Tensor, truth: torch.Tensor,
              truth_samples: torch.Tensor | None = None, *, n_boot: int = 200,
              confidence: float = 0.95, seed: int = 0) -> dict[str, float | list[float]]:
    """Metrics of ``estimates`` (S, *P) against ``truth`` (*P), with bootstrap intervals.

    ``truth_samples`` (S_ref, *P): the samples a truth was estimated from (its mean is
    ``truth``); they are resampled too, so the intervals include the truth's own error.
    """
    x = estimates.detach().reshape(estimates.shape[0], -1).double()
    g = truth.detach().reshape(-1).double().to(x.device)
    n = x.shape[0]
    correction = n / max(n - 1, 1)
    center = x.mean(0)
    centered = x - center        # variances from centred data: no cancellation when tiny
    sq_centered = (centered * centered).sum(-1)
    variance = float(sq_centered.mean() * correction)
    cos = torch.nn.functional.cosine_similarity(x, g.unsqueeze(0), dim=-1)

    generator = torch.Generator().manual_seed(seed)
    weights = _resample_weights(n, n_boot, generator, x)
    ref_noise_sq = 0.0
    if truth_samples is not None:
        ref = truth_samples.detach().reshape(truth_samples.shape[0], -1).double().to(x.device)
        n_ref = ref.shape[0]
        ref_centered = ref - ref.mean(0)
        ref_sq_centered = (ref_centered * ref_centered).sum(-1)
        ref_noise_sq = float(ref_sq_centered.sum()) / max(n_ref - 1, 1) / n_ref
        ref_weights = _resample_weights(n_ref, n_boot, generator, ref)
        ref_shift = ref_weights @ ref_centered
        g_boot = ref.mean(0) + ref_shift                                          # (B, D)
        ref_noise_sq_boot = ((ref_weights @ ref_sq_centered - (ref_shift ** 2).sum(-1))
                             / max(n_ref - 1, 1))
    else:
        g_boot = g.unsqueeze(0).expand(n_boot, -1)
        ref_noise_sq_boot = torch.zeros(n_boot, dtype=x.dtype, device=x.device)
    shift_boot = weights @ centered                                              # (B, D)
    variance_boot = (weights @ sq_centered - (shift_boot ** 2).sum(-1)) * correction
    mean_boot = center + shift_boot
    raw_sq_boot = ((mean_boot - g_boot) ** 2).sum(-1)
    noise_sq_boot = variance_boot / n + ref_noise_sq_boot
    mse_boot = (raw_sq_boot - noise_sq_boot).clamp_min(0) + variance_boot
    cos_each = (g_boot @ x.T) / (g_boot.norm(dim=-1, keepdim=True)
                                 * x.norm(dim=-1)).clamp_min(1e-300)             # (B, S)
    cosine_boot = torch.nn.functional.cosine_similarity(mean_boot, g_boot, dim=-1)
    correlation_boot = _pearson(mean_boot, g_boot)

    raw_sq = float(((center - g) ** 2).sum())
    noise_sq = variance / n + ref_noise_sq
    bias = max(raw_sq - noise_sq, 0.0) ** 0.5
    cosine_raw = float(torch.nn.functional.cosine_similarity(center, g, dim=0))
    correlation_raw = float(_pearson(center, g))
    tail = (1 - confidence) / 2
    levels = torch.tensor([tail, 1 - tail], dtype=x.dtype, device=x.device)

    def quantiles(values: torch.Tensor) -> list[float]:
        finite = values[torch.isfinite(values)]
        if finite.numel() == 0:
            return [math.nan, math.nan]
        return torch.quantile(finite, levels).tolist()

    def basic(raw: float, boot: torch.Tensor, low: float, high: float
              ) -> tuple[float, list[float]]:
        """Bootstrap bias-corrected point and basic interval, kept within [low, high]."""
        if math.isnan(raw):
            return math.nan, [math.nan, math.nan]
        finite = boot[torch.isfinite(boot)]
        point = min(max(2 * raw - float(finite.mean()), low), high)
        q_lo, q_hi = quantiles(boot)
        lo, hi = min(max(2 * raw - q_hi, low), high), min(max(2 * raw - q_lo, low), high)
        return point, _contain(point, lo, hi)

    # the squared bias: |m - g*|^2 overshoots it by the noise variance, and so do its
    # resamples; the basic interval of the square removes that shift
    sq_lo, sq_hi = quantiles(raw_sq_boot)
    bias_ci = _contain(bias, max(2 * raw_sq - sq_hi, 0.0) ** 0.5,
                       max(2 * raw_sq - sq_lo, 0.0) ** 0.5)
    cosine, cosine_ci = basic(cosine_raw, cosine_boot, -1.0, 1.0)
    correlation, correlation_ci = basic(correlation_raw, correlation_boot, -1.0, 1.0)
    mse = bias ** 2 + variance
    per_estimate = float(cos.mean())
    out: dict[str, float | list[float]] = {
        "bias": bias, "bias_ci": bias_ci,
        "variance": variance, "variance_ci": _contain(variance, *quantiles(variance_boot)),
        "mse": mse, "mse_ci": _contain(mse, *quantiles(mse_boot)),
        "cosine": cosine, "cosine_ci": cosine_ci,
        "correlation": correlation, "correlation_ci": correlation_ci,
        "cosine_per_estimate": per_estimate,
        "cosine_per_estimate_ci": _contain(per_estimate, *quantiles(
            (weights * cos_each).sum(-1))),
        "bias_raw": raw_sq ** 0.5, "bias_noise": noise_sq ** 0.5,
        "cosine_raw": cosine_raw, "correlation_raw": correlation_raw,
    }
    return out


def summarize_exact(mean: torch.Tensor, covariance: torch.Tensor, truth: torch.Tensor,
                    mean_cosine: float) -> dict[str, float | list[float]]:
    """The same metrics from exact moments: no sampling error, so each interval is a point."""
    g = truth.detach().reshape(-1).double()
    m = mean.detach().reshape(-1).double()
    bias = float((m - g).norm())
    variance = float(torch.trace(covariance.double()))
    cosine = float(torch.nn.functional.cosine_similarity(m, g, dim=0))
    correlation = float(_pearson(m, g))
    values = {
        "bias": bias,
        "variance": variance,
        "mse": bias ** 2 + variance,
        "cosine": cosine,
        "correlation": correlation,
        "cosine_per_estimate": float(mean_cosine),
    }
    out: dict[str, float | list[float]] = {}
    for name, value in values.items():
        out[name] = value
        out[f"{name}_ci"] = [value, value]
    out.update(bias_raw=bias, bias_noise=0.0, cosine_raw=cosine, correlation_raw=correlation)
    return out


@dataclass(frozen=True)
class Slope:
    """Least-squares fit of log(y) = intercept + slope log(x)."""

    slope: float
    stderr: float
    intercept: float
    n_points: int


#: A slope needs at least this many points: two points always lie on a line.
MIN_SLOPE_POINTS = 3


def fit_log_log(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> Slope:
    """Slope of y against x on log-log axes with its standard error; NaN when undefined.

    Points with non-positive or non-finite y are dropped; fewer than ``MIN_SLOPE_POINTS``
    left (or a single distinct x) give NaN: a line through two points has no error to report.
    """
    x_arr = np.asarray(x, dtype=float)
    y_arr = np.asarray(y, dtype=float)
    keep = np.isfinite(y_arr) & (y_arr > 0) & (x_arr > 0)
    lx, ly = np.log(x_arr[keep]), np.log(y_arr[keep])
    n = lx.size
    if n < MIN_SLOPE_POINTS or np.ptp(lx) == 0:
        return Slope(math.nan, math.nan, math.nan, int(n))
    design = np.stack([np.ones(n), lx], axis=1)
    coef, _, _, _ = np.linalg.lstsq(design, ly, rcond=None)
    sigma2 = float(((ly - design @ coef) ** 2).sum()) / (n - 2)
    stderr = math.sqrt(sigma2 / float(((lx - lx.mean()) ** 2).sum()))
    return Slope(float(coef[1]), stderr, float(coef[0]), int(n))
