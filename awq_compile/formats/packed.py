"""A 4-bit weight in one named layout: the value every conversion takes and returns.

``layout`` is a source format (``awq``, ``awq_sym``, ``gptq_v1``, ``gptq_v2``, ``gptq_sym``), ``standard``
(what the Triton kernels and the dequant path read) or ``cpu_int4pack`` (what torch's CPU int4 matmul
reads).  The tensors' meaning depends on the layout (docs/formats.md); whoever holds a :class:`Packed`
reads the layout from it, never from a side table.
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["Packed"]


@dataclasses.dataclass(frozen=True)
class Packed:
    layout: str
    qweight: torch.Tensor            # standard: int32 [K/8, N]; cpu_int4pack: torch's packed tensor
    qzeros: torch.Tensor | None      # standard: int32 [K/G, N/8] or None (symmetric); cpu_int4pack: None
    scales: torch.Tensor             # [K/G, N]; cpu_int4pack: scale and zero [K/G, N, 2] in the matmul dtype
    group_size: int

    @property
    def K(self) -> int:
        return self.scales.shape[0] * self.group_size

    @property
    def N(self) -> int:
        return self.scales.shape[1]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.qzeros, self.scales) if t is not None)
