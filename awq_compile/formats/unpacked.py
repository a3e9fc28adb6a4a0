"""The one unpacked form every 4-bit layout converts through.

``codes`` uint8 [K, N] in 0..15, ``zeros`` uint8 [K/G, N] (None: symmetric, implicit zero 8),
``scales`` float [K/G, N]; the weight is ``w[k, n] = (codes[k, n] - zeros[k // G, n]) * scales[k // G, n]``
and a linear layer computes ``y = x @ w``.
"""

from __future__ import annotations

import dataclasses

import torch

BITS = 4
SYMMETRIC_ZERO = 1 << (BITS - 1)  # 8: the implicit zero of symmetric ("uint4b8") weights


@dataclasses.dataclass
class Unpacked:
    codes: torch.Tensor
    zeros: torch.Tensor | None
    scales: torch.Tensor
    group_size: int

    def __post_init__(self):
        K, N = self.codes.shape
        G = self.group_size
        if G <= 0 or K % G:
            raise ValueError(f"group size {G} does not divide K={K}")
        if tuple(self.scales.shape) != (K // G, N):
            raise ValueError(f"scales shape {tuple(self.scales.shape)} != (K/G, N) = {(K // G, N)}")
        if self.zeros is not None and tuple(self.zeros.shape) != (K // G, N):
            raise ValueError(f"zeros shape {tuple(self.zeros.shape)} != (K/G, N) = {(K // G, N)}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[K, N] weight: (q - z) * s computed in float32 (exact for 4-bit codes), rounded once to ``dtype``."""
        return dequantize(self.codes, self.zeros, self.scales, self.group_size, dtype)


def dequantize(codes, zeros, scales, group_size, dtype=torch.float32):
    K, N = codes.shape
    G = group_size
    q = codes.view(K // G, G, N).to(torch.float32)
    z = (zeros.to(torch.float32) if zeros is not None
         else torch.full((1, N), float(SYMMETRIC_ZERO), device=codes.device))
    s = scales.to(torch.float32)
    w = (q - z.view(-1, 1, N)) * s.view(K // G, 1, N)
    return w.view(K, N).to(dtype)
