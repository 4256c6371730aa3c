"""Statistics of a batch of estimates against a truth (SCIENCE.md section 5).

For S estimates g_1..g_S and truth g*: bias = |mean(g) - g*|, variance = trace of the sample
covariance (denominator S - 1), MSE = mean |g_s - g*|^2, cosine(mean(g), g*), and the mean
per-estimate cosine. Confidence intervals: percentile bootstrap over the S estimates (and
over the reference samples when the truth itself is estimated), all resamples at once as a
matrix of multinomial counts. The bias interval is the basic bootstrap interval of the
squared bias; ``bias_noise`` = sqrt(variance/S + reference variance/S_ref) is what the bias
statistic reads from sampling noise alone, when the true bias is zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

METRICS = ("bias", "variance", "mse", "cosine", "cosine_per_estimate")


def _resample_weights(n: int, n_boot: int, generator: torch.Generator,
                      like: torch.Tensor) -> torch.Tensor:
    """(n_boot, n) bootstrap counts divided by n: each row is a resample's weights."""
    index = torch.randint(n, (n_boot, n), generator=generator)
    counts = torch.zeros(n_boot, n, dtype=like.dtype).scatter_add_(
        1, index, torch.ones(n_boot, n, dtype=like.dtype))
    return (counts / n).to(like.device)


def _metrics(mean: torch.Tensor, variance: torch.Tensor, err_sq_mean: torch.Tensor,
             cos_mean: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Metrics from moments; leading batch axes broadcast."""
    return {
        "bias": (mean - truth).norm(dim=-1),
        "variance": variance,
        "mse": err_sq_mean,
        "cosine": torch.nn.functional.cosine_similarity(mean, truth.expand_as(mean), dim=-1),
        "cosine_per_estimate": cos_mean,
    }


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
    cos = torch.nn.functional.cosine_similarity(x, g.unsqueeze(0), dim=-1)
    err_sq = ((x - g) ** 2).sum(-1)
    point = _metrics(center, sq_centered.mean() * correction, err_sq.mean(), cos.mean(), g)

    generator = torch.Generator().manual_seed(seed)
    weights = _resample_weights(n, n_boot, generator, x)
    if truth_samples is not None:
        ref = truth_samples.detach().reshape(truth_samples.shape[0], -1).double().to(x.device)
        g_boot = _resample_weights(ref.shape[0], n_boot, generator, ref) @ ref  # (B, D)
    else:
        g_boot = g.unsqueeze(0).expand(n_boot, -1)
    shift_boot = weights @ centered                                              # (B, D)
    variance_boot = (weights @ sq_centered - (shift_boot ** 2).sum(-1)) * correction
    mean_boot = center + shift_boot
    # |x - g_b|^2 = |x - g|^2 + 2 (x - g).(g - g_b) + |g - g_b|^2: no (B, S, D) tensor
    offset = g - g_boot
    err_sq_boot = (weights @ err_sq + 2 * ((weights @ (x - g)) * offset).sum(-1)
                   + (offset ** 2).sum(-1))
    cos_each = (g_boot @ x.T) / (g_boot.norm(dim=-1, keepdim=True)
                                 * x.norm(dim=-1)).clamp_min(1e-300)             # (B, S)
    cos_boot = (weights * cos_each).sum(-1)
    boot = _metrics(mean_boot, variance_boot, err_sq_boot, cos_boot, g_boot)
    tail = (1 - confidence) / 2
    out: dict[str, float | list[float]] = {}
    levels = torch.tensor([tail, 1 - tail], dtype=x.dtype, device=x.device)
    for name in METRICS:
        value = float(point[name])
        lo, hi = torch.quantile(boot[name], levels).tolist()
        if name == "bias":
            # |mean - g*|^2 overshoots the squared bias by the noise variance, and so do its
            # resamples: the basic (reverse-percentile) interval of the square removes that
            # shift, which a percentile interval of the norm would keep (never covering 0)
            squares = torch.quantile(boot[name] ** 2, levels).tolist()
            lo = max(2 * value ** 2 - squares[1], 0.0) ** 0.5
            hi = max(2 * value ** 2 - squares[0], 0.0) ** 0.5
        out[name] = value
        out[f"{name}_ci"] = [lo, hi]
    noise = float(point["variance"]) / n
    if truth_samples is not None:
        noise += float(truth_samples.reshape(truth_samples.shape[0], -1).double().var(0).sum()
                       ) / truth_samples.shape[0]
    out["bias_noise"] = noise ** 0.5
    return out


def summarize_exact(mean: torch.Tensor, covariance: torch.Tensor, truth: torch.Tensor,
                    mean_cosine: float) -> dict[str, float | list[float]]:
    """The same metrics from exact moments: no sampling error, so each interval is a point."""
    g = truth.detach().reshape(-1).double()
    m = mean.detach().reshape(-1).double()
    bias = float((m - g).norm())
    variance = float(torch.trace(covariance.double()))
    values = {
        "bias": bias,
        "variance": variance,
        "mse": bias ** 2 + variance,
        "cosine": float(torch.nn.functional.cosine_similarity(m, g, dim=0)),
        "cosine_per_estimate": float(mean_cosine),
    }
    out: dict[str, float | list[float]] = {}
    for name, value in values.items():
        out[name] = value
        out[f"{name}_ci"] = [value, value]
    out["bias_noise"] = 0.0
    return out


@dataclass(frozen=True)
class Slope:
    """Least-squares fit of log(y) = intercept + slope log(x)."""

    slope: float
    stderr: float
    intercept: float
    n_points: int


def fit_log_log(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> Slope:
    """Slope of y against x on log-log axes with its standard error; NaN when undefined.

    Points with non-positive or non-finite y are dropped; two points give a slope with no
    standard error (NaN).
    """
    x_arr = np.asarray(x, dtype=float)
    y_arr = np.asarray(y, dtype=float)
    keep = np.isfinite(y_arr) & (y_arr > 0) & (x_arr > 0)
    lx, ly = np.log(x_arr[keep]), np.log(y_arr[keep])
    n = lx.size
    if n < 2 or np.ptp(lx) == 0:
        return Slope(math.nan, math.nan, math.nan, int(n))
    design = np.stack([np.ones(n), lx], axis=1)
    coef, residual, _, _ = np.linalg.lstsq(design, ly, rcond=None)
    if n > 2:
        sigma2 = float(((ly - design @ coef) ** 2).sum()) / (n - 2)
        stderr = math.sqrt(sigma2 / float(((lx - lx.mean()) ** 2).sum()))
    else:
        stderr = math.nan
    return Slope(float(coef[1]), stderr, float(coef[0]), int(n))
