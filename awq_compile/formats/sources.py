"""Source layouts we can convert from, each decoded through :class:`~.unpacked.Unpacked`.

A :class:`SourceFormat` knows the shapes of its tensors, how to unpack them, and how to convert them
to the standard layout in row chunks (so no temporary exceeds a small multiple of one chunk).  The
graph pass uses :meth:`SourceFormat.assign` to see whether a set of constant tensors could be this
format, then :meth:`to_unpacked` + dequantisation to verify it against what the user's code computed.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from . import awq
from .packed import Packed
from .standard import unpack_k
from .unpacked import Unpacked

__all__ = ["SourceFormat", "SOURCE_FORMATS", "get_format", "DEFAULT_CHUNK_BYTES", "chunk_rows"]

# Largest uint8 temporary a conversion step allocates (codes of one row chunk).
DEFAULT_CHUNK_BYTES = 32 << 20


def chunk_rows(K: int, N: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows of K converted per step: a multiple of 8 whose [rows, N] uint8 codes fit ``chunk_bytes``."""
    return max(8, min(K, (chunk_bytes // max(N, 1)) // 8 * 8))


@dataclasses.dataclass(frozen=True)
class SourceFormat:
    name: str
    description: str
    packed_along: str                 # "N" (AWQ) or "K" (GPTQ)
    has_zeros: bool
    zero_offset: int                  # added to stored zeros (GPTQ v1 stores z - 1)
    unpack_weight: Callable[[torch.Tensor], torch.Tensor]
    unpack_zeros: Callable[[torch.Tensor], torch.Tensor] | None

    # ------------------------------------------------------------------ shapes
    def qweight_shape(self, K: int, N: int) -> tuple[int, int]:
        return (K, N // 8) if self.packed_along == "N" else (K // 8, N)

    def check(self, qweight, qzeros, scales, K: int, N: int) -> str | None:
        """None if the three tensors have this format's dtypes and shapes for a [K, N] weight, else why not."""
        if K % 8 or N % 8:
            return f"K={K} and N={N} must be multiples of 8 for 4-bit packing"
        if qweight.dtype != torch.int32 or tuple(qweight.shape) != self.qweight_shape(K, N):
            return (f"{self.name}: expected qweight int32 {self.qweight_shape(K, N)}, "
                    f"found {qweight.dtype} {tuple(qweight.shape)}")
        if not scales.is_floating_point() or scales.dim() != 2 or scales.shape[1] != N or K % scales.shape[0]:
            return f"{self.name}: expected float scales [K/G, {N}], found {scales.dtype} {tuple(scales.shape)}"
        groups = scales.shape[0]
        if self.has_zeros:
            if qzeros is None:
                return f"{self.name}: needs a zero-point tensor"
            if qzeros.dtype != torch.int32 or tuple(qzeros.shape) != (groups, N // 8):
                return (f"{self.name}: expected qzeros int32 {(groups, N // 8)}, "
                        f"found {qzeros.dtype} {tuple(qzeros.shape)}")
        elif qzeros is not None:
            return f"{self.name}: is symmetric and takes no zero points"
        return None

    # ------------------------------------------------------------------ decode
    def zeros_of(self, qzeros: torch.Tensor | None) -> torch.Tensor | None:
        if not self.has_zeros:
            return None
        z = self.unpack_zeros(qzeros)
        if self.zero_offset:
            z = z + self.zero_offset
            if int(z.max()) > 15:
                raise ValueError(f"{self.name}: a stored zero point of 15 means 16, which 4 bits cannot hold")
        return z

    def to_unpacked(self, qweight, qzeros, scales) -> Unpacked:
        codes = self.unpack_weight(qweight)
        return Unpacked(codes, self.zeros_of(qzeros), scales, codes.shape[0] // scales.shape[0])

    # ------------------------------------------------------------------ convert
    def to_standard(self, qweight, qzeros, scales, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Packed:
        """Standard layout on the tensors' device (shorthand for :func:`.convert.convert`); shares what
        already is standard."""
        from .convert import convert

        group_size = self.qweight_rows_to_k(qweight.shape[0]) // scales.shape[0]
        return convert(Packed(self.name, qweight, qzeros, scales, group_size), "standard", chunk_bytes=chunk_bytes)

    def qweight_rows_to_k(self, rows: int) -> int:
        return rows if self.packed_along == "N" else rows * 8


def _awq(name, has_zeros, desc):
    return SourceFormat(name, desc, "N", has_zeros, 0, awq.unpack_n_interleaved,
                        awq.unpack_n_interleaved if has_zeros else None)


def _gptq(name, has_zeros, offset, desc):
    return SourceFormat(name, desc, "K", has_zeros, offset, unpack_k,
                        awq.unpack_n_sequential if has_zeros else None)


SOURCE_FORMATS: tuple[SourceFormat, ...] = (
    _awq("awq", True, "AWQ GEMM: qweight [K, N/8] packed along N, interleaved nibbles, raw zeros"),
    _awq("awq_sym", False, "AWQ-like symmetric: qweight [K, N/8] interleaved, no zeros (implicit 8)"),
    _gptq("gptq_v2", True, 0, "GPTQ v2: qweight [K/8, N] packed along K, zeros [K/G, N/8] raw"),
    _gptq("gptq_v1", True, 1, "GPTQ v1: qweight [K/8, N] packed along K, zeros stored minus one"),
    _gptq("gptq_sym", False, 0, "GPTQ symmetric: qweight [K/8, N] packed along K, no zeros (implicit 8)"),
)


def get_format(name: str) -> SourceFormat:
    for f in SOURCE_FORMATS:
        if f.name == name:
            return f
    raise KeyError(f"unknown source format {name!r}; known: {[f.name for f in SOURCE_FORMATS]}")
