"""Split-K GEMV for decode-sized M: no matrix units.

Each program owns BLOCK_N columns and a contiguous run of groups (split-K).  The packed tile is read once
with 16-byte loads along N; the eight nibble planes of each word are decoded one at a time (compile-time
shifts/masks) and multiplied into fp32 by the activations.  Zero point and scale are applied once per
*group* and column: ``sum_k x_k (q_k - z) s = s * (sum_k x_k q_k - z * sum_k x_k)``.

* ``_gemv_kernel`` (spec ``triton_gemv``); FMA_DECODE (BLOCK_M = 1): nibbles moved to bit 12/16 so
  ``OFF + q`` has a small offset (2**11 / 2**7); the loop is one FMA per element on it and the group's
  ``sum OFF(k) x_k + z sum x_k`` is taken off per column once per group.
* ``_gemv_stream_kernel`` (spec ``triton_gemv_stream``): a contiguous run of K tiles per program with the
  next tile's words, scales and zeros loaded before the current one is decoded.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .decode import _finish, _krows, _nibble_consts, _plane, _plane_lo, _scale_zero


@triton.jit
def _gemv_tile(d, packed, z, x_row, x_rows, k0, offs_r, mask_m, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
               FMA_DECODE: tl.constexpr, KPLANES: tl.constexpr):
    """Add one K tile of packed words to the GEMV partial ``d``: [BK8, BN] per-thread rows of x * (q - z)
    for BLOCK_M == 1 (``x_row`` points at the row; with FMA_DECODE x * (OFF + q), see ``_plane_lo``),
    else [BM, BN] sums over the tile (``x_rows`` [BM, BK8] pointers at word row r's K row ``8 r``, or [BM, 1]
    row pointers for KPLANES).  KPLANES: nibble i of word row r is K row ``decode._krows[r] + 16 i``."""
    if KPLANES:
        xk = _krows(k0, BLOCK_K, True)
    for i in tl.static_range(8):
        if KPLANES:
            x1 = x_row + xk + 16 * i
        else:
            x1 = x_row + k0 + i + offs_r * 8
        if FMA_DECODE and BLOCK_M == 1:
            xi = tl.load(x1).to(tl.float32)
            d += xi[:, None] * _plane_lo(packed, i)                          # x * (OFF + q)
        else:
            SH, P = _nibble_consts(i)
            OFF = 1.0 * (1 << (23 - P))
            w = _plane(packed, i) - (z + OFF)[None, :]                       # [BK8, BN] = q - z
            if BLOCK_M == 1:
                xi = tl.load(x1).to(tl.float32)
                d += xi[:, None] * w
            else:
                if KPLANES:
                    xm = x_rows + (xk + 16 * i)[None, :]
                else:
                    xm = x_rows + (k0 + i)
                xi = tl.load(xm, mask=mask_m[:, None], other=0.0).to(tl.float32)
                d += tl.sum(xi[:, :, None] * w[None, :, :], axis=1)
    return d


@triton.jit
def _gemv_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                 M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                 GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 SPLIT_K: tl.constexpr, FMA_DECODE: tl.constexpr = False, KPLANES: tl.constexpr = False,
                 FENCE: tl.constexpr = False):
    """FMA_DECODE (BLOCK_M == 1): one FMA per weight element on ``OFF_i + q`` (see ``_plane_lo``); the
    group's ``sum_k OFF(k) x_k + z * sum_k x_k`` is subtracted per column once per group, computed from
    one contiguous load of the group's activations.  KPLANES: the weight is in the kplanes layout (x
    rows of each nibble from ``decode._krows``; row k's nibble is ``(k % 128) // 16``, not ``k % 8``)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_r = tl.arange(0, BLOCK_K // 8)
    offs_g = tl.arange(0, GROUP_SIZE)
    # offset of k's nibble in _plane_lo: 2**11 for nibbles 0, 1, 3, 5, else 2**7
    if KPLANES:
        kk = (offs_g % 128) // 16
    else:
        kk = offs_g % 8
    off_g = tl.where((kk == 0) | (kk == 1) | (kk == 3) | (kk == 5), 2048.0, 128.0)
    SUB: tl.constexpr = GROUP_SIZE // BLOCK_K          # K tiles per group
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_groups = K // GROUP_SIZE
    per_split = tl.cdiv(n_groups, SPLIT_K)
    w_tile = qw_ptr + offs_r[:, None] * stride_qk + offs_n[None, :]
    if KPLANES:
        x_rows = x_ptr + offs_m[:, None] * stride_xm
    else:
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
            d = _gemv_tile(d, packed, z, x_ptr + pid_m * stride_xm, x_rows, k0, offs_r, mask_m, BLOCK_M, BLOCK_K,
                           FMA_DECODE, KPLANES)
        if BLOCK_M == 1:
            d = tl.sum(d, axis=0)[None, :]
            if FMA_DECODE:
                xg = tl.load(x_ptr + pid_m * stride_xm + g * GROUP_SIZE + offs_g).to(tl.float32)
                d = d - (tl.sum(xg * off_g, axis=0) + z * tl.sum(xg, axis=0))[None, :]
        acc += s[None, :] * d
    _finish(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N,
            pid_m * tl.num_programs(0) + pid_n, stride_om, SPLIT_K, HAS_BIAS, FENCE)


@triton.jit
def _gemv_stream_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                        M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                        GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        SPLIT_K: tl.constexpr, KPLANES: tl.constexpr = False,
                        FENCE: tl.constexpr = False):
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
    if KPLANES:
        x_rows = x_ptr + offs_m[:, None] * stride_xm
    else:
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
                       BLOCK_K, False, KPLANES)
        if BLOCK_M == 1:
            d = tl.sum(d, axis=0)[None, :]
        acc += s[None, :] * d
    _finish(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N,
            pid_m * tl.num_programs(0) + pid_n, stride_om, SPLIT_K, HAS_BIAS, FENCE)
