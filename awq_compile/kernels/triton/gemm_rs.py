"""Register-operand W4A16 GEMM for Hopper (Gluon): the decoded weight is the A operand of wgmma, in registers.

``out^T [N, M] = W^T [N, K] x^T [K, M]``: a program owns BLOCK_N weight columns (the wgmma's M side) and
BLOCK_M tokens (its N side).  Per K tile of 128 rows (one kplanes block, ``formats/kplanes.py``):

* the tile's x rows [BLOCK_M, 128] and its packed words [16, BLOCK_N] arrive by ``cp.async`` in a ring of
  STAGES shared-memory slots (tile t in slot t % STAGES);
* each thread reads back exactly the words the A-operand layout gives it (:func:`word_layout`: rows n with
  n % 8 = lane // 4 and word rows r in {2c, 2c+1, 2c+8, 2c+9}, c = lane % 4), so nibble plane i of those
  words -- rows 16 i + r of the block -- *is* that thread's share of the A operand of K step i: the layout
  conversion is checked trivial at compile time (no shared-memory round trip of the decoded weight);
* plane i is decoded with the 16-bit magic (``q | 0x6400`` is fp16 1024 + q; bf16 ``0x4300``), two K rows per
  32-bit operation (the operand register holds rows r, r + 1: one ``prmt`` gathers their words' byte i // 2,
  one ``lop3`` masks and adds the magic -- an odd plane's nibbles, at bits 4..7, are masked in place under
  the fp16 magic 64 (whose mantissa unit there is 1) and shifted down first in bf16; ~1.5-2 integer operations
  per pair instead of ~4.7, the loop 633 -> 472 instructions at 16x256 w8), then ``(q - z) * s`` in the activation
  dtype (exact subtraction, one rounding, as the user's dequant), and fed to an asynchronous wgmma whose x
  operand is the K slice [16 i, 16 i + 16) of the tile's x slot;
* the wgmma of step i is waited for MMA_DEPTH steps later -- across the loop edge too -- so the decode of the
  next planes overlaps it (waiting for every MMA at the end of each tile cost ~9% of the stall samples at
  M = 256, ncu); the next tile's scales and zeros are loaded from global memory as a tile starts; half-way
  through it (MMAs in flight) the program waits for tile t + 1, requests tile t + STAGES - 1 into the slot of
  tile t - 1 (whose last wgmma was retired by tile t's first MMA_DEPTH steps) and reads tile t + 1's words.

Triton >= 3.7 lowers each wgmma wait of an 8-warp program with a CTA barrier (both warp groups); 3.6, which
the tables were measured on, does not.

The program walks a run of units (column tile, token tile, K tile), K fastest: one tile's K range in the
tile grid (SPLIT_K programs per tile), or with STRIPES (the spec's PER_SM) the contiguous run
[p U / P, (p + 1) U / P) of all U units on a persistent grid of P = PER_SM x SMs programs -- every program
streams the same number of weight tiles, the ring runs on across tile boundaries, and a tile ends inside the
loop.  A tile shared by several programs is reduced through the fp32 workspace: relaxed adds, a CTA barrier,
one thread's acq_rel ticket (cumulative: no fence per thread), the last contributor reads the sums from L2,
writes the output and re-zeroes the workspace and the ticket.

Gluon kernels have no interpreter: the CPU tests compile this for sm90 (Triton 3.6 and 3.9 alike) and read
the TTGIR; the numerics are tested on the GPU.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language import _core as _gl_core
from triton.experimental.gluon.language.nvidia.hopper import (async_copy, fence_async_shared, warpgroup_mma,
                                                              warpgroup_mma_wait)

from .decode import _owner       # a stripe's unit arithmetic, as the stripe kernel's

# the spellings that differ between Triton 3.6 and 3.9
_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared


@_gl_core.builtin
def _wait_own(num_outstanding, deps, _semantic=None):
    """``warpgroup_mma_wait`` for this warp group's MMAs only (``warpGroupLocal``).  The K loop's waits exist to
    bound the MMAs in flight and keep their register operands alive; the ring's slots are handed back by the
    explicit CTA barrier after the tile's ``wait_group``, which follows a wait of every warp group.  Since
    Triton 3.9 a wait with more than 4 warps is otherwise taken to stand for every warp group's MMAs, and the
    barrier pass puts a CTA barrier after each of the 8 waits of a K tile (8-warp tiles); 3.6 has no such
    attribute, treats the wait as local and ignores it (the same PTX)."""
    out = warpgroup_mma_wait(num_outstanding, deps, _semantic=_semantic)
    (out[0] if isinstance(out, tuple) else out).handle.set_attr("warpGroupLocal", _semantic.builder.get_unit_attr())
    return out


@gluon.constexpr_function
def word_layout(BLOCK_N, num_warps, transposed):
    """The [BLOCK_N, 16] words of one K tile ([16, BLOCK_N] when ``transposed``) as the A operand needs them:
    thread (lane, warp) holds rows n with n % 8 = lane // 4 (n + 8 too), (n // 16) % num_warps = warp, and
    word rows r in {2c, 2c+1, 2c+8, 2c+9} for c = lane % 4 -- the mma v3 operand-0 layout (kWidth 2) of
    each [BLOCK_N, 16] nibble plane."""
    BLOCK_N = int(BLOCK_N)
    num_warps = int(num_warps)
    reg = [[0, 1], [8, 0], [0, 8]]
    lane = [[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]]
    warp = []
    w = 1
    while w < num_warps:
        warp.append([16 * w, 0])
        w *= 2
    r = 16 * num_warps
    while r < BLOCK_N:
        reg.append([r, 0])
        r *= 2
    shape = [BLOCK_N, 16]
    if transposed:
        reg, lane, warp = ([[b, a] for a, b in bases] for bases in (reg, lane, warp))
        shape = [16, BLOCK_N]
    return gl.DistributedLinearLayout(reg_bases=reg, lane_bases=lane, warp_bases=warp, block_bases=[], shape=shape)


@gluon.constexpr_function
def copy_layout(BLOCK_N, num_warps):
    """[16, BLOCK_N] int32 words copied 16 bytes per thread along N."""
    tn = min(32, int(BLOCK_N) // 4)
    return gl.BlockedLayout([1, 4], [32 // tn, tn], [int(num_warps), 1], [1, 0])


@gluon.constexpr_function
def _pair_asm(I, MAGIC, ODD_MAGIC):
    """PTX for nibble plane I of two words (K rows r and r + 1 of a kplanes block, same column) as one fp16x2 /
    bf16x2 register ``MAGIC + q`` per row: ``prmt`` gathers byte I // 2 of both words into bytes 0 and 2 and one
    AND-OR (a ``LOP3``) masks and adds the magic.  An odd plane's nibbles sit at bits 4..7 of each half: with
    ODD_MAGIC (fp16 only) they are masked in place under the magic ``ODD_MAGIC`` (fp16 64, whose mantissa unit at
    bit 4 is 1: the half is ``64 + q``), else shifted down by 4 first."""
    b = int(I) // 2
    sel = b | (b << 4) | ((4 + b) << 8) | ((4 + b) << 12)
    odd = int(I) % 2
    mask = "0x00F000F0" if odd and ODD_MAGIC else "0x000F000F"
    shift = " shr.b32 t, t, 4;" if odd and not ODD_MAGIC else ""
    magic = (int(ODD_MAGIC) if odd and ODD_MAGIC else int(MAGIC)) * 0x10001
    return ("{ .reg .b32 t; prmt.b32 t, $2, $3, " + hex(sel) + ";" + shift
            + " lop3.b32 t, t, " + mask + ", " + hex(magic) + ", 0xEA; mov.b32 {$0, $1}, t; }")   # 0xEA: (a & b) | c


@gluon.jit
def _split_rows(words):
    """[BLOCK_N, 16] words -> the words of the even and of the odd K rows, [BLOCK_N, 8] each (row r = 2 j + h is a
    register index in the operand layout, so this moves nothing)."""
    BLOCK_N: gl.constexpr = words.shape[0]
    return gl.split(gl.reshape(words, [BLOCK_N, 8, 2]))


@gluon.jit
def _plane(we, wo, I: gl.constexpr, zm, zo, s, MAGIC: gl.constexpr, ODD_MAGIC: gl.constexpr, ACT: gl.constexpr,
           WL: gl.constexpr, SCALED: gl.constexpr):
    """Nibble plane I of the K tile as ``(q - z) * s`` (SCALED; else ``q - z``, the scale applied to the fp32 partial)
    in the activation dtype, [BLOCK_N, 16] in WL (``zm`` / ``zo``: the zero as the even / odd planes' magic + z, the
    same tensor where the odd planes use MAGIC too); two rows' nibbles are extracted per 32-bit operation
    (:func:`_pair_asm`)."""
    BLOCK_N: gl.constexpr = we.shape[0]
    lo, hi = gl.inline_asm_elementwise(_pair_asm(I, MAGIC, ODD_MAGIC), "=h,=h,r,r", [we, wo],
                                       dtype=(gl.int16, gl.int16), is_pure=True, pack=1)
    v = gl.reshape(gl.join(lo, hi), [BLOCK_N, 16]).to(ACT, bitcast=True)
    v = gl.convert_layout(v, WL, assert_trivial=True)
    if I % 2 == 1:
        v = v - zo[:, None]
    else:
        v = v - zm[:, None]
    if SCALED:
        v = v * s[:, None]
    return v


@gluon.jit
def _unit_scales(s_ptr, qz_ptr, un, uk, N, stride_sg, stride_zg, GROUP_SIZE: gl.constexpr, HAS_ZEROS: gl.constexpr,
                 MAGIC: gl.constexpr, ODD_MAGIC: gl.constexpr, ACT: gl.constexpr, BLOCK_N: gl.constexpr,
                 L: gl.constexpr):
    """The zeros of K tile ``uk`` of column tile ``un`` per weight column, in L, as the even planes' MAGIC + z and
    the odd planes' ODD_MAGIC + z (:func:`_pair_asm`; MAGIC + z again where ODD_MAGIC is 0), and its scales."""
    offs_n = un * BLOCK_N + gl.arange(0, BLOCK_N, layout=L)
    mask_n = offs_n < N
    g = (uk * 128) // GROUP_SIZE
    if HAS_ZEROS:
        zw = gl.load(qz_ptr + g * stride_zg + offs_n // 8, mask=mask_n, other=0)
        zq = ((zw >> ((offs_n % 8) * 4)) & 15).to(gl.int16)
    else:
        zq = gl.full(offs_n.shape, 8, gl.int16, L)
    zm = (zq | MAGIC).to(ACT, bitcast=True)
    if ODD_MAGIC != 0:
        zo = ((zq << 4) | ODD_MAGIC).to(ACT, bitcast=True)
    else:
        zo = zm
    s = gl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0)
    return zm, zo, s


