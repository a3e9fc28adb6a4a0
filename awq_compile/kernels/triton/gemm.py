"""Fused W4A16 GEMM on the matrix units (mma/wgmma on NVIDIA, MFMA/WMMA on AMD).

* ``_gemm_kernel`` (spec ``triton_gemm``): tiled ``tl.dot``, grouped program order for L2 reuse, optional
  split-K.  The weight tile is dequantised to the activation dtype ((q - z) * s computed exactly in
  fp32, rounded once, as the user's dequant does); SCALE_AFTER multiplies the group scale into the
  product instead.
* ``_gemm_planes_kernel`` (spec ``triton_gemm_planes``; BLOCK_K >= 128 and <= the group): eight dots of
  K = BLOCK_K/8, one per nibble plane, so the decoded weight keeps the load's shape and the compiler
  keeps it in the MMA operand layout; 16-bit decode, rounded exactly as the user's ``(q - z) * s``.
  XPERM: the launch plan regroups each K tile of x plane by plane (one small copy) so the activation
  loads are vector loads; TRANS computes ``out^T = W^T x^T``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .decode import (_dequant_tile, _finish, _kcols, _krows, _magic16, _plane_act, _scale_zero, _tile_coords,
                     _zero_codes)


@triton.jit
def _gemm_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                 M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                 GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, UPCAST_DOT: tl.constexpr,
                 SCALE_AFTER: tl.constexpr, KPLANES: tl.constexpr = False,
                 FENCE: tl.constexpr = False):
    """KPLANES: the weight is in the kplanes layout: the tile is decoded plane-major; x is the contiguous
    K tile for BLOCK_K <= 128 (for BLOCK_K < 128 the launch regroups x into each tile's decode order,
    ``LaunchPlan.x_kplanes``) and read at each decoded row's K (``decode._kcols``) for BLOCK_K > 128."""
    pid_m, pid_n, num_n = _tile_coords(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_k8 = tl.arange(0, BLOCK_K // 8)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_tiles = K // BLOCK_K
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    x_tile = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    w_tile = qw_ptr + offs_k8[:, None] * stride_qk + offs_n[None, :]
    for t in range(pid_k * per_split, min(k_tiles, (pid_k + 1) * per_split)):
        k0 = t * BLOCK_K
        if KPLANES and BLOCK_K > 128:
            a = tl.load(x_rows + _kcols(k0, BLOCK_K, True)[None, :], mask=mask_m[:, None], other=0.0)
        else:
            a = tl.load(x_tile + k0, mask=mask_m[:, None], other=0.0)
        packed = tl.load(w_tile + (k0 // 8) * stride_qk, mask=mask_n[None, :], other=0)
        s, z = _scale_zero(qz_ptr, s_ptr, k0 // GROUP_SIZE, offs_n, mask_n, stride_zg, stride_sg, HAS_ZEROS)
        if SCALE_AFTER:
            # B = q - z (small integers, exact in fp16/bf16); the group's scale multiplies the product
            w = _dequant_tile(packed, s, z, BLOCK_K, BLOCK_N, False, KPLANES).to(a.dtype)
            if UPCAST_DOT:
                part = tl.dot(a.to(tl.float32), w.to(tl.float32))
            else:
                part = tl.dot(a, w)
            acc += part * s[None, :]
        else:
            w = _dequant_tile(packed, s, z, BLOCK_K, BLOCK_N, True, KPLANES).to(a.dtype)  # rounded once, like the user's dequant
            if UPCAST_DOT:  # interpreter only: its bf16 dot is wrong; fp32 of bf16 values is the same product
                acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc)
            else:
                acc = tl.dot(a, w, acc)
    _finish(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N, pid_m * num_n + pid_n,
            stride_om, SPLIT_K, HAS_BIAS, FENCE)


@triton.jit
def _gemm_planes_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                        M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                        GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, UPCAST_DOT: tl.constexpr,
                        SCALE_AFTER: tl.constexpr, TRANS: tl.constexpr, XPERM: tl.constexpr,
                        KPLANES: tl.constexpr = False,
                        FENCE: tl.constexpr = False):
    """Like ``_gemm_kernel`` but each K tile is eight dots of K = BLOCK_K/8, one per nibble plane.

    Plane i of the packed tile [BLOCK_K/8, BLOCK_N] holds rows k0 + 8r + i; it is multiplied by the
    activation columns k0 + 8r + i (a strided load of x).  The decoded weight never changes shape, so the
    compiler keeps it in the layout the matrix unit reads (no per-element shared-memory shuffle), and the
    decode is AND/OR/subtract/multiply in the activation dtype -- bit-identical to ``(q - z) * s``
    rounded once.  TRANS computes out^T = W^T x^T so the weight is the left (register-capable) operand.
    XPERM: x arrives with each K tile's columns regrouped plane by plane (``launch`` makes that copy), so
    a plane's activations are contiguous -- vector loads instead of a stride-8 gather, which matters once
    the x tile is as large as the weight tile (M >= 64).  KPLANES: the weight is in the kplanes layout,
    whose plane i already holds contiguous K rows (``decode._krows`` + 16 i): x is read as it is (the
    launch regroups nothing).
    """
    ACT: tl.constexpr = x_ptr.dtype.element_ty
    pid_m, pid_n, num_n = _tile_coords(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    BK8: tl.constexpr = BLOCK_K // 8
    offs_r = tl.arange(0, BK8)
    if XPERM:
        XR: tl.constexpr = 1      # column of plane i, row r of the tile: k0 + i * BK8 + r
        XI: tl.constexpr = BK8
    else:
        XR: tl.constexpr = 8      # k0 + 8 r + i
        XI: tl.constexpr = 1
    if KPLANES:
        XI2: tl.constexpr = 16
    else:
        XI2: tl.constexpr = XI
    if TRANS:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        x_tile = x_ptr + offs_m[None, :] * stride_xm     # [1, BM]; + K rows [BK8, 1]
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        x_tile = x_ptr + offs_m[:, None] * stride_xm     # [BM, 1]; + K rows [1, BK8]
    k_tiles = K // BLOCK_K
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    w_tile = qw_ptr + offs_r[:, None] * stride_qk + offs_n[None, :]
    for t in range(pid_k * per_split, min(k_tiles, (pid_k + 1) * per_split)):
        k0 = t * BLOCK_K
        if KPLANES:
            xk = _krows(k0, BLOCK_K, True)
        else:
            xk = k0 + offs_r * XR
        packed = tl.load(w_tile + (k0 // 8) * stride_qk, mask=mask_n[None, :], other=0)
        g = k0 // GROUP_SIZE
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0)
        zm = _magic16(_zero_codes(qz_ptr, g, offs_n, mask_n, stride_zg, HAS_ZEROS), ACT)                                   # MAGIC + z
        if SCALE_AFTER:
            if TRANS:
                part = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            else:
                part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for i in tl.static_range(8):
            if UPCAST_DOT or s_ptr.dtype.element_ty != ACT:
                # scales in another dtype than x (or the interpreter, whose bf16 arithmetic is wrong): the
                # exact fp32 product rounded once to x's dtype -- what the fp16/bf16 path computes too
                w = _plane_act(packed, i, ACT).to(tl.float32) - zm.to(tl.float32)[None, :]
                if not SCALE_AFTER:
                    w = w * s.to(tl.float32)[None, :]
                w = w.to(ACT)
            else:
                w = _plane_act(packed, i, ACT) - zm[None, :]      # q - z, exact
                if not SCALE_AFTER:
                    w = w * s[None, :]                           # rounded once, like the user's dequant
            if TRANS:
                a = tl.load(x_tile + (xk + i * XI2)[:, None], mask=mask_m[None, :], other=0.0)
                if UPCAST_DOT:
                    a = a.to(tl.float32)
                    wt = tl.trans(w.to(tl.float32))
                else:
                    wt = tl.trans(w)
                if SCALE_AFTER:
                    part = tl.dot(wt, a, part)
                else:
                    acc = tl.dot(wt, a, acc)
            else:
                a = tl.load(x_tile + (xk + i * XI2)[None, :], mask=mask_m[:, None], other=0.0)
                if UPCAST_DOT:
                    a = a.to(tl.float32)
                    w = w.to(tl.float32)
                if SCALE_AFTER:
                    part = tl.dot(a, w, part)
                else:
                    acc = tl.dot(a, w, acc)
        if SCALE_AFTER:
            if TRANS:
                acc += part * s.to(tl.float32)[:, None]
            else:
                acc += part * s.to(tl.float32)[None, :]
    if TRANS:
        acc = tl.trans(acc)
    _finish(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N, pid_m * num_n + pid_n,
            stride_om, SPLIT_K, HAS_BIAS, FENCE)
