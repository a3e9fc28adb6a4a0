"""compressed-tensors ``pack-quantized`` 4-bit weights (llm-compressor's W4A16 / W4A16_ASYM).

::

    weight_packed      int32 [N, K/8]    packed along K: row n, word j holds columns 8j .. 8j+7 of K,
                                         column 8j+i in nibble i; stored value = signed code + 8
    weight_scale       float [N, K/G]    (G = K for the "channel" strategy)
    weight_zero_point  int32 [N/8, K/G]  asymmetric only: packed along N (dim 0), nibble i = row 8j+i,
                                         stored value = signed zero point + 8
    weight_shape       int   [2]         the float weight's shape, [N, K]

The weight is ``(stored_code - stored_zero) * scale`` (zero 8 when symmetric), so the transposes of
``weight_packed`` and ``weight_zero_point`` are exactly the standard layout of :mod:`.standard`:
conversion is a transpose, no nibble moves; the result is a ``Packed`` in the ``standard`` layout.
"""

from __future__ import annotations

import torch

from .packed import Packed

__all__ = ["check_pack_quantized", "pack_quantized_to_standard", "standard_to_pack_quantized"]


def check_pack_quantized(weight_packed, weight_scale, weight_zero_point, weight_shape, *,
                         symmetric: bool, group_size: int | None) -> str | None:
    """None if the tensors are a valid 4-bit pack-quantized [N, K] weight, else what is wrong (naming the tensor)."""
    if weight_shape is not None:
        if weight_shape.numel() != 2:
            return f"weight_shape: expected 2 values [N, K], found {weight_shape.tolist()}"
        N, K = (int(v) for v in weight_shape.tolist())
    else:
        N, K = weight_packed.shape[0], weight_packed.shape[1] * 8
    if K % 8 or N % 8:
        return f"weight_shape [N={N}, K={K}]: both must be multiples of 8 for 4-bit packing"
    if weight_packed.dtype != torch.int32 or tuple(weight_packed.shape) != (N, K // 8):
        return (f"weight_packed: expected int32 {(N, K // 8)} (4-bit codes of an [{N}, {K}] weight), "
                f"found {weight_packed.dtype} {tuple(weight_packed.shape)}")
    G = K if group_size in (None, -1) else group_size
    if K % G:
        return f"group_size {G} does not divide K={K}"
    if not weight_scale.is_floating_point() or tuple(weight_scale.shape) != (N, K // G):
        return (f"weight_scale: expected float {(N, K // G)} (group size {G}), "
                f"found {weight_scale.dtype} {tuple(weight_scale.shape)}")
    if symmetric:
        if weight_zero_point is not None and weight_zero_point.dtype == torch.int32:
            return "weight_zero_point: present, but the scheme is symmetric"
    else:
        if weight_zero_point is None:
            return "weight_zero_point: missing, but the scheme is asymmetric"
        if weight_zero_point.dtype != torch.int32 or tuple(weight_zero_point.shape) != (N // 8, K // G):
            return (f"weight_zero_point: expected int32 {(N // 8, K // G)} (packed along N), "
                    f"found {weight_zero_point.dtype} {tuple(weight_zero_point.shape)}")
    return None


def pack_quantized_to_standard(weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                               weight_zero_point: torch.Tensor | None) -> Packed:
    """Standard layout (qweight [K/8, N], qzeros [K/G, N/8] or None, scales [K/G, N]) by transposition."""
    N, K8 = weight_packed.shape
    qweight = weight_packed.t().contiguous()
    scales = weight_scale.t().contiguous()
    qzeros = None if weight_zero_point is None else weight_zero_point.t().contiguous()
    return Packed("standard", qweight, qzeros, scales, K8 * 8 // scales.shape[0])


def standard_to_pack_quantized(w: Packed) -> dict[str, torch.Tensor]:
    """The inverse, for writers: the tensors of one module, named as compressed-tensors names them."""
    if w.layout != "standard":
        raise ValueError(f"expected a standard-layout weight, found {w.layout!r}")
    out = {"weight_packed": w.qweight.t().contiguous(), "weight_scale": w.scales.t().contiguous(),
           "weight_shape": torch.tensor([w.N, w.K])}
    if w.qzeros is not None:
        out["weight_zero_point"] = w.qzeros.t().contiguous()
    return out