@gluon.jit
def _next_unit(un, um, uk, KT, tiles_m, STRIPES: gl.constexpr):
    """The unit after (column tile un, token tile um, K tile uk): K fastest, then token tiles, then column tiles
    (without STRIPES a program stays in its tile: only K moves, and the tile's masks stay loop-invariant)."""
    uk = uk + 1
    if STRIPES:
        if uk == KT:
            uk = 0
            um = um + 1
            if um == tiles_m:
                um = 0
                un = un + 1
    return un, um, uk


@gluon.jit
def _load_unit(x_slot, w_slot, x_base, w_base, un, um, uk, ok, M, N, stride_xm, stride_qk, cn, xm,
               BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """cp.async of unit (un, um, uk)'s x rows [BLOCK_M, 128] and packed words [16, BLOCK_N] (``ok`` False: none)."""
    _async_load(x_slot, x_base + (um * BLOCK_M) * stride_xm + uk * 128,
                mask=((um * BLOCK_M + xm) < M)[:, None] & ok)
    _async_load(w_slot, w_base + (uk * 16) * stride_qk + un * BLOCK_N,
                mask=((un * BLOCK_N + cn) < N)[None, :] & ok)


@gluon.jit
def _pick(a, b, c, d, e, I: gl.constexpr):
    """Slot I of an unrolled ring (a static choice: each slot is its own allocation)."""
    if I == 0:
        r = a
    elif I == 1:
        r = b
    elif I == 2:
        r = c
    elif I == 3:
        r = d
    else:
        r = e
    return r


@gluon.jit
def _unit(xs, x_fill, w_fill, w_next, t, n_units, acc, part, sp, q1, q2, we, wo, zm, zo, s, un, um, uk, sn, sm, sk,
          ln, lm, lk, x_base, w_base, s_ptr, qz_ptr, out_ptr, bias_ptr, ws_ptr, lock_ptr, M, N, KT, tiles_m, U, P,
          stride_xm, stride_qk, stride_zg, stride_sg, stride_om, cn, xm,
          GROUP_SIZE: gl.constexpr, HAS_ZEROS: gl.constexpr, HAS_BIAS: gl.constexpr, MAGIC: gl.constexpr,
          ODD_MAGIC: gl.constexpr, ACT: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
          STAGES: gl.constexpr, MMA_DEPTH: gl.constexpr, ACC_SCALE: gl.constexpr, STRIPES: gl.constexpr,
          WL: gl.constexpr, WT: gl.constexpr, SL: gl.constexpr, a_l: gl.constexpr, mma: gl.constexpr):
    """Unit t of the run: its 8 wgmmas on x slot ``xs`` (words we / wo, zeros zm / zo, scales s, already in
    registers); half-way through, tile t + STAGES - 1 is requested into ``x_fill`` / ``w_fill`` and tile t + 1's
    words read from ``w_next``; with STRIPES a tile that ends here is finished.

    Without ACC_SCALE the wgmmas accumulate ``(q - z) s`` into ``acc``.  With it they accumulate ``q - z`` into the
    unit's fp32 partial ``part`` (the first with use_acc off); the previous unit's partial, still in ``part``, is
    waited for (every MMA) once plane 0 is decoded and added to ``acc`` times its scale ``sp`` before plane 0's
    wgmma overwrites it."""
    more = t + 1 < n_units
    # the next unit's scales and zeros from global memory a whole unit before their first use
    zm_n, zo_n, s_n = _unit_scales(s_ptr, qz_ptr, sn, sk * more, N, stride_sg, stride_zg, GROUP_SIZE, HAS_ZEROS,
                                   MAGIC, ODD_MAGIC, ACT, BLOCK_N, SL)
    for i in gl.static_range(8):
        p = gl.convert_layout(_plane(we, wo, i, zm, zo, s, MAGIC, ODD_MAGIC, ACT, WL, ACC_SCALE == 0), a_l,
                              assert_trivial=True)
        b = xs.slice(16 * i, 16, dim=1).permute((1, 0))
        if ACC_SCALE:
            if i == 0:
                part, q1, q2 = _wait_own(0, [part, q1, q2])
                acc = _fold(acc, part, sp, mma)
            part = warpgroup_mma(p, b, part, use_acc=i > 0, is_async=True)
            part, q1, q2 = _bound(part, q1, q2, p, MMA_DEPTH)
        else:
            acc = warpgroup_mma(p, b, acc, is_async=True)
            acc, q1, q2 = _bound(acc, q1, q2, p, MMA_DEPTH)
        if i == 3:
            async_copy.wait_group(STAGES - 3)
            # every thread's copies of unit t + 1 have landed, and every warp group's MMAs on unit t - 1 are
            # done; then the proxy fence for the x slots wgmma (the async proxy) reads -- after the barrier,
            # as Triton 3.9 orders it in its own cp.async -> wgmma pipelines: a barrier right after the wait
            # is one Triton's barrier pass does not double (it adds one after a wait followed by anything else)
            _barrier()
            fence_async_shared()
            _load_unit(x_fill, w_fill, x_base, w_base, ln, lm, lk, t + STAGES - 1 < n_units, M, N, stride_xm,
                       stride_qk, cn, xm, BLOCK_M, BLOCK_N)
            async_copy.commit_group()
            ln, lm, lk = _next_unit(ln, lm, lk, KT, tiles_m, STRIPES)
            # (after the run's last unit these words are not used)
            we_n, wo_n = _split_rows(gl.permute(w_next.load(WT), [1, 0]))
    if STRIPES:
        if (uk == KT - 1) | (t == n_units - 1):      # the end of this program's share of tile (un, um)
            if ACC_SCALE:
                # this unit's partial now, and a zero one for the next unit to add
                acc, part, q1, q2 = warpgroup_mma_wait(num_outstanding=0, deps=[acc, part, q1, q2])
                acc = _fold(acc, part, s, mma)
                part = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, mma)
            else:
                acc, q1, q2 = warpgroup_mma_wait(num_outstanding=0, deps=[acc, q1, q2])
            tile = un * tiles_m + um
            first = _owner(tile * KT, U, P)
            last = _owner(tile * KT + KT - 1, U, P)
            _finish_tile(acc, out_ptr, bias_ptr, ws_ptr, lock_ptr, un * BLOCK_N, um * BLOCK_M, tile,
                         last - first + 1, M, N, stride_om, HAS_BIAS, BLOCK_N, BLOCK_M, gl.num_warps())
            acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, mma)
        un = sn
        um = sm
    uk = sk
    sn, sm, sk = _next_unit(sn, sm, sk, KT, tiles_m, STRIPES)
    if ACC_SCALE:
        sp = s
    return acc, part, sp, q1, q2, we_n, wo_n, zm_n, zo_n, s_n, un, um, uk, sn, sm, sk, ln, lm, lk


