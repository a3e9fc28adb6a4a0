"""A linear layer holding 4-bit weights in the standard K-packed layout, dequantised in plain PyTorch.

The layout is GPTQ's with raw ("v2") zero points, which is also compressed-tensors' ``pack-quantized``
after a transpose (see docs/formats.md and docs/checkpoints.md)::

    qweight int32 [K/8, N]     row 8*k8+i of column n in nibble i of word [k8, n]
    qzeros  int32 [K/G, N/8]   column 8j+i in nibble i; raw zero points (None: symmetric, zero 8)
    scales  float [K/G, N]

``load_pretrained`` converts GPTQ v1 and compressed-tensors checkpoints into it once, at load time, so
the forward below is the one spelling ``backend="awq"`` has to recognise for all of them.
"""

from __future__ import annotations

import torch
from torch import nn


def dequantize_gptq(qweight: torch.Tensor, qzeros: torch.Tensor | None, scales: torch.Tensor,
                    group_size: int) -> torch.Tensor:
    """[K, N] weight in the scales' dtype: ``(q - z) * s`` (z = 8 when ``qzeros`` is None)."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=qweight.device)
    codes = torch.bitwise_right_shift(qweight[:, None, :], shifts[None, :, None])
    codes = torch.bitwise_and(codes, 15).reshape(qweight.shape[0] * 8, qweight.shape[1])
    if qzeros is None:
        q = codes - 8
    else:
        zeros = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :])
        zeros = torch.bitwise_and(zeros, 15).reshape(qzeros.shape[0], -1)
        q = codes - zeros.repeat_interleave(group_size, dim=0)
    return q * scales.repeat_interleave(group_size, dim=0)


class GptqLinear(nn.Module):
    """``y = x @ dequant(qweight, qzeros, scales) + bias`` in the standard K-packed layout (K = in, N = out)."""

    def __init__(self, in_features: int, out_features: int, group_size: int = 128, bias: bool = False,
                 symmetric: bool = False, dtype: torch.dtype = torch.float16, device=None):
        super().__init__()
        G = in_features if group_size in (-1, None) else group_size
        if in_features % G or in_features % 8 or out_features % 8:
            raise ValueError(f"in_features={in_features} must be a multiple of 8 and of the group size {G}, "
                             f"out_features={out_features} a multiple of 8")
        self.in_features, self.out_features, self.group_size = in_features, out_features, G
        self.symmetric = symmetric
        self.register_buffer("qweight", torch.zeros(in_features // 8, out_features, dtype=torch.int32, device=device))
        self.register_buffer("qzeros", None if symmetric else
                             torch.zeros(in_features // G, out_features // 8, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.zeros(in_features // G, out_features, dtype=dtype, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_shape = x.shape[:-1] + (self.out_features,)
        input_dtype = x.dtype
        x = x.to(self.scales.dtype)
        with torch.no_grad():
            w = dequantize_gptq(self.qweight, self.qzeros, self.scales, self.group_size)
            out = torch.matmul(x.reshape(-1, self.in_features), w)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(out_shape).to(input_dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"symmetric={self.symmetric}")
