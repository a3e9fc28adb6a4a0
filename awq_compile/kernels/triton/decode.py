"""Shared @triton.jit pieces of the W4A16 kernels: int4 decode without conversion instructions, per-group
scale/zero loads, grouped tile order, and the split-K epilogue.

Integer -> float without a conversion instruction: a nibble masked *in place* at bit position p
(p <= 16) and OR-ed into the exponent pattern of 2**(23-p) is the fp32 number ``2**(23-p) + q``, so one
LOP3 and one exact subtraction of ``2**(23-p) + z`` give ``q - z``.  Nibbles 5..7 are first shifted down
by 12 bits (one shift per word for three nibbles).  The 16-bit form (``_magic16``): ``(q | 0x6400)`` as
fp16 is 1024 + q, ``0x4300`` as bf16 is 128 + q.

Split-K partial sums (``_finish``) go to an fp32 workspace with ``tl.atomic_add``; the last program to
finish a tile (counted with a per-tile atomic ticket) reads the sum back, adds bias, casts and writes the
output, so no separate reduction pass over [M, N] runs.  Workspace and tickets are left zeroed for the
next call.  Every kernel that reduces this way takes the ``FENCE`` constexpr (``_release_adds``: a per-thread
fence on NVIDIA, a release add elsewhere and under the interpreter).
"""

from __future__ import annotations

