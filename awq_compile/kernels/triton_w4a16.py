"""Triton W4A16 kernels over the standard layout (qweight int32 [K/8, N] packed along K).

Three kernels:

* ``triton_gemv`` -- decode-sized M.  No matrix units: each program owns BLOCK_N columns and a
  contiguous run of groups (split-K).  The packed tile is read once with 16-byte loads along N; the
  eight nibble planes of each word are decoded one at a time (compile-time shifts/masks) and multiplied
  into fp32 by the activations.  Zero point and scale are applied once per *group* and column:
  ``sum_k x_k (q_k - z) s = s * (sum_k x_k q_k - z * sum_k x_k)``.
* ``triton_gemm`` -- tiled, ``tl.dot`` on the matrix units (mma/wgmma on NVIDIA, MFMA/WMMA on AMD),
  grouped program order for L2 reuse, optional split-K.  The weight tile is dequantised to the
  activation dtype ((q - z) * s computed exactly in fp32, rounded once, as the user's dequant does).
* ``triton_dequant`` -- writes the dequantised weight [K, N] in the activation dtype; the
  ``triton_dequant_mm`` plan entry runs it and then torch.matmul (cuBLAS / hipBLASLt) for large M.

Integer -> float without a conversion instruction: a nibble masked *in place* at bit position p
(p <= 16) and OR-ed into the exponent pattern of 2**(23-p) is the fp32 number ``2**(23-p) + q``, so one
LOP3 and one exact subtraction of ``2**(23-p) + z`` give ``q - z``.  Nibbles 5..7 are first shifted down
by 12 bits (one shift per word for three nibbles).

Variants, chosen by keys in a table's config (the registry and the AOT path see one kernel id each):

* ``PLANES`` (triton_gemm; BLOCK_K >= 128 and <= the group): eight dots of K = BLOCK_K/8, one per nibble
  plane, so the decoded weight keeps the load's shape and the compiler keeps it in the MMA operand
  layout; the decode is 16-bit (``(q | 0x6400)`` as fp16 is 1024 + q, ``0x4300`` as bf16 is 128 + q), so
  the subtract and the scale multiply are f16x2/bf16x2 instructions with no conversion, rounded exactly
  as the user's ``(q - z) * s``.  ``XPERM``: ``launch`` regroups each K tile of x plane by plane (one
  small copy) so the activation loads are vector loads; ``TRANS``: computes ``out^T = W^T x^T``.
* ``STREAM`` (triton_gemv): a contiguous run of K tiles per program with the next tile's words, scales
  and zeros loaded before the current one is decoded.
* ``FMA_DECODE`` (triton_gemv, BLOCK_M = 1): nibbles moved to bit 12/16 so ``OFF + q`` has a small
  offset (2**11 / 2**7); the loop is one FMA per element on it and the group's
  ``sum OFF(k) x_k + z sum x_k`` is taken off per column once per group.

Split-K partial sums go to an fp32 workspace with ``tl.atomic_add``; the last program to finish a tile
(counted with a per-tile atomic ticket) reads the sum back, adds bias, casts and writes the output, so
no separate reduction pass over [M, N] runs.  Workspace and tickets are left zeroed for the next call.

Constraints every config obeys (checked by :func:`prune` before a config is offered):
``BLOCK_K`` divides the group size (one scale/zero row per K tile) and K; BLOCK_K % 8 == 0.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["gemm", "gemv", "dequant", "launch", "prune", "shared_bytes_estimate", "KERNEL_ARGS"]

# Triton reads TRITON_INTERPRET when it is imported; kernels launched under it run on CPU tensors.
_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")



# ----------------------------------------------------------------------------------------------------
# decoding helpers
@triton.jit
def _nibble_consts(I: tl.constexpr):
    """(pre-shift, bit position) of nibble I in the form read by the magic-number conversion."""
    if I >= 5:
        SH: tl.constexpr = 12
    else:
        SH: tl.constexpr = 0
    P: tl.constexpr = 4 * I - SH
    return SH, P


@triton.jit
def _plane(packed, I: tl.constexpr):
    """fp32 ``2**(23-P) + q`` for nibble I of every word of ``packed`` (exact; no conversion instruction)."""
    SH, P = _nibble_consts(I)
    if SH > 0:
        src = packed >> SH
    else:
        src = packed
    MASK: tl.constexpr = 15 << P
    MAGIC: tl.constexpr = (150 - P) << 23
    bits = (src & MASK) | MAGIC
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _plane_lo(packed, I: tl.constexpr):
    """fp32 ``OFF + q`` for nibble I with a small offset (OFF = 2**11 or 2**7): the nibble is first moved
    to bit 12 or 16, so ``x * (OFF + q)`` loses at most 11 bits to the offset and the offsets can be taken
    out of the sum once per group (``FMA_DECODE``) instead of subtracted per element."""
    if I == 0:
        src = packed << 12
    elif I <= 2:
        src = packed << 8
    elif I <= 4:
        src = packed
    elif I <= 6:
        src = packed >> 8
    else:
        src = packed >> 12
    P: tl.constexpr = 12 if (I == 0 or I == 1 or I == 3 or I == 5) else 16
    MASK: tl.constexpr = 15 << P
    MAGIC: tl.constexpr = (150 - P) << 23
    bits = (src & MASK) | MAGIC
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _dequant_tile(packed, s, z, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, SCALE: tl.constexpr):
    """fp32 [BLOCK_K, BLOCK_N] exact ``(q - z) * s`` (or ``q - z`` when not SCALE) from packed
    [BLOCK_K/8, BLOCK_N] and fp32 s, z [BLOCK_N].  Rows come out in natural k order (row 8r + i is
    nibble i of word row r)."""
    i = tl.arange(0, 8)
    sh = tl.where(i >= 5, 12, 0)
    p = 4 * i - sh
    mask = tl.full((8,), 15, tl.int32) << p
    magic = (150 - p) << 23                                   # fp32 bits of 2**(23-p)
    offset = magic.to(tl.float32, bitcast=True)               # 2**(23-p)
    src = packed[:, None, :] >> sh[None, :, None]
    bits = (src & mask[None, :, None]) | magic[None, :, None]
    v = bits.to(tl.float32, bitcast=True)                     # 2**(23-p) + q
    zm = offset[:, None] + z[None, :]                         # [8, BN], exact
    w = v - zm[None, :, :]                                    # q - z, exact
    if SCALE:
        w = w * s[None, None, :]
    return tl.reshape(w, (BLOCK_K, BLOCK_N))


@triton.jit
def _scale_zero(qz_ptr, s_ptr, g, offs_n, mask_n, stride_zg, stride_sg, HAS_ZEROS: tl.constexpr):
    s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        zw = tl.load(qz_ptr + g * stride_zg + offs_n // 8, mask=mask_n, other=0)
        z = ((zw >> ((offs_n % 8) * 4)) & 0xF).to(tl.float32)
    else:
        z = tl.full(offs_n.shape, 8.0, tl.float32)
    return s, z


@triton.jit
def _tile_coords(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n, num_n) of this program in grouped order: GROUP_M row tiles share each column strip
    while it is in L2."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n, num_n


@triton.jit
def _finish(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N, tile_id,
            stride_om, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Write a [BLOCK_M, BLOCK_N] fp32 tile: directly, or through the split-K workspace + ticket."""
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_K > 1:
        ws = ws_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.atomic_add(ws, acc, mask=mask, sem="relaxed")
        # each thread's adds must be performed at gpu scope before the program takes its ticket: a release
        # (fence + no-op add) per thread after them, then a barrier, then one thread's acq_rel ticket
        tl.atomic_add(ws, tl.zeros_like(acc), mask=mask, sem="release")
        tl.debug_barrier()
        ticket = tl.atomic_add(lock_ptr + tile_id, 1, sem="acq_rel")
        if ticket == SPLIT_K - 1:
            # all partial sums are in L2 (atomics); read the total past L1 and leave the workspace zeroed for
            # the next call -- no memset launch, no separate reduction pass
            acc = tl.atomic_add(ws, tl.zeros_like(acc), mask=mask, sem="acquire")   # read at L2
            tl.store(ws, tl.zeros_like(acc), mask=mask)
            tl.atomic_xchg(lock_ptr + tile_id, 0)
        else:
            return
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------
# fused GEMM on the matrix units
@triton.jit
def _gemm_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                 M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                 GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, UPCAST_DOT: tl.constexpr,
                 SCALE_AFTER: tl.constexpr):
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
    w_tile = qw_ptr + offs_k8[:, None] * stride_qk + offs_n[None, :]
    for t in range(pid_k * per_split, min(k_tiles, (pid_k + 1) * per_split)):
        k0 = t * BLOCK_K
        a = tl.load(x_tile + k0, mask=mask_m[:, None], other=0.0)
        packed = tl.load(w_tile + (k0 // 8) * stride_qk, mask=mask_n[None, :], other=0)
        s, z = _scale_zero(qz_ptr, s_ptr, k0 // GROUP_SIZE, offs_n, mask_n, stride_zg, stride_sg, HAS_ZEROS)
        if SCALE_AFTER:
            # B = q - z (small integers, exact in fp16/bf16); the group's scale multiplies the product
            w = _dequant_tile(packed, s, z, BLOCK_K, BLOCK_N, False).to(a.dtype)
            if UPCAST_DOT:
                part = tl.dot(a.to(tl.float32), w.to(tl.float32))
            else:
                part = tl.dot(a, w)
            acc += part * s[None, :]
        else:
            w = _dequant_tile(packed, s, z, BLOCK_K, BLOCK_N, True).to(a.dtype)  # rounded once, like the user's dequant
            if UPCAST_DOT:  # interpreter only: its bf16 dot is wrong; fp32 of bf16 values is the same product
                acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc)
            else:
                acc = tl.dot(a, w, acc)
    _finish(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N, pid_m * num_n + pid_n,
            stride_om, SPLIT_K, HAS_BIAS)


# ----------------------------------------------------------------------------------------------------
# fused GEMM over nibble planes: no reshape, no float conversion instruction
@triton.jit
def _magic16(q, ACT: tl.constexpr):
    """int16 values 0..15 as the activation dtype's ``MAGIC + q`` (fp16 1024 + q, bf16 128 + q), exact:
    q goes into the low mantissa bits of a 16-bit pattern whose exponent makes one mantissa step equal 1
    -- an OR, no conversion instruction."""
    if ACT == tl.bfloat16:
        return (q | 0x4300).to(tl.bfloat16, bitcast=True)
    else:
        return (q | 0x6400).to(tl.float16, bitcast=True)


@triton.jit
def _plane_act(packed, I: tl.constexpr, ACT: tl.constexpr):
    """Nibble I of every word as ``MAGIC + q`` in the activation dtype (see ``_magic16``)."""
    if I > 0:
        src = packed >> (4 * I)
    else:
        src = packed
    return _magic16((src & 15).to(tl.int16), ACT)


@triton.jit
def _gemm_planes_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                        M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                        GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, UPCAST_DOT: tl.constexpr,
                        SCALE_AFTER: tl.constexpr, TRANS: tl.constexpr, XPERM: tl.constexpr):
    """Like ``_gemm_kernel`` but each K tile is eight dots of K = BLOCK_K/8, one per nibble plane.

    Plane i of the packed tile [BLOCK_K/8, BLOCK_N] holds rows k0 + 8r + i; it is multiplied by the
    activation columns k0 + 8r + i (a strided load of x).  The decoded weight never changes shape, so the
    compiler keeps it in the layout the matrix unit reads (no per-element shared-memory shuffle), and the
    decode is AND/OR/subtract/multiply in the activation dtype -- bit-identical to ``(q - z) * s``
    rounded once.  TRANS computes out^T = W^T x^T so the weight is the left (register-capable) operand.
    XPERM: x arrives with each K tile's columns regrouped plane by plane (``launch`` makes that copy), so
    a plane's activations are contiguous -- vector loads instead of a stride-8 gather, which matters once
    the x tile is as large as the weight tile (M >= 64).
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
    if TRANS:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        x_tile = x_ptr + offs_m[None, :] * stride_xm + offs_r[:, None] * XR     # [BK8, BM]
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        x_tile = x_ptr + offs_m[:, None] * stride_xm + offs_r[None, :] * XR     # [BM, BK8]
    k_tiles = K // BLOCK_K
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    w_tile = qw_ptr + offs_r[:, None] * stride_qk + offs_n[None, :]
    for t in range(pid_k * per_split, min(k_tiles, (pid_k + 1) * per_split)):
        k0 = t * BLOCK_K
        packed = tl.load(w_tile + (k0 // 8) * stride_qk, mask=mask_n[None, :], other=0)
        g = k0 // GROUP_SIZE
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0)
        if HAS_ZEROS:
            zw = tl.load(qz_ptr + g * stride_zg + offs_n // 8, mask=mask_n, other=0)
            zq = ((zw >> ((offs_n % 8) * 4)) & 15).to(tl.int16)
        else:
            zq = tl.full(offs_n.shape, 8, tl.int16)
        zm = _magic16(zq, ACT)                                   # MAGIC + z
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
                a = tl.load(x_tile + (k0 + i * XI), mask=mask_m[None, :], other=0.0)
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
                a = tl.load(x_tile + (k0 + i * XI), mask=mask_m[:, None], other=0.0)
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
            stride_om, SPLIT_K, HAS_BIAS)


# ----------------------------------------------------------------------------------------------------
# split-K GEMV for decode
@triton.jit
def _gemv_tile(d, packed, z, x_row, x_rows, k0, offs_r, mask_m, BLOCK_M: tl.constexpr, FMA_DECODE: tl.constexpr):
    """Add one K tile of packed words to the GEMV partial ``d``: [BK8, BN] per-thread rows of x * (q - z)
    for BLOCK_M == 1 (``x_row`` points at the row; with FMA_DECODE x * (OFF + q), see ``_plane_lo``),
    else [BM, BN] sums over the tile (``x_rows`` [BM, BK8] pointers)."""
    for i in tl.static_range(8):
        if FMA_DECODE and BLOCK_M == 1:
            xi = tl.load(x_row + k0 + i + offs_r * 8).to(tl.float32)
            d += xi[:, None] * _plane_lo(packed, i)                          # x * (OFF + q)
        else:
            SH, P = _nibble_consts(i)
            OFF = 1.0 * (1 << (23 - P))
            w = _plane(packed, i) - (z + OFF)[None, :]                       # [BK8, BN] = q - z
            if BLOCK_M == 1:
                xi = tl.load(x_row + k0 + i + offs_r * 8).to(tl.float32)
                d += xi[:, None] * w
            else:
                xi = tl.load(x_rows + (k0 + i), mask=mask_m[:, None], other=0.0).to(tl.float32)
                d += tl.sum(xi[:, :, None] * w[None, :, :], axis=1)
    return d


@triton.jit
def _gemv_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                 M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                 GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 SPLIT_K: tl.constexpr, FMA_DECODE: tl.constexpr = False):
    """FMA_DECODE (BLOCK_M == 1): one FMA per weight element on ``OFF_i + q`` (see ``_plane_lo``); the
    group's ``sum_k OFF(k) x_k + z * sum_k x_k`` is subtracted per column once per group, computed from
    one contiguous load of the group's activations."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_r = tl.arange(0, BLOCK_K // 8)
    offs_g = tl.arange(0, GROUP_SIZE)
    # offset of k's nibble in _plane_lo: 2**11 for k % 8 in (0, 1, 3, 5), else 2**7
    kk = offs_g % 8
    off_g = tl.where((kk == 0) | (kk == 1) | (kk == 3) | (kk == 5), 2048.0, 128.0)
    SUB: tl.constexpr = GROUP_SIZE // BLOCK_K          # K tiles per group
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_groups = K // GROUP_SIZE
    per_split = tl.cdiv(n_groups, SPLIT_K)
    w_tile = qw_ptr + offs_r[:, None] * stride_qk + offs_n[None, :]
    x_rows = x_ptr + offs_m[:, None] * stride_xm + offs_r[None, :] * 8
    for g in range(pid_k * per_split, min(n_groups, (pid_k + 1) * per_split)):
        s, z = _scale_zero(qz_ptr, s_ptr, g, offs_n, mask_n, stride_zg, stride_sg, HAS_ZEROS)
        if BLOCK_M == 1:
            d = tl.zeros((BLOCK_K // 8, BLOCK_N), dtype=tl.float32)    # per-thread rows, reduced per group
        else:
            d = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for sub in range(SUB):  # a run-time loop: one K tile of packed words live at a time (no spills)
            k0 = g * GROUP_SIZE + sub * BLOCK_K
            packed = tl.load(w_tile + (k0 // 8) * stride_qk, mask=mask_n[None, :], other=0)
            d = _gemv_tile(d, packed, z, x_ptr + pid_m * stride_xm, x_rows, k0, offs_r, mask_m, BLOCK_M,
                           FMA_DECODE)
        if BLOCK_M == 1:
            d = tl.sum(d, axis=0)[None, :]
            if FMA_DECODE:
                xg = tl.load(x_ptr + pid_m * stride_xm + g * GROUP_SIZE + offs_g).to(tl.float32)
                d = d - (tl.sum(xg * off_g, axis=0) + z * tl.sum(xg, axis=0))[None, :]
        acc += s[None, :] * d
    _finish(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N,
            pid_m * tl.num_programs(0) + pid_n, stride_om, SPLIT_K, HAS_BIAS)


@triton.jit
def _gemv_stream_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                        M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                        GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        SPLIT_K: tl.constexpr):
    """GEMV over a contiguous run of K tiles with the next tile's words, scales and zeros loaded before the
    current tile is decoded (register double buffering), so every thread keeps loads in flight while it
    computes instead of waiting one memory round trip per tile."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    BK8: tl.constexpr = BLOCK_K // 8
    offs_r = tl.arange(0, BK8)
    k_tiles = K // BLOCK_K
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    t0 = pid_k * per_split
    t1 = min(k_tiles, t0 + per_split)
    w_tile = qw_ptr + offs_r[:, None] * stride_qk + offs_n[None, :]
    x_rows = x_ptr + offs_m[:, None] * stride_xm + offs_r[None, :] * 8
    # tile indices are clamped into range (the prefetch past the last tile re-reads it from cache)
    t_first = min(t0, k_tiles - 1)
    nxt = tl.load(w_tile + t_first * BK8 * stride_qk, mask=mask_n[None, :], other=0)
    s_n, z_n = _scale_zero(qz_ptr, s_ptr, t_first * BLOCK_K // GROUP_SIZE, offs_n, mask_n,
                           stride_zg, stride_sg, HAS_ZEROS)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(t0, t1):
        packed = nxt
        s = s_n
        z = z_n
        t_next = min(t + 1, t1 - 1)
        nxt = tl.load(w_tile + t_next * BK8 * stride_qk, mask=mask_n[None, :], other=0)
        s_n, z_n = _scale_zero(qz_ptr, s_ptr, t_next * BLOCK_K // GROUP_SIZE, offs_n, mask_n,
                               stride_zg, stride_sg, HAS_ZEROS)
        if BLOCK_M == 1:
            d = tl.zeros((BK8, BLOCK_N), dtype=tl.float32)
        else:
            d = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        d = _gemv_tile(d, packed, z, x_ptr + pid_m * stride_xm, x_rows, t * BLOCK_K, offs_r, mask_m, BLOCK_M,
                       False)
        if BLOCK_M == 1:
            d = tl.sum(d, axis=0)[None, :]
        acc += s[None, :] * d
    _finish(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N,
            pid_m * tl.num_programs(0) + pid_n, stride_om, SPLIT_K, HAS_BIAS)


# ----------------------------------------------------------------------------------------------------
# dequantise to a dense weight (for dequant-then-BLAS at large M)
@triton.jit
def _dequant_kernel(qw_ptr, qz_ptr, s_ptr, w_ptr, N, K, stride_qk, stride_zg, stride_sg, stride_wk,
                    GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    k0 = pid_k * BLOCK_K
    offs_k8 = tl.arange(0, BLOCK_K // 8)
    offs_k = tl.arange(0, BLOCK_K)
    packed = tl.load(qw_ptr + (k0 // 8 + offs_k8)[:, None] * stride_qk + offs_n[None, :], mask=mask_n[None, :],
                     other=0)
    s, z = _scale_zero(qz_ptr, s_ptr, k0 // GROUP_SIZE, offs_n, mask_n, stride_zg, stride_sg, HAS_ZEROS)
    w = _dequant_tile(packed, s, z, BLOCK_K, BLOCK_N, True)
    tl.store(w_ptr + (k0 + offs_k)[:, None] * stride_wk + offs_n[None, :], w.to(w_ptr.dtype.element_ty),
             mask=mask_n[None, :])


KERNELS = {"triton_gemm": _gemm_kernel, "triton_gemv": _gemv_kernel, "triton_dequant_mm": _dequant_kernel}
# Config keys that are launch options rather than constexpr kernel arguments.
LAUNCH_KEYS = ("num_warps", "num_stages", "waves_per_eu", "matrix_instr_nonkdim", "kpack", "maxnreg")
_BACKEND_ONLY = {"waves_per_eu": "hip", "matrix_instr_nonkdim": "hip", "kpack": "hip", "maxnreg": "cuda"}


def launch_options(cfg: dict, backend: str) -> dict:
    """The config's launch options that a ``backend`` ("cuda" or "hip") compiler takes."""
    return {k: cfg[k] for k in LAUNCH_KEYS if k in cfg and _BACKEND_ONLY.get(k, backend) == backend}
KERNEL_ARGS = {"triton_gemm": ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "GROUP_M", "SCALE_AFTER"),
               "triton_gemv": ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "FMA_DECODE"),
               "triton_dequant_mm": ("BLOCK_N", "BLOCK_K")}


def shared_bytes_estimate(kernel_id: str, cfg: dict, act_bytes: int = 2) -> int:
    """Upper estimate of shared/LDS bytes for a config (pipelined A and packed-B tiles per stage).

    Only a pruning guide: ``check-target`` reads the real figure from the compiled kernel.
    """
    bm, bn, bk = cfg.get("BLOCK_M", 1), cfg["BLOCK_N"], cfg["BLOCK_K"]
    stages = max(1, cfg.get("num_stages", 2))
    if kernel_id == "triton_dequant_mm":
        return 0
    if kernel_id == "triton_gemv":
        return 0 if stages <= 1 else (stages - 1) * (bm * bk * act_bytes + bk * bn // 2)
    per_stage = bm * bk * act_bytes + bk * bn // 2
    # the dequantised B operand is staged through shared memory once for the dot
    return max(stages - 1, 1) * per_stage + bk * bn * act_bytes


def prune(kernel_id: str, cfg: dict, *, K: int, N: int, group_size: int, shared_limit: int,
          act_bytes: int = 2) -> str | None:
    """None if ``cfg`` is legal for this problem and target's memory, else the reason it is dropped.

    Optional shape conditions in a config (``K_MIN``, ``K_MAX``, ``N_MIN``, ``N_MAX``, inclusive) let a
    table keep different tiles per shape class under one M bucket.
    """
    bk = cfg["BLOCK_K"]
    for key, value, cmp in (("K_MIN", K, lambda v, b: v >= b), ("K_MAX", K, lambda v, b: v <= b),
                            ("N_MIN", N, lambda v, b: v >= b), ("N_MAX", N, lambda v, b: v <= b)):
        if key in cfg and not cmp(value, cfg[key]):
            return f"{key}={cfg[key]} excludes {key[0]}={value}"
    if bk % 8 or bk < 16:
        return f"BLOCK_K={bk} must be a multiple of 8 and at least 16"
    if bk > group_size or group_size % bk:
        return f"BLOCK_K={bk} must divide the group size {group_size} (one scale row per K tile)"
    if K % bk:
        return f"BLOCK_K={bk} does not divide K={K}"
    split = cfg.get("SPLIT_K", 1)
    if cfg.get("FMA_DECODE") and (group_size & (group_size - 1) or cfg.get("BLOCK_M", 1) != 1):
        return f"FMA_DECODE needs BLOCK_M=1 and a power-of-two group size, not {group_size}"
    if cfg.get("PLANES") and bk < 128:
        return f"PLANES needs BLOCK_K >= 128 (a dot of K = BLOCK_K/8 >= 16 per nibble plane), not {bk}"
    if kernel_id == "triton_gemv" and not cfg.get("STREAM") and split > K // group_size:
        return f"SPLIT_K={split} exceeds the {K // group_size} groups"
    if split > K // bk:
        return f"SPLIT_K={split} exceeds the {K // bk} K tiles"
    if kernel_id == "triton_gemm" and cfg["BLOCK_M"] < 16:
        return "tl.dot needs BLOCK_M >= 16"
    need = shared_bytes_estimate(kernel_id, cfg, act_bytes)
    if shared_limit and need > shared_limit:
        return f"needs ~{need} B of shared memory, target has {shared_limit} B"
    return None


class _Workspace:
    """Per-device fp32 split-K workspace and tile tickets, kept zeroed by the kernels themselves."""

    def __init__(self):
        self._bufs: dict = {}

    def get(self, device, numel: int, tiles: int):
        key = (device.type, device.index)
        ws, lock = self._bufs.get(key, (None, None))
        if ws is None or ws.numel() < numel or lock.numel() < tiles:
            if torch.cuda.is_available() and device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("awq_compile: split-K workspace must grow during CUDA-graph capture; "
                                   "run the largest batch once eagerly before capturing")
            n = max(numel, 0 if ws is None else ws.numel())
            t = max(tiles, 0 if lock is None else lock.numel())
            ws = torch.zeros(max(n, 1), dtype=torch.float32, device=device)
            lock = torch.zeros(max(t, 1), dtype=torch.int32, device=device)
            self._bufs[key] = (ws, lock)
        return ws, lock


_WORKSPACE = None


def _workspace() -> _Workspace:
    global _WORKSPACE
    if _WORKSPACE is None:
        _WORKSPACE = _Workspace()
    return _WORKSPACE


# Split-K is only planned for small M; reserving for this many rows up front keeps the workspace from being
# (re)allocated inside a CUDA-graph pool (cudagraph trees refuse allocations that outlive a graph).
RESERVE_ROWS = 256


def reserve_workspace(device, N: int, rows: int = RESERVE_ROWS) -> None:
    """Allocate the split-K workspace for ``rows`` x ``N`` now (call outside graph capture/warm-up)."""
    _workspace().get(torch.device(device), rows * N, triton.cdiv(rows, 16) * triton.cdiv(N, 16))


def _opts(cfg: dict) -> dict:
    return launch_options(cfg, "hip" if torch.version.hip else "cuda")


def dequant(qweight, qzeros, scales, group_size: int, cfg: dict, dtype, out=None):
    """Dense [K, N] weight of ``dtype`` from the standard layout (``triton_dequant_mm``'s first step)."""
    K8, N = qweight.shape
    K = K8 * 8
    w = out if out is not None else torch.empty((K, N), dtype=dtype, device=qweight.device)
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    _dequant_kernel[(triton.cdiv(N, bn), K // bk)](
        qweight, qzeros if qzeros is not None else qweight, scales, w, N, K, qweight.stride(0),
        qzeros.stride(0) if qzeros is not None else 0, scales.stride(0), w.stride(0),
        GROUP_SIZE=group_size, HAS_ZEROS=qzeros is not None, BLOCK_N=bn, BLOCK_K=bk, **_opts(cfg))
    return w


def launch(kernel_id: str, x2d, qweight, qzeros, scales, bias, out, group_size: int, cfg: dict):
    """Run ``kernel_id`` with ``cfg`` on 2-D contiguous-last-dim x [M, K]; writes out [M, N]."""
    M, K = x2d.shape
    N = qweight.shape[1]
    if kernel_id == "triton_dequant_mm":
        w = dequant(qweight, qzeros, scales, group_size, cfg, x2d.dtype)
        if bias is None:
            return torch.mm(x2d, w, out=out)
        return torch.addmm(bias, x2d, w, out=out)
    bm, bn, split = cfg.get("BLOCK_M", 1), cfg["BLOCK_N"], cfg.get("SPLIT_K", 1)
    tiles_m, tiles_n = triton.cdiv(M, bm), triton.cdiv(N, bn)
    if split > 1:
        ws, lock = _workspace().get(x2d.device, M * N, tiles_m * tiles_n)
    else:
        ws, lock = out, out  # unused
    consts = {k: cfg[k] for k in KERNEL_ARGS[kernel_id] if k in cfg}
    consts.setdefault("SPLIT_K", 1)
    if "FMA_DECODE" in consts:
        consts["FMA_DECODE"] = bool(consts["FMA_DECODE"])
    fn = KERNELS[kernel_id]
    if kernel_id == "triton_gemm":
        consts.setdefault("GROUP_M", 8)
        consts["SCALE_AFTER"] = bool(consts.get("SCALE_AFTER", 0))
        consts["UPCAST_DOT"] = _INTERPRETER and x2d.dtype == torch.bfloat16
        if cfg.get("PLANES"):
            fn = _gemm_planes_kernel
            consts["TRANS"] = bool(cfg.get("TRANS", 0))
            consts["XPERM"] = bool(cfg.get("XPERM", 0))
            if consts["XPERM"]:
                bk = cfg["BLOCK_K"]
                x2d = x2d.reshape(M, K // bk, bk // 8, 8).transpose(2, 3).reshape(M, K)   # a copy
        grid = (tiles_m * tiles_n, split)
    else:
        consts.setdefault("BLOCK_M", 1)
        if cfg.get("STREAM"):
            fn = _gemv_stream_kernel
        grid = (tiles_n, split, tiles_m)
    fn[grid](
        x2d, qweight, qzeros if qzeros is not None else qweight, scales,
        bias if bias is not None else scales, out, ws, lock,
        M, N, K, x2d.stride(0), qweight.stride(0),
        qzeros.stride(0) if qzeros is not None else 0, scales.stride(0), out.stride(0),
        GROUP_SIZE=group_size, HAS_ZEROS=qzeros is not None, HAS_BIAS=bias is not None,
        **consts, **_opts(cfg))
    return out


def gemm(x2d, qweight, qzeros, scales, bias, group_size, cfg, out=None):
    out = out if out is not None else torch.empty((x2d.shape[0], qweight.shape[1]), dtype=x2d.dtype, device=x2d.device)
    return launch("triton_gemm", x2d, qweight, qzeros, scales, bias, out, group_size, cfg)


def gemv(x2d, qweight, qzeros, scales, bias, group_size, cfg, out=None):
    out = out if out is not None else torch.empty((x2d.shape[0], qweight.shape[1]), dtype=x2d.dtype, device=x2d.device)
    return launch("triton_gemv", x2d, qweight, qzeros, scales, bias, out, group_size, cfg)
