"""Fused W4A16 GEMM for prefill-sized M (spec ``triton_gemm_wide``): big output tiles, the whole K tile
decoded in the activation dtype, one ``tl.dot`` per K tile.

Per K tile (BLOCK_K <= the group, so one scale/zero row): the packed words [BLOCK_K/8, BLOCK_N] are
split into their eight nibbles with the 16-bit magic (``(q | 0x6400)`` as fp16 is ``1024 + q``; bf16
``0x4300``: ``128 + q``), ``q - z`` is exact in the activation dtype and the product with the group scale
is rounded once -- bit-identical to the user's ``(q - z) * s``.  The tile comes out in natural K order
(row ``8 r + i`` is nibble i of word row r), so x is one contiguous [BLOCK_M, BLOCK_K] load that the
pipeliner turns into asynchronous copies (``num_stages``), like the packed words.

Two formulations of the product, both measured on the H200 (docs/performance.md):

* TRANS off: ``acc[BM, BN] += x[BM, BK] @ w[BK, BN]``.  On Hopper the decoded weight is the right
  operand, so it is stored to shared memory and the dot is a shared x shared ``warp_group_dot``.
* TRANS on: ``acc^T[BN, BM] += w^T[BN, BK] @ x^T[BK, BM]``: the decoded weight is the left operand
  (register-A ``warp_group_dot``, pipelined with ``pendings = 3`` on Triton 3.6), x^T is read from shared
  memory.  The decoded tile still takes one layout conversion per K tile on its way to the operand
  layout; that shared-memory round trip and its barrier are what limits the kernel (ncu, performance.md).
  TRANS won every row of the H200 sweeps, so the tables list TRANS configs only.

PERSIST: a persistent grid of ``programs`` (the plan sizes it to the SM count) walks the output tiles in
grouped order with a stride, so no program ends a partial wave idle while others still start tiles.
SPLIT_K > 1 splits K over programs, reduced in the fp32 workspace by ``_store_tile`` (``decode._finish``
without the early return, so it can sit in the tile loop).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .decode import _grouped_tile, _kcols, _magic16, _release_adds, _zero_codes


@triton.jit
def _decode_tile(packed, s, zm, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, ACT: tl.constexpr,
                 EXACT_F32: tl.constexpr, PLANES_FIRST: tl.constexpr = False):
    """[BLOCK_K, BLOCK_N] ``(q - z) * s`` in ACT from packed [BLOCK_K/8, BLOCK_N] int32, ``zm = MAGIC + z``
    [BLOCK_N] in ACT and s [BLOCK_N]; word-major rows (natural K order of the standard layout), or
    plane-major with PLANES_FIRST (natural K order of a 128-row kplanes tile; ``decode._kcols``).
    EXACT_F32: the scale is not in ACT (or the interpreter runs: its 16-bit float arithmetic is not the
    GPU's): the exact product in fp32, rounded once to ACT."""
    sh = 4 * tl.arange(0, 8)
    if PLANES_FIRST:
        q = ((packed[None, :, :] >> sh[:, None, None]) & 15).to(tl.int16)      # [8, BK8, BN]
    else:
        q = ((packed[:, None, :] >> sh[None, :, None]) & 15).to(tl.int16)      # [BK8, 8, BN]
    if EXACT_F32:
        w = _magic16(q, ACT).to(tl.float32) - zm.to(tl.float32)[None, None, :]
        w = (w * s.to(tl.float32)[None, None, :]).to(ACT)
    else:
        w = _magic16(q, ACT) - zm[None, None, :]               # q - z, exact
        w = w * s[None, None, :]                                # rounded once, like the user's dequant
    return tl.reshape(w, (BLOCK_K, BLOCK_N))


@triton.jit
def _wide_tile(x_ptr, qw_ptr, qz_ptr, s_ptr, M, N, K, stride_xm, stride_qk, stride_zg, stride_sg,
               pid_m, pid_n, pid_k,
               GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
               UPCAST_DOT: tl.constexpr, TRANS: tl.constexpr, KPLANES: tl.constexpr):
    """fp32 [BLOCK_M, BLOCK_N] partial product of one output tile over this program's share of K.
    KPLANES: kplanes weight, decoded plane-major; x is the contiguous K tile when BLOCK_K = 128, also
    when BLOCK_K < 128 (the launch regroups x into each tile's decode order: ``LaunchPlan.x_kplanes``;
    read in place, its runs of BLOCK_K/8 rows measured 2.1-2.3x slower on the H200), and read at each
    decoded row's K (``decode._kcols``, runs of 16 rows) when BLOCK_K > 128."""
    ACT: tl.constexpr = x_ptr.dtype.element_ty
    EXACT_F32: tl.constexpr = UPCAST_DOT or (s_ptr.dtype.element_ty != ACT)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_r = tl.arange(0, BLOCK_K // 8)
    if TRANS:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        x_tile = x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None]           # x^T [BK, BM]
        x_rows = x_ptr + offs_m[None, :] * stride_xm
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        x_tile = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]           # x [BM, BK]
        x_rows = x_ptr + offs_m[:, None] * stride_xm
    w_tile = qw_ptr + offs_r[:, None] * stride_qk + offs_n[None, :]
    k_tiles = K // BLOCK_K
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    lo = pid_k * per_split
    hi = tl.minimum(k_tiles, lo + per_split)
    for t in range(lo, hi):
        k0 = t * BLOCK_K
        packed = tl.load(w_tile + (k0 // 8) * stride_qk, mask=mask_n[None, :], other=0)
        g = k0 // GROUP_SIZE
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0)
        zq = _zero_codes(qz_ptr, g, offs_n, mask_n, stride_zg, HAS_ZEROS)
        w = _decode_tile(packed, s, _magic16(zq, ACT), BLOCK_K, BLOCK_N, ACT, EXACT_F32, KPLANES)
        if TRANS:
            if KPLANES and BLOCK_K > 128:
                a = tl.load(x_rows + _kcols(k0, BLOCK_K, True)[:, None], mask=mask_m[None, :], other=0.0)
            else:
                a = tl.load(x_tile + k0, mask=mask_m[None, :], other=0.0)
            if UPCAST_DOT:  # interpreter only: its bf16 dot is wrong; fp32 of the same values
                acc = tl.dot(tl.trans(w.to(tl.float32)), a.to(tl.float32), acc)
            else:
                acc = tl.dot(tl.trans(w), a, acc)
        else:
            if KPLANES and BLOCK_K > 128:
                a = tl.load(x_rows + _kcols(k0, BLOCK_K, True)[None, :], mask=mask_m[:, None], other=0.0)
            else:
                a = tl.load(x_tile + k0, mask=mask_m[:, None], other=0.0)
            if UPCAST_DOT:
                acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc)
            else:
                acc = tl.dot(a, w, acc)
    if TRANS:
        acc = tl.trans(acc)
    return acc, offs_m, offs_n


