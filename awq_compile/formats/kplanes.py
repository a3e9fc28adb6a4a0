"""The ``kplanes`` layout: the standard layout with K permuted inside each block of 128 rows.

::

    qweight int32 [K/8, N]   word [16 t + r, n], nibble i  holds row  128 t + 16 i + r  of column n
                             (standard: word [16 t + r, n], nibble i holds row 128 t + 8 r + i)
    qzeros, scales           unchanged (per group of >= 128 rows, so a block never straddles two groups)

Why: a kernel that decodes nibble plane i of a [16, BLOCK_N] block of words gets the 16 weight rows
``128 t + 16 i .. 128 t + 16 i + 15`` -- a contiguous K range, so the matching activations are one
contiguous (vector, asynchronously copyable) load instead of a stride-8 gather.  Same bytes, same
words per block; only which nibble holds which row changes, so the conversion is a pure permutation.
Requires K % 128 == 0 and a group size that is a multiple of 128.
"""

from __future__ import annotations

import torch

from .standard import pack_k, unpack_k

__all__ = ["BLOCK", "to_kplanes", "from_kplanes", "kplanes_reason"]

BLOCK = 128


def kplanes_reason(K: int, group_size: int) -> str | None:
    """None when a [K, N] weight with this group size has a kplanes form, else why not."""
    if K % BLOCK:
        return f"K={K} is not a multiple of {BLOCK}"
    if group_size % BLOCK:
        return f"group size {group_size} is not a multiple of {BLOCK}"
    return None


def to_kplanes(qweight: torch.Tensor) -> torch.Tensor:
    """Standard qweight int32 [K/8, N] -> kplanes qweight int32 [K/8, N]."""
    K8, N = qweight.shape
    K = K8 * 8
    if K % BLOCK:
        raise ValueError(f"kplanes: K={K} is not a multiple of {BLOCK}")
    codes = unpack_k(qweight).view(K // BLOCK, 8, BLOCK // 8, N)      # [t, i, r, n]: row 128 t + 16 i + r
    return pack_k(codes.transpose(1, 2).reshape(K, N))                 # row 128 t + 8 r + i of the new order


def from_kplanes(qweight: torch.Tensor) -> torch.Tensor:
    """kplanes qweight -> standard qweight (the inverse permutation)."""
    K8, N = qweight.shape
    K = K8 * 8
    if K % BLOCK:
        raise ValueError(f"kplanes: K={K} is not a multiple of {BLOCK}")
    codes = unpack_k(qweight).view(K // BLOCK, BLOCK // 8, 8, N)      # [t, r, i, n]
    return pack_k(codes.transpose(1, 2).reshape(K, N))