@gluon.jit
def _bound(acc, q1, q2, p, MMA_DEPTH: gl.constexpr):
    """Wait until at most MMA_DEPTH wgmmas are in flight (``p``, the A operand of the one just issued, stays alive
    in q1 / q2 until its MMA is retired)."""
    if MMA_DEPTH == 1:
        acc, q1 = _wait_own(1, [acc, q1])
        q1 = p
    else:
        acc, q2 = _wait_own(2, [acc, q2])
        q2 = q1
        q1 = p
    return acc, q1, q2


@gluon.jit
def _fold(acc, part, s, mma: gl.constexpr):
    """``acc + part x s`` per weight column (row of out^T), in fp32: s, in the word layout's rows, is already in
    the accumulator's (the layout change is checked trivial)."""
    sa = gl.convert_layout(s, gl.SliceLayout(1, mma), assert_trivial=True).to(gl.float32)
    return acc + part * sa[:, None]


@gluon.jit
def _gemm_rs_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                    M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                    GROUP_SIZE: gl.constexpr, HAS_ZEROS: gl.constexpr, HAS_BIAS: gl.constexpr,
                    KPLANES: gl.constexpr,
                    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, SPLIT_K: gl.constexpr, STAGES: gl.constexpr,
                    MMA_DEPTH: gl.constexpr, ACC_SCALE: gl.constexpr, UNROLL: gl.constexpr, STRIPES: gl.constexpr):
    num_warps: gl.constexpr = gl.num_warps()
    gl.static_assert(KPLANES, "the register-operand GEMM reads the kplanes layout")
    gl.static_assert(STAGES >= 3, "the ring needs STAGES >= 3 (tile t + 1 is read while tile t - 1's slot refills)")
    gl.static_assert(not UNROLL or STAGES <= 5, "the unrolled ring has 3..5 slots")
    gl.static_assert(MMA_DEPTH == 1 or MMA_DEPTH == 2, "MMA_DEPTH is 1 or 2")
    gl.static_assert(not ACC_SCALE or GROUP_SIZE % 128 == 0, "a scale per K tile needs groups of 128 rows")
    gl.static_assert(SPLIT_K == 1 or not STRIPES, "stripes reduce the tiles they share; SPLIT_K is the grid's")
    BLOCK_K: gl.constexpr = 128
    ACT: gl.constexpr = x_ptr.dtype.element_ty
    if ACT == gl.bfloat16:
        MAGIC: gl.constexpr = 0x4300
        ODD_MAGIC: gl.constexpr = 0      # bf16's 7-bit mantissa cannot hold bits 4..7: odd planes shift
    else:
        MAGIC: gl.constexpr = 0x6400
        ODD_MAGIC: gl.constexpr = 0x5400
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_M, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    WL: gl.constexpr = word_layout(BLOCK_N, num_warps, False)
    WT: gl.constexpr = word_layout(BLOCK_N, num_warps, True)
    WC: gl.constexpr = copy_layout(BLOCK_N, num_warps)
    SL: gl.constexpr = gl.SliceLayout(1, WL)
    x_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], ACT)
    w_sl: gl.constexpr = gl.SwizzledSharedLayout(4, 1, 8, [1, 0])     # 16-byte chunks, rows XOR-swizzled
    x_ld: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [num_warps, 1], [1, 0])

    # This program's run of units (column tile, token tile, K tile), K fastest: with STRIPES the contiguous
    # run [p U / P, (p + 1) U / P) of all U units; else one tile's SPLIT_K share.
    tiles_m = gl.cdiv(M, BLOCK_M)
    KT = K // BLOCK_K
    if STRIPES:
        P = gl.num_programs(0)
        U = gl.cdiv(N, BLOCK_N) * tiles_m * KT
        u0 = (gl.program_id(0) * U) // P
        u1 = ((gl.program_id(0) + 1) * U) // P
        un = u0 // (tiles_m * KT)
        um = (u0 // KT) % tiles_m
        uk = u0 % KT
        n_units = u1 - u0
    else:
        P = 1
        U = 0
        per_split = gl.cdiv(KT, SPLIT_K)
        un = gl.program_id(0)
        um = gl.program_id(1)
        uk = gl.program_id(2) * per_split
        n_units = gl.minimum(KT - uk, per_split)              # >= 1 unit (the spec's SPLIT_K rule)

    cr = gl.arange(0, 16, layout=gl.SliceLayout(1, WC))
    cn = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, WC))
    w_base = qw_ptr + cr[:, None] * stride_qk + cn[None, :]
    xm = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, x_ld))
    xk = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, x_ld))
    x_base = x_ptr + xm[:, None] * stride_xm + xk[None, :]
    if UNROLL:
        # One allocation per slot, and the loop unrolled by STAGES so every slot index is static: Triton's
        # barrier pass then sees that the refill of slot t - 1 touches no buffer unit t's wgmmas read, and adds
        # no CTA barrier of its own before it (with one [STAGES, ...] buffer and a dynamic slot it did, one per
        # K tile: at 64x64 the loop was 322 -> 241 SASS instructions per K tile, 2 -> 1 BAR.SYNC).
        x0 = gl.allocate_shared_memory(ACT, [BLOCK_M, BLOCK_K], x_sl)
        x1 = gl.allocate_shared_memory(ACT, [BLOCK_M, BLOCK_K], x_sl)
        x2 = gl.allocate_shared_memory(ACT, [BLOCK_M, BLOCK_K], x_sl)
        w0 = gl.allocate_shared_memory(gl.int32, [16, BLOCK_N], w_sl)
        w1 = gl.allocate_shared_memory(gl.int32, [16, BLOCK_N], w_sl)
        w2 = gl.allocate_shared_memory(gl.int32, [16, BLOCK_N], w_sl)
        x3 = x0
        w3 = w0
        x4 = x0
        w4 = w0
        if STAGES >= 4:
            x3 = gl.allocate_shared_memory(ACT, [BLOCK_M, BLOCK_K], x_sl)
            w3 = gl.allocate_shared_memory(gl.int32, [16, BLOCK_N], w_sl)
        if STAGES >= 5:
            x4 = gl.allocate_shared_memory(ACT, [BLOCK_M, BLOCK_K], x_sl)
            w4 = gl.allocate_shared_memory(gl.int32, [16, BLOCK_N], w_sl)
    else:
        x_smem = gl.allocate_shared_memory(ACT, [STAGES, BLOCK_M, BLOCK_K], x_sl)
        w_smem = gl.allocate_shared_memory(gl.int32, [STAGES, 16, BLOCK_N], w_sl)

    ln = un          # the next unit to load
    lm = um
    lk = uk
    for j in gl.static_range(STAGES - 1):
        if UNROLL:
            _load_unit(_pick(x0, x1, x2, x3, x4, j), _pick(w0, w1, w2, w3, w4, j), x_base, w_base, ln, lm, lk,
                       j < n_units, M, N, stride_xm, stride_qk, cn, xm, BLOCK_M, BLOCK_N)
        else:
            _load_unit(x_smem.index(j), w_smem.index(j), x_base, w_base, ln, lm, lk, j < n_units, M, N, stride_xm,
                       stride_qk, cn, xm, BLOCK_M, BLOCK_N)
        async_copy.commit_group()
        ln, lm, lk = _next_unit(ln, lm, lk, KT, tiles_m, STRIPES)
    async_copy.wait_group(STAGES - 2)
    _barrier()
    fence_async_shared()
    if UNROLL:
        we, wo = _split_rows(gl.permute(w0.load(WT), [1, 0]))     # [BLOCK_N, 16] in WL, by row parity
    else:
        we, wo = _split_rows(gl.permute(w_smem.index(0).load(WT), [1, 0]))
    zm, zo, s = _unit_scales(s_ptr, qz_ptr, un, uk, N, stride_sg, stride_zg, GROUP_SIZE, HAS_ZEROS, MAGIC, ODD_MAGIC,
                             ACT, BLOCK_N, SL)
    sn, sm, sk = _next_unit(un, um, uk, KT, tiles_m, STRIPES)    # the unit after the current one (scales, words)
    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, mma)
    q1 = gl.zeros([BLOCK_N, 16], ACT, a_l)       # the A operands of the MMAs still in flight
    q2 = gl.zeros([BLOCK_N, 16], ACT, a_l)
    # ACC_SCALE: a unit's fp32 partial and the scale of the one in it (without ACC_SCALE, unused)
    part = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, mma)
    sp = s
    if UNROLL:
        # unit t0 + j in slot j; the refill (unit t + STAGES - 1) goes to slot j - 1, the next words are slot j + 1.
        # Whole rounds of STAGES units, then the last n_units % STAGES units each under a branch (a branch in the
        # loop made the barrier pass put its second barrier back).
        full = n_units - n_units % STAGES
        for t0 in range(0, full, STAGES):
            for j in gl.static_range(STAGES):
                acc, part, sp, q1, q2, we, wo, zm, zo, s, un, um, uk, sn, sm, sk, ln, lm, lk = _unit(
                    _pick(x0, x1, x2, x3, x4, j), _pick(x0, x1, x2, x3, x4, (j + STAGES - 1) % STAGES),
                    _pick(w0, w1, w2, w3, w4, (j + STAGES - 1) % STAGES),
                    _pick(w0, w1, w2, w3, w4, (j + 1) % STAGES), t0 + j, n_units,
                    acc, part, sp, q1, q2, we, wo, zm, zo, s, un, um, uk, sn, sm, sk, ln, lm, lk,
                    x_base, w_base, s_ptr, qz_ptr, out_ptr, bias_ptr, ws_ptr, lock_ptr, M, N, KT, tiles_m, U, P,
                    stride_xm, stride_qk, stride_zg, stride_sg, stride_om, cn, xm, GROUP_SIZE, HAS_ZEROS,
                    HAS_BIAS, MAGIC, ODD_MAGIC, ACT, BLOCK_M, BLOCK_N, STAGES, MMA_DEPTH, ACC_SCALE, STRIPES, WL,
                    WT, SL, a_l, mma)
        for j in gl.static_range(STAGES - 1):
            if full + j < n_units:
                acc, part, sp, q1, q2, we, wo, zm, zo, s, un, um, uk, sn, sm, sk, ln, lm, lk = _unit(
                    _pick(x0, x1, x2, x3, x4, j), _pick(x0, x1, x2, x3, x4, (j + STAGES - 1) % STAGES),
                    _pick(w0, w1, w2, w3, w4, (j + STAGES - 1) % STAGES),
                    _pick(w0, w1, w2, w3, w4, (j + 1) % STAGES), full + j, n_units,
                    acc, part, sp, q1, q2, we, wo, zm, zo, s, un, um, uk, sn, sm, sk, ln, lm, lk,
                    x_base, w_base, s_ptr, qz_ptr, out_ptr, bias_ptr, ws_ptr, lock_ptr, M, N, KT, tiles_m, U, P,
                    stride_xm, stride_qk, stride_zg, stride_sg, stride_om, cn, xm, GROUP_SIZE, HAS_ZEROS,
                    HAS_BIAS, MAGIC, ODD_MAGIC, ACT, BLOCK_M, BLOCK_N, STAGES, MMA_DEPTH, ACC_SCALE, STRIPES, WL,
                    WT, SL, a_l, mma)
    else:
        for t in range(n_units):
            nt = t + STAGES - 1
            t1 = gl.minimum(t + 1, n_units - 1)
            acc, part, sp, q1, q2, we, wo, zm, zo, s, un, um, uk, sn, sm, sk, ln, lm, lk = _unit(
                x_smem.index(t % STAGES), x_smem.index(nt % STAGES), w_smem.index(nt % STAGES),
                w_smem.index(t1 % STAGES), t, n_units,
                acc, part, sp, q1, q2, we, wo, zm, zo, s, un, um, uk, sn, sm, sk, ln, lm, lk,
                x_base, w_base, s_ptr, qz_ptr, out_ptr, bias_ptr, ws_ptr, lock_ptr, M, N, KT, tiles_m, U, P,
                stride_xm, stride_qk, stride_zg, stride_sg, stride_om, cn, xm, GROUP_SIZE, HAS_ZEROS,
                HAS_BIAS, MAGIC, ODD_MAGIC, ACT, BLOCK_M, BLOCK_N, STAGES, MMA_DEPTH, ACC_SCALE, STRIPES, WL, WT,
                SL, a_l, mma)
    if ACC_SCALE:
        acc, part, q1, q2 = warpgroup_mma_wait(num_outstanding=0, deps=[acc, part, q1, q2])
        if not STRIPES:     # the last unit's partial (a persistent grid has added each tile's as the tile ended)
            acc = _fold(acc, part, sp, mma)
    else:
        acc, q1, q2 = warpgroup_mma_wait(num_outstanding=0, deps=[acc, q1, q2])
    async_copy.wait_group(0)
    if not STRIPES:
        _finish_tile(acc, out_ptr, bias_ptr, ws_ptr, lock_ptr, gl.program_id(0) * BLOCK_N, gl.program_id(1) * BLOCK_M,
                     gl.program_id(0) * tiles_m + gl.program_id(1), SPLIT_K, M, N, stride_om, HAS_BIAS, BLOCK_N,
                     BLOCK_M, num_warps)