@triton.jit
def _gemm_wide_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                      M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                      GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, UPCAST_DOT: tl.constexpr,
                      TRANS: tl.constexpr, PERSIST: tl.constexpr, KPLANES: tl.constexpr = False,
                      FENCE: tl.constexpr = False):
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    tiles = num_m * num_n
    if PERSIST:
        step = tl.num_programs(0)
    else:
        step = tiles
    # one loop form for both grids: on Triton 3.6 the single-trip loop compiled 256x128x64 tiles ~15-20%
    # faster than straight-line code (sweeps 1 and 2, docs/performance.md)
    for tile in range(tl.program_id(0), tiles, step):
        pid_m, pid_n = _grouped_tile(tile, num_m, num_n, GROUP_M)
        acc, offs_m, offs_n = _wide_tile(x_ptr, qw_ptr, qz_ptr, s_ptr, M, N, K, stride_xm, stride_qk,
                                         stride_zg, stride_sg, pid_m, pid_n, tl.program_id(1), GROUP_SIZE,
                                         HAS_ZEROS, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, UPCAST_DOT, TRANS,
                                         KPLANES)
        _store_tile(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N, pid_m * num_n + pid_n,
                    stride_om, SPLIT_K, HAS_BIAS, FENCE)


@triton.jit
def _store_tile(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N, tile_id, stride_om,
                SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, FENCE: tl.constexpr):
    """``decode._finish`` without its early return (which cannot sit in a loop): split-K partial sums go
    to the fp32 workspace, and the last program of a tile (ticket) writes the output and re-zeroes it."""
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
    if SPLIT_K > 1:
        ws = ws_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.atomic_add(ws, acc, mask=mask, sem="relaxed")
        # every thread's adds performed at gpu scope before the ticket (see decode._finish)
        _release_adds(ws, mask, acc, FENCE)
        tl.debug_barrier()
        ticket = tl.atomic_add(lock_ptr + tile_id, 1, sem="acq_rel")
        if ticket == SPLIT_K - 1:
            total = tl.atomic_add(ws, tl.zeros_like(acc), mask=mask, sem="acquire")   # read at L2
            tl.store(ws, tl.zeros_like(acc), mask=mask)
            tl.atomic_xchg(lock_ptr + tile_id, 0)
            if HAS_BIAS:
                total = total + bias[None, :]
            tl.store(out, total.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        if HAS_BIAS:
            acc = acc + bias[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)
