"""Dequantise the standard (or kplanes) layout to a dense weight [K, N] in the activation dtype (the first step of
``triton_dequant_mm``: dequant, then torch.matmul on cuBLAS / hipBLASLt for large M)."""

from __future__ import annotations

import triton
import triton.language as tl

from .decode import _dequant_tile, _kcols, _scale_zero


@triton.jit
def _dequant_kernel(qw_ptr, qz_ptr, s_ptr, w_ptr, N, K, stride_qk, stride_zg, stride_sg, stride_wk,
                    GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, KPLANES: tl.constexpr = False):
    """KPLANES: the weight is in the kplanes layout; the tile is decoded plane-major and each row stored
    at its K (``_kcols``), so the dense weight comes out in natural order either way."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    k0 = pid_k * BLOCK_K
    offs_k8 = tl.arange(0, BLOCK_K // 8)
    offs_k = _kcols(k0, BLOCK_K, KPLANES)
    packed = tl.load(qw_ptr + (k0 // 8 + offs_k8)[:, None] * stride_qk + offs_n[None, :], mask=mask_n[None, :],
                     other=0)
    s, z = _scale_zero(qz_ptr, s_ptr, k0 // GROUP_SIZE, offs_n, mask_n, stride_zg, stride_sg, HAS_ZEROS)
    w = _dequant_tile(packed, s, z, BLOCK_K, BLOCK_N, True, KPLANES)
    tl.store(w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :], w.to(w_ptr.dtype.element_ty),
             mask=mask_n[None, :])
