"""GEMV for decode-sized M with many weight bytes in flight per thread and no per-tile reduction.

``_gemv_deep_kernel`` (spec ``triton_gemv_deep``).  Each program owns BLOCK_N columns and a contiguous run
of K *chunks*; a chunk is TILES consecutive K tiles of BLOCK_K rows (BLOCK_K divides the group, so each
tile has one scale/zero row), read as one [TILES, BLOCK_K/8, BLOCK_N] load of packed words (16 bytes per
thread along N).  With PREFETCH the next chunk's words, scales and zeros are loaded before the current one
is decoded, so a thread keeps up to two chunks' worth of loads in flight; STAGES > 1 hands the loop to
Triton's software pipeliner instead (cp.async on NVIDIA).

Decode: nibble i of a word becomes fp32 ``OFF_i + q`` with one shift (shared by two nibbles) and one LOP3
(``_plane_lo``); ``p = x_i (OFF_i + q_i)`` is one FMA per weight.  Per K tile and column,
``sum_k x_k (q_k - z) = sum p - (C + z * S)`` with ``C = sum_k OFF(k) x_k`` and ``S = sum_k x_k``: with XSUM
from one contiguous load of the chunk's x (a few vector loads and a warp reduction), else per word row from
the nibble loads.  The rows of p are summed per chunk (inside each thread when the columns span all warps:
BLOCK_N >= 128 x num_warps), scaled, and accumulated in [TILES, BLOCK_N]; the split-K epilogue is
``_finish`` (SPLIT_K = 1 writes the output directly: no workspace, no ticket).

Rows past K (the last chunk of a run may be partial) read a clamped, valid row whose x is 0.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .decode import _finish, _plane_lo


@triton.jit
def _lo_offset(I: tl.constexpr):
    """The offset ``OFF_I`` of ``_plane_lo``'s nibble I (2**11 where the nibble sits at bit 12, else 2**7)."""
    if I == 0 or I == 1 or I == 3 or I == 5:
        OFF: tl.constexpr = 2048.0
    else:
        OFF: tl.constexpr = 128.0
    return OFF


