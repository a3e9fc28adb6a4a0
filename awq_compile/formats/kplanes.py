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

The ``kpairs`` variant (same words, another permutation) serves a decode that extracts two nibbles per
32-bit operation -- ``((w >> 4 i) & 0x000F000F) | 0x64006400`` is two fp16 values ``1024 + q`` at once --
and feeds them to the matrix unit as one register holding two consecutive K rows::

    kpairs: word [16 t + r, n], nibble s  holds row  128 t + 32 (s % 4) + 2 r + s // 4

so pair-plane i (nibbles i and i + 4 of the 16 words of a block) is the contiguous K range
``128 t + 32 i .. 128 t + 32 i + 31`` with nibble i at the even row and nibble i + 4 at the odd one.
"""

from __future__ import annotations

import torch

from .standard import pack_k, unpack_k

__all__ = ["BLOCK", "to_kplanes", "from_kplanes", "to_kpairs", "from_kpairs", "kplanes_reason"]

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


def to_kpairs(qweight: torch.Tensor) -> torch.Tensor:
    """Standard qweight int32 [K/8, N] -> kpairs qweight int32 [K/8, N]."""
    K8, N = qweight.shape
    K = K8 * 8
    if K % BLOCK:
        raise ValueError(f"kpairs: K={K} is not a multiple of {BLOCK}")
    # row 128 t + 32 i + 2 r + j  ->  word 16 t + r, nibble s = i + 4 j
    codes = unpack_k(qweight).view(K // BLOCK, 4, BLOCK // 8, 2, N)   # [t, i, r, j, n]
    return pack_k(codes.permute(0, 2, 3, 1, 4).reshape(K, N))          # [t, r, j, i, n]: nibble 4 j + i


def from_kpairs(qweight: torch.Tensor) -> torch.Tensor:
    """kpairs qweight -> standard qweight."""
    K8, N = qweight.shape
    K = K8 * 8
    if K % BLOCK:
        raise ValueError(f"kpairs: K={K} is not a multiple of {BLOCK}")
    codes = unpack_k(qweight).view(K // BLOCK, BLOCK // 8, 2, 4, N)   # [t, r, j, i, n]
    return pack_k(codes.permute(0, 3, 1, 2, 4).reshape(K, N))          # [t, i, r, j, n]
