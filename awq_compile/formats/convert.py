"""The one conversion entry: ``convert(weight, to)`` between layouts, always through the unpacked codes.

Routes: any source format -> ``standard`` (row chunks through uint8 codes; see :mod:`.sources`),
``standard`` -> ``cpu_int4pack`` and ``standard`` -> ``kplanes`` (a permutation of K inside 128-row blocks,
:mod:`.kplanes`); a source reaches the last two through ``standard``.  ``kplanes`` -> ``standard`` is the
inverse permutation (the fallback paths dequantise through it).

``out`` receives the result in caller-owned tensors.  It may alias the input: an N-packed source's
``qweight`` [K, N/8] and the standard [K/8, N] have the same number of int32 words and a chunk of K
rows covers the same memory range in both, so ``out=`` views of the source's own storage rewrite it in
place with one chunk's temporaries (the ``reuse_weight_memory`` option).
"""

from __future__ import annotations

import dataclasses

import torch

from . import int4pack
from .packed import Packed
from .sources import DEFAULT_CHUNK_BYTES, chunk_rows, get_format

__all__ = ["convert", "in_place_target"]


def convert(w: Packed, to: str, *, out: Packed | None = None, dtype: torch.dtype | None = None,
            chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Packed:
    """``w`` in layout ``to``.  ``dtype``: the matmul dtype ``cpu_int4pack`` stores its scales in."""
    if w.layout == to and out is None:
        return w
    if w.layout == "kplanes":
        if to != "standard" or out is not None:
            raise ValueError(f"convert: kplanes converts back to standard only (no out=), not to {to!r}")
        from .kplanes import from_kplanes

        return Packed("standard", from_kplanes(w.qweight), w.qzeros, w.scales, w.group_size)
    if to == "standard":
        if w.layout == "standard":
            raise ValueError("convert: standard -> standard with out= is a copy, not a conversion")
        return _source_to_standard(w, out, chunk_bytes)
    if to == "cpu_int4pack":
        if out is not None:
            raise ValueError("convert: cpu_int4pack is opaque to us and cannot be written into out=")
        if dtype is None:
            raise ValueError("convert: cpu_int4pack needs the matmul dtype")
        std = w if w.layout == "standard" else _source_to_standard(w, None, chunk_bytes)
        return int4pack.from_standard(std, dtype)
    if to == "kplanes":
        std = w if w.layout == "standard" else _source_to_standard(w, out and dataclasses.replace(
            out, layout="standard"), chunk_bytes)
        return _standard_to_kplanes(std, out, chunk_bytes)
    raise ValueError(f"convert: no route from {w.layout!r} to {to!r}")


def _standard_to_kplanes(std: Packed, out: Packed | None, chunk_bytes: int) -> Packed:
    """Permute K inside each 128-row block, chunk by chunk (a chunk of whole blocks covers the same words
    in both layouts, so ``out`` may be ``std``'s own memory: the in-place route of ``reuse_weight_memory``)."""
    from .kplanes import BLOCK, kplanes_reason, to_kplanes

    why = kplanes_reason(std.K, std.group_size)
    if why:
        raise ValueError(f"convert: no kplanes form: {why}")
    q = std.qweight
    q_out = torch.empty_like(q) if out is None else out.qweight
    if tuple(q_out.shape) != tuple(q.shape):
        raise ValueError(f"convert: out= must be a kplanes [{q.shape[0]}, {q.shape[1]}] weight")
    rows = max(BLOCK, chunk_rows(std.K, std.N, chunk_bytes) // BLOCK * BLOCK)
    with torch.no_grad():
        for k0 in range(0, std.K, rows):
            k1 = min(std.K, k0 + rows)
            block = to_kplanes(q[k0 // 8:k1 // 8])          # the whole chunk is read before it is written
            q_out[k0 // 8:k1 // 8].copy_(block)
    return Packed("kplanes", q_out, std.qzeros, std.scales, std.group_size)


def in_place_target(w: Packed) -> Packed:
    """Views of ``w``'s own storage shaped as the standard layout (for ``convert(w, "standard", out=...)``)."""
    src = get_format(w.layout)
    if src.packed_along != "N":
        raise ValueError(f"{w.layout}: only N-packed sources are rewritten in place (K-packed ones are shared)")
    if not w.qweight.is_contiguous() or (w.qzeros is not None and not w.qzeros.is_contiguous()):
        raise ValueError("in-place conversion needs contiguous qweight/qzeros")
    K, W = w.qweight.shape
    return Packed("standard", w.qweight.view(K // 8, W * 8), w.qzeros if src.has_zeros else None, w.scales,
                  w.group_size)


def _source_to_standard(w: Packed, out: Packed | None, chunk_bytes: int) -> Packed:
    src = get_format(w.layout)
    if out is None and src.packed_along == "K" and src.zero_offset == 0:
        # already standard: K-packed codes, raw zeros packed along N (or none): share, copy nothing
        return Packed("standard", w.qweight, w.qzeros if src.has_zeros else None, w.scales, w.group_size)
    zeros = src.zeros_of(w.qzeros)                  # uint8 [K/G, N] or None (small: one row per group)
    if src.packed_along == "K":
        K, N = w.qweight.shape[0] * 8, w.qweight.shape[1]
    else:
        K, N = w.qweight.shape[0], w.qweight.shape[1] * 8
    if out is None:
        q_out = w.qweight if src.packed_along == "K" else torch.empty(
            (K // 8, N), dtype=torch.int32, device=w.qweight.device)
        z_out = None if zeros is None else torch.empty((zeros.shape[0], N // 8), dtype=torch.int32,
                                                       device=w.qweight.device)
    else:
        if out.layout != "standard" or tuple(out.qweight.shape) != (K // 8, N) or (
                (zeros is None) != (out.qzeros is None)):
            raise ValueError(f"convert: out= must be a standard-layout [{K // 8}, {N}] weight"
                             f"{' with zeros' if zeros is not None else ' without zeros'}")
        q_out, z_out = out.qweight, out.qzeros
    aliased = q_out.untyped_storage().data_ptr() == w.qweight.untyped_storage().data_ptr()
    if aliased and (q_out.data_ptr() != w.qweight.data_ptr() or not q_out.is_contiguous()
                    or not w.qweight.is_contiguous()):
        raise ValueError("convert: an aliased out= must be the contiguous standard view of the source's own memory")
    with torch.no_grad():
        if src.packed_along == "N":
            from .standard import pack_k

            rows = chunk_rows(K, N, chunk_bytes)
            for k0 in range(0, K, rows):
                k1 = min(K, k0 + rows)
                block = pack_k(src.unpack_weight(w.qweight[k0:k1]))  # read the whole chunk before writing it
                q_out[k0 // 8:k1 // 8].copy_(block)
        elif q_out is not w.qweight:
            q_out.copy_(w.qweight)
        if zeros is not None:
            from .awq import pack_n_sequential

            z_out.copy_(pack_n_sequential(zeros))
    return Packed("standard", q_out, z_out, w.scales, w.group_size)