import triton
import triton.language as tl


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
def _kplanes_tile_row(k0, BLOCK_K: tl.constexpr):
    """kplanes, BLOCK_K < 128: the K row of nibble 0 of word row 0 of the K tile at ``k0`` -- tile ``t`` is tile
    ``t % (128 / BLOCK_K)`` of 128-row block ``t // (128 / BLOCK_K)``, and its word rows start BLOCK_K / 8 rows in
    per tile before it."""
    TPB: tl.constexpr = 128 // BLOCK_K          # K tiles per 128-row block
    t = k0 // BLOCK_K
    return (t // TPB) * 128 + (t % TPB) * (BLOCK_K // 8)


@triton.jit
def _krows(k0, BLOCK_K: tl.constexpr, KPLANES: tl.constexpr):
    """[BLOCK_K/8] K row of nibble 0 of each word row of the K tile at ``k0``; nibble i is that row plus
    16 i (kplanes) or i (standard).  Standard: ``k0 + 8 r``.  kplanes (formats/kplanes.py; BLOCK_K divides 128 or
    is a multiple of it): word ``16 t + r`` holds rows ``128 t + 16 i + r``, written so that the compiler
    sees the rows of one nibble as contiguous runs (vector loads of x)."""
    r = tl.arange(0, BLOCK_K // 8)
    if KPLANES:
        if BLOCK_K <= 128:
            return _kplanes_tile_row(k0, BLOCK_K) + r
        else:
            return k0 + (r // 16) * 128 + r % 16
    else:
        return k0 + r * 8


@triton.jit
def _kcols(k0, BLOCK_K: tl.constexpr, KPLANES: tl.constexpr):
    """[BLOCK_K] K index of each row of a decoded K tile: ``k0 + p`` for the standard layout (natural
    order); for kplanes, decoded plane-major (row ``p = i * BLOCK_K/8 + r`` is nibble i of word row r,
    ``PLANES_FIRST``), the K row ``_krows[r] + 16 i`` -- for BLOCK_K = 128 that is ``k0 + p`` again."""
    p = tl.arange(0, BLOCK_K)
    if KPLANES and BLOCK_K != 128:
        BK8: tl.constexpr = BLOCK_K // 8
        if BLOCK_K < 128:
            return _kplanes_tile_row(k0, BLOCK_K) + (p // BK8) * 16 + p % BK8
        else:
            r = p % BK8
            return k0 + (r // 16) * 128 + (p // BK8) * 16 + r % 16
    else:
        return k0 + p


@triton.jit
def _dequant_tile(packed, s, z, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, SCALE: tl.constexpr,
                  PLANES_FIRST: tl.constexpr = False):
    """fp32 [BLOCK_K, BLOCK_N] exact ``(q - z) * s`` (or ``q - z`` when not SCALE) from packed
    [BLOCK_K/8, BLOCK_N] and fp32 s, z [BLOCK_N].  Rows come out word-major (row 8r + i is nibble i of
    word row r: natural k order in the standard layout), or plane-major with PLANES_FIRST (row
    ``i * BLOCK_K/8 + r``: natural order of a 128-row kplanes tile; :func:`_kcols` says which K each is)."""
    i = tl.arange(0, 8)
    sh = tl.where(i >= 5, 12, 0)
    p = 4 * i - sh
    mask = tl.full((8,), 15, tl.int32) << p
    magic = (150 - p) << 23                                   # fp32 bits of 2**(23-p)
    offset = magic.to(tl.float32, bitcast=True)               # 2**(23-p)
    zm = offset[:, None] + z[None, :]                         # [8, BN], exact
    if PLANES_FIRST:
        src = packed[None, :, :] >> sh[:, None, None]
        bits = (src & mask[:, None, None]) | magic[:, None, None]
        w = bits.to(tl.float32, bitcast=True) - zm[:, None, :]   # [8, BK8, BN]: q - z, exact
    else:
        src = packed[:, None, :] >> sh[None, :, None]
        bits = (src & mask[None, :, None]) | magic[None, :, None]
        w = bits.to(tl.float32, bitcast=True) - zm[None, :, :]   # [BK8, 8, BN]
    if SCALE:
        w = w * s[None, None, :]
    return tl.reshape(w, (BLOCK_K, BLOCK_N))


@triton.jit
def _zero_codes(qz_ptr, g, offs_n, mask_n, stride_zg, HAS_ZEROS: tl.constexpr):
    """Group g's zero point of every column as int16 codes 0..15 (8, the symmetric zero, without zeros)."""
    if HAS_ZEROS:
        zw = tl.load(qz_ptr + g * stride_zg + offs_n // 8, mask=mask_n, other=0)
        return ((zw >> ((offs_n % 8) * 4)) & 15).to(tl.int16)
    else:
        return tl.full(offs_n.shape, 8, tl.int16)


@triton.jit
def _scale_zero(qz_ptr, s_ptr, g, offs_n, mask_n, stride_zg, stride_sg, HAS_ZEROS: tl.constexpr):
    s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if HAS_ZEROS:   # as _zero_codes, but straight to fp32 (no int16 step in the fp32-decode kernels)
        zw = tl.load(qz_ptr + g * stride_zg + offs_n // 8, mask=mask_n, other=0)
        z = ((zw >> ((offs_n % 8) * 4)) & 0xF).to(tl.float32)
    else:
        z = tl.full(offs_n.shape, 8.0, tl.float32)
    return s, z


@triton.jit
def _grouped_tile(tile, num_m, num_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of output tile number ``tile`` in grouped order: GROUP_M row tiles share each column
    strip while it is in L2."""
    width = GROUP_M * num_n
    first_m = (tile // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (tile % width) % size_m, (tile % width) // size_m


@triton.jit
def _tile_coords(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n, num_n) of this program's tile in grouped order (``_grouped_tile``)."""
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), num_n, GROUP_M)
    return pid_m, pid_n, num_n


@triton.jit
def _fence_gpu(FENCE: tl.constexpr):
    """``fence.acq_rel.gpu`` in every thread (NVIDIA); nothing under the interpreter, which runs programs
    one after another."""
    if FENCE:
        tl.inline_asm_elementwise("fence.acq_rel.gpu;\n mov.u32 $0, 0;", "=r,r", [tl.zeros((1,), tl.int32)],
                                  dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _release_adds(ws, mask, acc, FENCE: tl.constexpr):
    """Make this thread's relaxed split-K adds into ``ws`` performed at gpu scope before what follows (the
    CTA barrier and one thread's ticket): ``fence.acq_rel.gpu`` with FENCE (NVIDIA), else a no-op release add
    per element -- as strong, but twice the workspace atomics (0.0-0.5 µs on the H200's M = 1 GEMV rows)."""
    if FENCE:
        _fence_gpu(FENCE)
    else:
        tl.atomic_add(ws, tl.zeros_like(acc), mask=mask, sem="release")


@triton.jit
def _finish(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N, tile_id,
            stride_om, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, FENCE: tl.constexpr):
    """Write a [BLOCK_M, BLOCK_N] fp32 tile: directly, or through the split-K workspace + ticket."""
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_K > 1:
        ws = ws_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.atomic_add(ws, acc, mask=mask, sem="relaxed")
        # each thread's adds must be performed at gpu scope before the program takes its ticket: a release
        # per thread after them (_release_adds), then a barrier, then one thread's acq_rel ticket
        _release_adds(ws, mask, acc, FENCE)
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
def _owner(u, U, P):
    """The program whose stripe [p U / P, (p + 1) U / P) holds unit u."""
    return ((u + 1) * P + U - 1) // U - 1