@gluon.jit
def _finish_tile(acc, out_ptr, bias_ptr, ws_ptr, lock_ptr, n0, m0, tile, contributors, M, N, stride_om,
                 HAS_BIAS: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, num_warps: gl.constexpr):
    """Write a finished out^T tile, or add it to the fp32 workspace when ``contributors`` programs share it: the
    last to take the tile's ticket writes the sum and re-zeroes the workspace and the ticket.  The tile goes
    through a layout change first (N-contiguous runs of 8 per thread: 16-byte stores and 4-wide atomic adds;
    from the accumulator's own layout the adds were one element each, ~1.7x the time of the persistent grid at
    M = 64)."""
    st: gl.constexpr = gl.BlockedLayout([8, 1], [4, 8], [1, num_warps], [0, 1])
    o = gl.convert_layout(acc, st)
    on = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, st))
    om = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, st))
    mask = (on[:, None] < N) & (om[None, :] < M)
    if contributors == 1:
        _store_out(o, out_ptr, bias_ptr, on, om, mask, stride_om, N, HAS_BIAS)
    else:
        ws = ws_ptr + om[None, :] * N + on[:, None]
        gl.atomic_add(ws, o, mask=mask, sem="relaxed")
        # every warp's adds are performed relative to the CTA at the barrier, and the one thread that takes the
        # ticket releases them at gpu scope (a release is cumulative; the split-K barrier of CUTLASS): no fence per
        # thread, which waited for its own adds (ERRBAR: 4-6% of the stall samples at M = 16 and 64)
        _barrier()
        ticket = gl.atomic_add(lock_ptr + tile, 1, sem="acq_rel")
        if ticket == contributors - 1:
            # the ticket's acquire, then (the ticket's broadcast) a barrier: every thread reads the sums in L2
            o = gl.load(ws, mask=mask, other=0.0, cache_modifier=".cg")
            gl.store(ws, gl.zeros_like(o), mask=mask)
            gl.atomic_xchg(lock_ptr + tile, 0)
            _store_out(o, out_ptr, bias_ptr, on, om, mask, stride_om, N, HAS_BIAS)


@gluon.jit
def _store_out(o, out_ptr, bias_ptr, on, om, mask, stride_om, N, HAS_BIAS: gl.constexpr):
    if HAS_BIAS:
        b = gl.load(bias_ptr + on, mask=on < N, other=0.0).to(gl.float32)
        o = o + b[:, None]
    gl.store(out_ptr + om[None, :] * stride_om + on[:, None], o.to(out_ptr.dtype.element_ty), mask=mask)
