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

STREAM_K (with PERSIST): hybrid Stream-K (``_stream_k``).  The grid is a fixed number of programs (PERSIST
per SM of the target); the last partial wave of tiles (and STREAM_K - 1 full waves before it) is cut
into equal contiguous shares of (tile, K tile) iterations, one per program, the other tiles run whole;
a tile split between programs is summed in a fixed order from per-contributor fp32 slots by the program
that takes its last ticket (``_stream_k_fixup``: deterministic, each output tile written once).  So 112
tiles on 132 SMs (4096x14336, M = 256, 256x128 tiles) keep every SM busy for 54-55 K tiles instead of
112 SMs for 64, and 32 tiles (14336x4096) run on all 132 SMs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .decode import _grouped_tile, _magic16, _zero_codes


@triton.jit
def _decode_tile(packed, s, zm, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, ACT: tl.constexpr,
                 EXACT_F32: tl.constexpr):
    """[BLOCK_K, BLOCK_N] ``(q - z) * s`` in ACT from packed [BLOCK_K/8, BLOCK_N] int32, ``zm = MAGIC + z``
    [BLOCK_N] in ACT and s [BLOCK_N]; natural K order.  EXACT_F32: the scale is not in ACT (or the
    interpreter runs: its 16-bit float arithmetic is not the GPU's): the exact product in fp32, rounded
    once to ACT."""
    sh = 4 * tl.arange(0, 8)
    q = ((packed[:, None, :] >> sh[None, :, None]) & 15).to(tl.int16)
    if EXACT_F32:
        w = _magic16(q, ACT).to(tl.float32) - zm.to(tl.float32)[None, None, :]
        w = (w * s.to(tl.float32)[None, None, :]).to(ACT)
    else:
        w = _magic16(q, ACT) - zm[None, None, :]               # q - z, exact
        w = w * s[None, None, :]                                # rounded once, like the user's dequant
    return tl.reshape(w, (BLOCK_K, BLOCK_N))


@triton.jit
def _wide_tile(x_ptr, qw_ptr, qz_ptr, s_ptr, M, N, K, stride_xm, stride_qk, stride_zg, stride_sg,
               pid_m, pid_n, lo, hi,
               GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               UPCAST_DOT: tl.constexpr, TRANS: tl.constexpr):
    """fp32 [BLOCK_M, BLOCK_N] partial product of one output tile over K tiles ``lo .. hi - 1``."""
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
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        x_tile = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]           # x [BM, BK]
    w_tile = qw_ptr + offs_r[:, None] * stride_qk + offs_n[None, :]
    for t in range(lo, hi):
        k0 = t * BLOCK_K
        packed = tl.load(w_tile + (k0 // 8) * stride_qk, mask=mask_n[None, :], other=0)
        g = k0 // GROUP_SIZE
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0)
        zq = _zero_codes(qz_ptr, g, offs_n, mask_n, stride_zg, HAS_ZEROS)
        w = _decode_tile(packed, s, _magic16(zq, ACT), BLOCK_K, BLOCK_N, ACT, EXACT_F32)
        if TRANS:
            a = tl.load(x_tile + k0, mask=mask_m[None, :], other=0.0)
            if UPCAST_DOT:  # interpreter only: its bf16 dot is wrong; fp32 of the same values
                acc = tl.dot(tl.trans(w.to(tl.float32)), a.to(tl.float32), acc)
            else:
                acc = tl.dot(tl.trans(w), a, acc)
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
                      TRANS: tl.constexpr, PERSIST: tl.constexpr, STREAM_K: tl.constexpr):
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    tiles = num_m * num_n
    k_tiles = K // BLOCK_K
    if STREAM_K:
        _stream_k(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr, M, N, K, stride_xm,
                  stride_qk, stride_zg, stride_sg, stride_om, num_m, num_n, tiles, k_tiles, GROUP_SIZE,
                  HAS_ZEROS, HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST_DOT, TRANS, STREAM_K)
    else:
        if PERSIST:
            step = tl.num_programs(0)
        else:
            step = tiles
        # one loop form for both grids: on Triton 3.6 the single-trip loop compiled 256x128x64 tiles ~15-20%
        # faster than straight-line code (sweeps 1 and 2, docs/performance.md)
        for tile in range(tl.program_id(0), tiles, step):
            pid_m, pid_n = _grouped_tile(tile, num_m, num_n, GROUP_M)
            per_split = tl.cdiv(k_tiles, SPLIT_K)
            lo = tl.program_id(1) * per_split
            hi = tl.minimum(k_tiles, lo + per_split)
            acc, offs_m, offs_n = _wide_tile(x_ptr, qw_ptr, qz_ptr, s_ptr, M, N, K, stride_xm, stride_qk,
                                             stride_zg, stride_sg, pid_m, pid_n, lo, hi, GROUP_SIZE,
                                             HAS_ZEROS, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST_DOT, TRANS)
            _store_tile(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N, pid_m * num_n + pid_n,
                        stride_om, SPLIT_K, HAS_BIAS)


