"""Quantise float weights to 4-bit (for the demo model and tests): round-to-nearest, min/max per group."""

from __future__ import annotations

import torch

from . import awq
from .standard import pack_k
from .unpacked import SYMMETRIC_ZERO, Unpacked


def quantize(w: torch.Tensor, group_size: int, *, symmetric: bool = False) -> Unpacked:
    """Float [K, N] (a linear layer's weight transposed) -> :class:`Unpacked` with G = ``group_size``."""
    K, N = w.shape
    G = K if group_size in (-1, None) else group_size
    if K % G:
        raise ValueError(f"group size {G} does not divide K={K}")
    wg = w.detach().to(torch.float32).reshape(K // G, G, N)
    if symmetric:
        scale = (wg.abs().amax(dim=1) / 7.5).clamp(min=1e-8)
        zeros = None
        z = torch.full_like(scale, SYMMETRIC_ZERO)
    else:
        lo, hi = wg.amin(dim=1), wg.amax(dim=1)
        scale = ((hi - lo) / 15).clamp(min=1e-8)
        z = torch.round(-lo / scale).clamp(0, 15)
        zeros = z.to(torch.uint8)
    codes = torch.round(wg / scale[:, None, :] + z[:, None, :]).clamp(0, 15).to(torch.uint8).reshape(K, N)
    return Unpacked(codes, zeros, scale.to(w.dtype if w.is_floating_point() and w.dtype != torch.float32
                                           else torch.float16), G)


def to_awq(u: Unpacked) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(qweight [K, N/8], qzeros [K/G, N/8] or None, scales [K/G, N]) in AWQ GEMM packing."""
    qz = None if u.zeros is None else awq.pack_n_interleaved(u.zeros)
    return awq.pack_n_interleaved(u.codes), qz, u.scales


def to_gptq(u: Unpacked, *, v1: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(qweight [K/8, N], qzeros [K/G, N/8] or None, scales) in GPTQ packing (v1 stores zeros - 1)."""
    qz = None
    if u.zeros is not None:
        z = u.zeros.to(torch.int16) - (1 if v1 else 0)
        qz = awq.pack_n_sequential((z & 15).to(torch.uint8))
    return pack_k(u.codes), qz, u.scales
