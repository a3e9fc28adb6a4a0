"""A linear layer holding AWQ GEMM-format weights and dequantising them in plain PyTorch.

Its forward is the common pure-PyTorch spelling (the one AutoAWQ's ``WQLinear_GEMM`` falls back to
without its CUDA extension): shift every int32 word by 0, 4, .., 28, undo the AWQ nibble order with an
index, mask to 4 bits, expand zeros and scales to every row with ``repeat_interleave``, compute
``(q - z) * s`` and multiply.  This is what ``backend="awq"`` is built to find.
"""

from __future__ import annotations

import torch
from torch import nn

from ..formats import quantize, to_awq

_AWQ_UNDO_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


def dequantize_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                   bits: int = 4) -> torch.Tensor:
    shifts = torch.arange(0, 32, bits, device=qweight.device)
    codes = torch.bitwise_right_shift(qweight[:, :, None], shifts[None, None, :]).to(torch.int8)
    codes = codes.view(codes.shape[0], -1)
    zeros = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :]).to(torch.int8)
    zeros = zeros.view(zeros.shape[0], -1)
    order = torch.arange(codes.shape[-1], dtype=torch.int32, device=qweight.device)
    order = order.view(-1, 32 // bits)[:, _AWQ_UNDO_ORDER].view(-1)
    codes = torch.bitwise_and(codes[:, order], (1 << bits) - 1)
    zeros = torch.bitwise_and(zeros[:, order], (1 << bits) - 1)
    zeros = zeros.repeat_interleave(group_size, dim=0)
    scales = scales.repeat_interleave(group_size, dim=0)
    return (codes - zeros) * scales


class AwqLinear(nn.Module):
    """``y = x @ dequant(qweight, qzeros, scales) + bias`` with AWQ buffers (K = in, N = out)."""

    def __init__(self, in_features: int, out_features: int, group_size: int = 128, bias: bool = False,
                 dtype: torch.dtype = torch.float16, device=None):
        super().__init__()
        G = in_features if group_size in (-1, None) else group_size
        if in_features % G or out_features % 8:
            raise ValueError(f"in_features={in_features} must be a multiple of the group size {G}, "
                             f"out_features={out_features} a multiple of 8")
        self.in_features, self.out_features, self.group_size = in_features, out_features, G
        self.register_buffer("qweight", torch.zeros(in_features, out_features // 8, dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.zeros(in_features // G, out_features // 8, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.zeros(in_features // G, out_features, dtype=dtype, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = 128, dtype: torch.dtype = torch.float16) -> "AwqLinear":
        """Quantise an ``nn.Linear`` (weight [N, K]) with our round-to-nearest packer."""
        mod = cls(linear.in_features, linear.out_features, group_size, linear.bias is not None, dtype,
                  linear.weight.device)
        u = quantize(linear.weight.detach().t().to(torch.float32), mod.group_size)
        qweight, qzeros, scales = to_awq(u)
        mod.qweight.copy_(qweight)
        mod.qzeros.copy_(qzeros)
        mod.scales.copy_(scales.to(dtype))
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach().to(dtype))
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_shape = x.shape[:-1] + (self.out_features,)
        input_dtype = x.dtype
        x = x.to(self.scales.dtype)
        with torch.no_grad():
            w = dequantize_awq(self.qweight, self.qzeros, self.scales, self.group_size)
            out = torch.matmul(x.reshape(-1, self.in_features), w)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(out_shape).to(input_dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"
