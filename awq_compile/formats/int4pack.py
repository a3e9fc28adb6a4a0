"""``cpu_int4pack``: the layout of torch's CPU int4 matmul (``torch._weight_int4pack_mm_for_cpu``).

* ``qweight``: ``torch._convert_weight_to_int4pack_for_cpu`` of the codes as int32 [N, K] (opaque to us).
* ``scales``: [K/G, N, 2] in the matmul's dtype, ``[..., 0]`` the scale and ``[..., 1]`` the zero term.
  The kernel computes ``(q - 8) * scale + zero``; ours is ``(q - z) * scale``, so ``zero = (8 - z) * scale``.

Built from the standard layout only (the one route: source -> standard -> here).
"""

from __future__ import annotations

import torch

from .awq import unpack_n_sequential
from .packed import Packed
from .standard import unpack_k
from .unpacked import SYMMETRIC_ZERO

__all__ = ["from_standard"]


def from_standard(std: Packed, dtype: torch.dtype) -> Packed:
    if std.layout != "standard":
        raise ValueError(f"cpu_int4pack is built from the standard layout, not {std.layout!r}")
    codes = unpack_k(std.qweight)                                       # [K, N] uint8
    packed = torch._convert_weight_to_int4pack_for_cpu(codes.t().contiguous().to(torch.int32), 1)
    s32 = std.scales.to(torch.float32)
    z = float(SYMMETRIC_ZERO) if std.qzeros is None else unpack_n_sequential(std.qzeros).to(torch.float32)
    scale_zero = torch.stack([s32, (float(SYMMETRIC_ZERO) - z) * s32], dim=-1).to(dtype).contiguous()
    return Packed("cpu_int4pack", packed, None, scale_zero, std.group_size)