@triton.jit
def _chunk_scale_zero(qz_ptr, s_ptr, gs, offs_n, mask_n, stride_zg, stride_sg, HAS_ZEROS: tl.constexpr):
    """fp32 scales and zero points [TILES, BLOCK_N] of the groups ``gs`` [TILES]."""
    m2 = mask_n[None, :]
    s = tl.load(s_ptr + gs[:, None] * stride_sg + offs_n[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        zw = tl.load(qz_ptr + gs[:, None] * stride_zg + (offs_n // 8)[None, :], mask=m2, other=0)
        z = ((zw >> ((offs_n % 8) * 4)[None, :]) & 0xF).to(tl.float32)
    else:
        z = tl.full(s.shape, 8.0, tl.float32)
    return s, z


@triton.jit
def _x_planes(x_row, kx, K):
    """x of nibbles 0..7 of every word row (kx [TILES, BK8]: K index of nibble 0; rows past K read 0), as
    loaded (the activation dtype): eight [TILES, BK8] tensors."""
    x0 = tl.load(x_row + kx, mask=kx < K, other=0.0)
    x1 = tl.load(x_row + kx + 1, mask=kx + 1 < K, other=0.0)
    x2 = tl.load(x_row + kx + 2, mask=kx + 2 < K, other=0.0)
    x3 = tl.load(x_row + kx + 3, mask=kx + 3 < K, other=0.0)
    x4 = tl.load(x_row + kx + 4, mask=kx + 4 < K, other=0.0)
    x5 = tl.load(x_row + kx + 5, mask=kx + 5 < K, other=0.0)
    x6 = tl.load(x_row + kx + 6, mask=kx + 6 < K, other=0.0)
    x7 = tl.load(x_row + kx + 7, mask=kx + 7 < K, other=0.0)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _term(x, packed, I: tl.constexpr):
    return x.to(tl.float32)[:, :, None] * _plane_lo(packed, I)


@triton.jit
def _planes_dot(packed, x0, x1, x2, x3, x4, x5, x6, x7):
    """sum_i x_i (OFF_i + q_i) per word: [TILES, BK8, BLOCK_N] fp32, one FMA per weight."""
    p = _term(x0, packed, 0)
    p += _term(x1, packed, 1)
    p += _term(x2, packed, 2)
    p += _term(x3, packed, 3)
    p += _term(x4, packed, 4)
    p += _term(x5, packed, 5)
    p += _term(x6, packed, 6)
    p += _term(x7, packed, 7)
    return p


@triton.jit
def _gemv_deep_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                      M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                      GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      SPLIT_K: tl.constexpr, TILES: tl.constexpr, PREFETCH: tl.constexpr,
                      STAGES: tl.constexpr, XSUM: tl.constexpr, XPREFETCH: tl.constexpr):
    """BLOCK_M == 1: program (n tile, K split, row)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    BK8: tl.constexpr = BLOCK_K // 8
    CH: tl.constexpr = TILES * BLOCK_K                       # K rows per chunk
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_t = tl.arange(0, TILES)
    offs_r = tl.arange(0, BK8)
    # word row of (tile, row) inside a chunk, and the K index of its first nibble
    wrow = offs_t[:, None] * BK8 + offs_r[None, :]           # [TILES, BK8]
    K8 = K // 8
    n_chunks = tl.cdiv(K, CH)
    per_split = tl.cdiv(n_chunks, SPLIT_K)
    c0 = pid_k * per_split
    c1 = tl.minimum(n_chunks, c0 + per_split)
    x_row = x_ptr + pid_m * stride_xm
    offs_k = tl.arange(0, BLOCK_K)
    kk = offs_k % 8
    off_k = tl.where((kk == 0) | (kk == 1) | (kk == 3) | (kk == 5), 2048.0, 128.0)   # _plane_lo's offsets
    w_cols = qw_ptr + offs_n[None, None, :]
    m3 = mask_n[None, None, :]
    acc = tl.zeros((TILES, BLOCK_N), dtype=tl.float32)
    if PREFETCH:
        cn = tl.minimum(c0, n_chunks - 1)
        rows_n = tl.minimum(cn * (CH // 8) + wrow, K8 - 1)
        nxt = tl.load(w_cols + rows_n[:, :, None] * stride_qk, mask=m3, other=0)
        gs_n = tl.minimum((cn * CH + offs_t * BLOCK_K) // GROUP_SIZE, K // GROUP_SIZE - 1)
        s_n, z_n = _chunk_scale_zero(qz_ptr, s_ptr, gs_n, offs_n, mask_n, stride_zg, stride_sg, HAS_ZEROS)
        if XPREFETCH:
            xn0, xn1, xn2, xn3, xn4, xn5, xn6, xn7 = _x_planes(x_row, cn * CH + wrow * 8, K)
            kc = cn * CH + offs_t[:, None] * BLOCK_K + offs_k[None, :]
            xcn = tl.load(x_row + kc, mask=kc < K, other=0.0)
    for c in tl.range(c0, c1, num_stages=STAGES):
        if PREFETCH:
            packed = nxt
            s = s_n
            z = z_n
            cn = tl.minimum(c + 1, c1 - 1)
            rows_n = tl.minimum(cn * (CH // 8) + wrow, K8 - 1)
            nxt = tl.load(w_cols + rows_n[:, :, None] * stride_qk, mask=m3, other=0)
            gs_n = tl.minimum((cn * CH + offs_t * BLOCK_K) // GROUP_SIZE, K // GROUP_SIZE - 1)
            s_n, z_n = _chunk_scale_zero(qz_ptr, s_ptr, gs_n, offs_n, mask_n, stride_zg, stride_sg, HAS_ZEROS)
            if XPREFETCH:
                # the chunk's x was loaded one iteration ahead with its words (an L2 round trip per chunk
                # otherwise: sweep 1 measured ~1.3-2 us per chunk whatever its size)
                x0, x1, x2, x3, x4, x5, x6, x7 = xn0, xn1, xn2, xn3, xn4, xn5, xn6, xn7
                xc = xcn.to(tl.float32)
                xn0, xn1, xn2, xn3, xn4, xn5, xn6, xn7 = _x_planes(x_row, cn * CH + wrow * 8, K)
                kc = cn * CH + offs_t[:, None] * BLOCK_K + offs_k[None, :]
                xcn = tl.load(x_row + kc, mask=kc < K, other=0.0)
        else:
            rows = tl.minimum(c * (CH // 8) + wrow, K8 - 1)
            packed = tl.load(w_cols + rows[:, :, None] * stride_qk, mask=m3, other=0)
            gs = tl.minimum((c * CH + offs_t * BLOCK_K) // GROUP_SIZE, K // GROUP_SIZE - 1)
            s, z = _chunk_scale_zero(qz_ptr, s_ptr, gs, offs_n, mask_n, stride_zg, stride_sg, HAS_ZEROS)
        kx = c * CH + wrow * 8                               # K index of nibble 0 of each word row
        if XPREFETCH:
            p = _planes_dot(packed, x0, x1, x2, x3, x4, x5, x6, x7)
        else:
            for i in tl.static_range(8):
                # x of nibble i of every word row (rows past K read 0)
                xi = tl.load(x_row + kx + i, mask=kx + i < K, other=0.0).to(tl.float32)[:, :, None]
                if i == 0:
                    p = xi * _plane_lo(packed, i)             # x * (OFF + q): one FMA per weight
                    if not XSUM:
                        cx = _lo_offset(i) * xi
                        sx = xi
                else:
                    p += xi * _plane_lo(packed, i)
                    if not XSUM:
                        cx += _lo_offset(i) * xi
                        sx += xi
        if XSUM:
            # per K tile: sum_k OFF(k) x_k and sum_k x_k from one contiguous load of the chunk's x
            if not XPREFETCH:
                kc = c * CH + offs_t[:, None] * BLOCK_K + offs_k[None, :]
                xc = tl.load(x_row + kc, mask=kc < K, other=0.0).to(tl.float32)      # [TILES, BLOCK_K]
            d = tl.sum(p, axis=1) - (tl.sum(xc * off_k[None, :], axis=1)[:, None]
                                     + z * tl.sum(xc, axis=1)[:, None])            # [TILES, BLOCK_N]
        else:
            # per word row, from the nibble loads above
            d = tl.sum(p - (cx + z[:, None, :] * sx), axis=1)
        acc += s * d
    total = tl.sum(acc, axis=0)
    offs_m = pid_m + tl.arange(0, 1)
    _finish(total[None, :], out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N,
            pid_m * tl.num_programs(0) + pid_n, stride_om, SPLIT_K, HAS_BIAS)
