"""Seeded random draws shared by tasks and policies.

Draws are made on the generator's own device and then moved to the device of the
computation: a CPU generator can drive a CUDA computation, and the draws are identical
whichever device computes with them.
"""

from __future__ import annotations

import torch


def _device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def uniform(shape: tuple[int, ...], generator: torch.Generator | None,
            like: torch.Tensor) -> torch.Tensor:
    """U[0, 1) draws in ``like``'s dtype, on ``like``'s device."""
    draws = torch.rand(shape, generator=generator, device=_device_of(generator), dtype=like.dtype)
    return draws.to(like.device)


def normal(shape: tuple[int, ...], generator: torch.Generator | None,
           like: torch.Tensor) -> torch.Tensor:
    """N(0, 1) draws in ``like``'s dtype, on ``like``'s device."""
    draws = torch.randn(shape, generator=generator, device=_device_of(generator),
                        dtype=like.dtype)
    return draws.to(like.device)


def inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index of the first cdf entry above u; cdf (..., K), u (...,) -> long (...)."""
    index = (cdf < u.unsqueeze(-1)).sum(-1)
    return index.clamp_(max=cdf.shape[-1] - 1)  # cdf[-1] may round to just below 1
