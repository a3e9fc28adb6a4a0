"""The standard packed layout our kernels read (GPTQ / compressed-tensors family, "v2" zeros).

::

    qweight int32 [K/8, N]     word [k8, n] holds rows 8*k8 .. 8*k8+7 of column n, row 8*k8+i in nibble i
    bit   31..28   27..24  ...   7..4     3..0
    row  8k8+7    8k8+6   ...   8k8+1    8k8+0
    qzeros int32 [K/G, N/8]    packed along N, sequential: column 8j+i in nibble i; raw zero points
                               (None for symmetric weights: implicit zero 8)
    scales       [K/G, N]      any float dtype; the kernels compute in float32

Codes 0..7 down one column pack to 0x76543210.
"""

from __future__ import annotations

import torch

from .awq import _nibbles, _words, pack_n_sequential, unpack_n_sequential
from .packed import Packed
from .unpacked import Unpacked

__all__ = ["pack_k", "unpack_k", "from_unpacked", "to_unpacked", "dequantize_standard", "dequantize_packed"]


def pack_k(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [K, N] (K % 8 == 0) -> int32 [K/8, N]."""
    K, N = codes.shape
    if K % 8:
        raise ValueError(f"K={K} is not a multiple of 8")
    return _words(codes.reshape(K // 8, 8, N).transpose(1, 2))


def unpack_k(packed: torch.Tensor) -> torch.Tensor:
    """int32 [K/8, N] -> uint8 codes [K, N]."""
    K8, N = packed.shape
    return _nibbles(packed).transpose(1, 2).reshape(K8 * 8, N)


def from_unpacked(u: Unpacked) -> Packed:
    return Packed("standard", pack_k(u.codes), None if u.zeros is None else pack_n_sequential(u.zeros),
                  u.scales, u.group_size)


def to_unpacked(w: Packed) -> Unpacked:
    if w.layout != "standard":
        raise ValueError(f"to_unpacked takes the standard layout, not {w.layout!r} (use get_format().to_unpacked)")
    zeros = None if w.qzeros is None else unpack_n_sequential(w.qzeros)
    return Unpacked(unpack_k(w.qweight), zeros, w.scales, w.group_size)


def dequantize_standard(qweight: torch.Tensor, qzeros: torch.Tensor | None, scales: torch.Tensor, group_size: int,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[K, N] weight straight from the standard layout: (q - z) * s in float32, rounded once to ``dtype``.

    The per-call fallback path; one int32 temporary of the weight's size, no uint8 round trip.
    """
    K8, N = qweight.shape
    K, G = K8 * 8, group_size
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=qweight.device)
    q = ((qweight[:, None, :] >> shifts[None, :, None]) & 15).view(K // G, G, N).to(torch.float32)
    if qzeros is None:
        q = q - 8.0
    else:
        z = (qzeros[:, :, None] >> shifts[None, None, :]) & 15
        q = q - z.view(K // G, 1, N).to(torch.float32)
    return (q * scales.to(torch.float32).view(K // G, 1, N)).view(K, N).to(dtype)


def dequantize_packed(w: Packed, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[K, N] weight of a ``standard`` or ``kplanes`` Packed, rows in natural K order (the fallback paths).

    A kplanes weight is dequantised as it is (the same words) and its rows put back in order -- one index
    of the dense result, no second packed copy of the weight."""
    if w.layout not in ("standard", "kplanes"):
        raise ValueError(f"dequantize_packed reads the standard and kplanes layouts, not {w.layout!r}")
    dense = dequantize_standard(w.qweight, w.qzeros, w.scales, w.group_size, dtype)
    if w.layout == "kplanes":
        from .kplanes import BLOCK

        K, N = dense.shape
        # stored row 128 t + 8 r + i holds K row 128 t + 16 i + r
        dense = dense.view(K // BLOCK, BLOCK // 8, 8, N).transpose(1, 2).reshape(K, N)
    return dense
