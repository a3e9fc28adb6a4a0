"""AWQ "GEMM" layout: int32 words packed along N with the interleaved nibble order.

::

    qweight int32 [K, N/8]      word j of row k holds columns 8j .. 8j+7
    bit   31..28 27..24 23..20 19..16 15..12 11..8  7..4   3..0
    nib      7      6      5      4      3      2     1      0
    column 8j+7   8j+3   8j+6   8j+2   8j+5   8j+1  8j+4   8j+0     (ORDER = [0, 2, 4, 6, 1, 3, 5, 7])

Codes 0..7 in one row pack to 0x75316420.  ``qzeros`` [K/G, N/8] uses the same packing.
All work is done on uint8 views (no int64 temporaries) on the tensor's own device.
"""

from __future__ import annotations

import torch

ORDER = (0, 2, 4, 6, 1, 3, 5, 7)    # nibble i holds column 8j + ORDER[i]
REVERSE = (0, 4, 1, 5, 2, 6, 3, 7)  # column 8j + c sits in nibble REVERSE[c]


def _nibbles(words: torch.Tensor) -> torch.Tensor:
    """int32 [..., W] -> uint8 [..., W, 8]: nibble i of each word (little-endian byte view)."""
    b = words.contiguous().view(torch.uint8).view(*words.shape, 4)
    return torch.stack((b & 15, b >> 4), dim=-1).view(*words.shape, 8)


def _words(nibbles: torch.Tensor) -> torch.Tensor:
    """uint8 [..., W, 8] (values 0..15; nibble i last) -> int32 [..., W]."""
    n = nibbles.to(torch.uint8)
    b = n[..., 0::2] | (n[..., 1::2] << 4)  # [..., W, 4] bytes, little-endian
    return b.contiguous().view(torch.int32).squeeze(-1)


def unpack_n_interleaved(packed: torch.Tensor) -> torch.Tensor:
    """AWQ int32 [R, N/8] -> uint8 codes [R, N]."""
    R, W = packed.shape
    return _nibbles(packed)[..., list(REVERSE)].reshape(R, W * 8)


def pack_n_interleaved(codes: torch.Tensor) -> torch.Tensor:
    """uint8/int codes [R, N] (N % 8 == 0) -> AWQ int32 [R, N/8]."""
    R, N = codes.shape
    if N % 8:
        raise ValueError(f"N={N} is not a multiple of 8")
    return _words(codes.reshape(R, N // 8, 8)[..., list(ORDER)])


def unpack_n_sequential(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, N/8] with column 8j+i in nibble i -> uint8 [R, N]."""
    R, W = packed.shape
    return _nibbles(packed).reshape(R, W * 8)


def pack_n_sequential(codes: torch.Tensor) -> torch.Tensor:
    R, N = codes.shape
    if N % 8:
        raise ValueError(f"N={N} is not a multiple of 8")
    return _words(codes.reshape(R, N // 8, 8))