@triton.jit
def _share_start(p, sk_iters, progs):
    """First (tile, K tile) iteration of program p's share of the Stream-K region: ``p * sk_iters // progs``
    (shares of equal size to within one iteration), computed in int64."""
    return ((p * sk_iters.to(tl.int64)) // progs).to(tl.int32)


@triton.jit
def _stream_k(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr, M, N, K, stride_xm,
              stride_qk, stride_zg, stride_sg, stride_om, num_m, num_n, tiles, k_tiles,
              GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
              UPCAST_DOT: tl.constexpr, TRANS: tl.constexpr, STREAM_K: tl.constexpr):
    """Hybrid Stream-K on a grid of ``progs`` programs (the plan: a multiple of the SM count).

    The last partial wave of output tiles plus ``STREAM_K - 1`` full waves before it (those there are) form
    the Stream-K region, tiles ``0 .. sk_tiles - 1``: its ``sk_tiles * k_tiles`` (tile, K tile) iterations
    are cut into ``progs`` contiguous shares of equal size (to within one), so every program runs the same
    number of K tiles.  The other tiles, a whole number of waves, are data-parallel: program p computes
    tiles ``sk_tiles + p + j * progs`` whole.  A tile whose iterations fall into several shares is finished
    by ``_stream_k_fixup``.  A region with fewer iterations than programs is not split (its tiles run whole).
    """
    progs = tl.num_programs(0)
    pid = tl.program_id(0)
    waves = tiles // progs
    rem = tiles - waves * progs
    sk_tiles = tl.where(rem > 0, rem + tl.minimum(waves, STREAM_K - 1) * progs, 0)
    sk_tiles = tl.where(sk_tiles * k_tiles >= progs, sk_tiles, 0)
    sk_iters = sk_tiles * k_tiles
    lo = _share_start(pid, sk_iters, progs)
    hi = _share_start(pid + 1, sk_iters, progs)
    first = lo // k_tiles
    n_seg = tl.where(hi > lo, (hi - 1) // k_tiles - first + 1, 0)     # tiles this share touches
    n_dp = tl.maximum(tiles - sk_tiles - pid + progs - 1, 0) // progs   # whole tiles after the share
    for u in range(0, n_seg + n_dp):
        in_share = u < n_seg
        tile = tl.where(in_share, first + u, sk_tiles + pid + (u - n_seg) * progs)
        k_lo = tl.where(in_share, tl.maximum(lo - tile * k_tiles, 0), 0)
        k_hi = tl.where(in_share, tl.minimum(hi - tile * k_tiles, k_tiles), k_tiles)
        pid_m, pid_n = _grouped_tile(tile, num_m, num_n, GROUP_M)
        acc, offs_m, offs_n = _wide_tile(x_ptr, qw_ptr, qz_ptr, s_ptr, M, N, K, stride_xm, stride_qk,
                                         stride_zg, stride_sg, pid_m, pid_n, k_lo, k_hi, GROUP_SIZE,
                                         HAS_ZEROS, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST_DOT, TRANS)
        if (k_lo == 0) & (k_hi == k_tiles):
            _store_tile(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N, tile, stride_om, 1,
                        HAS_BIAS)
        else:
            _stream_k_fixup(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, pid_m, offs_n, M, N, stride_om, tile,
                            pid, lo, sk_iters, progs, k_tiles, BLOCK_M, BLOCK_N, HAS_BIAS)


@triton.jit
def _stream_k_fixup(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, pid_m, offs_n, M, N, stride_om, tile, pid, lo,
                    sk_iters, progs, k_tiles, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    HAS_BIAS: tl.constexpr):
    """One share's fp32 partial of a tile split between programs: stored to the program's own workspace
    slot (slot 2p: the tile where p's share starts, 2p + 1: the tile where it ends), then a per-tile
    ticket.  The program that draws the last ticket -- whichever arrives last, so nothing waits -- sums
    every contributor's slot in program order (the same order whoever finishes: the result is
    deterministic), writes the output tile once, and re-zeroes the slots and the ticket, so the workspace
    is left as zeroed as the split-K kernels expect.  Ordering (as ``decode._finish``): each thread releases
    its own slot stores at gpu scope (a no-op release add), then the CTA barrier, then one thread's acq_rel
    ticket; the finisher's threads each acquire (a no-op acquire add) and read the slots at L2."""
    SLOT: tl.constexpr = BLOCK_M * BLOCK_N
    # rows the finisher sums and writes at a time: keeps the sum's registers small
    if BLOCK_M > 32:
        FIX_ROWS: tl.constexpr = 32
    else:
        FIX_ROWS: tl.constexpr = BLOCK_M
    if BLOCK_M * BLOCK_N > 2048:
        PROBE_ROWS: tl.constexpr = 2048 // BLOCK_N
    else:
        PROBE_ROWS: tl.constexpr = BLOCK_M
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    start = tile * k_tiles
    mine = 2 * pid + (lo < start).to(tl.int32)
    tl.store(ws_ptr + mine * SLOT + rows[:, None] * BLOCK_N + cols[None, :], acc)
    # every thread's stores performed at gpu scope before the ticket: one no-op release add per thread (a
    # [PROBE_ROWS, BLOCK_N] block of >= 2048 words gives each of up to 512 threads its own words), as the
    # split-K epilogue does.  Without it (the CTA barrier and one thread's acq_rel ticket only) the H200
    # gave errors of ~0.5 and relaunches that differed (docs/performance.md, 2026-12-01 evening)
    probe = ws_ptr + mine * SLOT + tl.arange(0, PROBE_ROWS)[:, None] * BLOCK_N + cols[None, :]
    tl.atomic_add(probe, tl.zeros((PROBE_ROWS, BLOCK_N), dtype=tl.float32), sem="release")
    tl.debug_barrier()
    # contributors: the programs whose shares hold the tile's first and last iterations, and all between
    c_first = ((start + 1).to(tl.int64) * progs + sk_iters - 1) // sk_iters - 1
    c_last = ((start + k_tiles).to(tl.int64) * progs + sk_iters - 1) // sk_iters - 1
    c_first = c_first.to(tl.int32)
    c_last = c_last.to(tl.int32)
    ticket = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel")
    if ticket == c_last - c_first:
        # and every thread's reads after it: one no-op acquire add per thread, then the slots at L2
        tl.atomic_add(probe, tl.zeros((PROBE_ROWS, BLOCK_N), dtype=tl.float32), sem="acquire")
        mask_n = offs_n < N
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        for r in range(0, BLOCK_M, FIX_ROWS):
            sub = r + tl.arange(0, FIX_ROWS)
            local = sub[:, None] * BLOCK_N + cols[None, :]
            total = tl.zeros((FIX_ROWS, BLOCK_N), dtype=tl.float32)
            for c in range(c_first, c_last + 1):
                slot = 2 * c + (_share_start(c, sk_iters, progs) < start).to(tl.int32)
                part = ws_ptr + slot * SLOT + local
                total += tl.load(part, cache_modifier=".cg")
                tl.store(part, tl.zeros_like(total))
            if HAS_BIAS:
                total = total + bias[None, :]
            offs_m = pid_m * BLOCK_M + sub
            mask = (offs_m[:, None] < M) & mask_n[None, :]
            tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :],
                     total.to(out_ptr.dtype.element_ty), mask=mask)
        tl.atomic_xchg(lock_ptr + tile, 0)


@triton.jit
def _store_tile(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N, tile_id, stride_om,
                SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr):
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
        tl.atomic_add(ws, tl.zeros_like(acc), mask=mask, sem="release")
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
