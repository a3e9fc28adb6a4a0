"""Register-operand W4A16 GEMM for Hopper (Gluon): the decoded weight is the A operand of wgmma, in registers.

``out^T [N, M] = W^T [N, K] x^T [K, M]``: a program owns BLOCK_N weight columns (the wgmma's M side) and
BLOCK_M tokens (its N side).  Per K tile of 128 rows (one kplanes block, ``formats/kplanes.py``):

* the tile's x rows [BLOCK_M, 128] and its packed words [16, BLOCK_N] arrive by ``cp.async`` in a ring of
  STAGES shared-memory slots (tile t in slot t % STAGES);
* each thread reads back exactly the words the A-operand layout gives it (:func:`word_layout`: rows n with
  n % 8 = lane // 4 and word rows r in {2c, 2c+1, 2c+8, 2c+9}, c = lane % 4), so nibble plane i of those
  words -- rows 16 i + r of the block -- *is* that thread's share of the A operand of K step i: the layout
  conversion is checked trivial at compile time (no shared-memory round trip of the decoded weight);
* plane i is decoded with the 16-bit magic (``q | 0x6400`` is fp16 1024 + q; bf16 ``0x4300``), ``(q - z) * s``
  in the activation dtype (exact subtraction, one rounding, as the user's dequant), and fed to an
  asynchronous wgmma whose x operand is the K slice [16 i, 16 i + 16) of the tile's x slot;
* the wgmma of step i is waited for MMA_DEPTH steps later -- across the loop edge too -- so the decode of the
  next planes overlaps it (waiting for every MMA at the end of each tile cost ~9% of the stall samples at
  M = 256, ncu); the next tile's scales and zeros are loaded from global memory as a tile starts; half-way
  through it (MMAs in flight) the program waits for tile t + 1, requests tile t + STAGES - 1 into the slot of
  tile t - 1 (whose last wgmma was retired by tile t's first MMA_DEPTH steps) and reads tile t + 1's words.

Triton >= 3.7 lowers each wgmma wait of an 8-warp program with a CTA barrier (both warp groups); 3.6, which
the tables were measured on, does not.

SPLIT_K programs share a tile along K and reduce through the fp32 workspace like the other fused kernels
(relaxed adds, one ticket per tile, the last program writes the output and re-zeroes the workspace).

Gluon kernels have no interpreter: the CPU tests compile this for sm90 (Triton 3.6 and 3.9 alike) and read
the TTGIR; the numerics are tested on the GPU.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (async_copy, fence_async_shared, warpgroup_mma,
                                                              warpgroup_mma_wait)

# the spellings that differ between Triton 3.6 and 3.9
_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared


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


@gluon.jit
def _plane(words, I: gl.constexpr, zm, s, MAGIC: gl.constexpr, ACT: gl.constexpr):
    """Nibble I of every word as ``(q - z) * s`` in the activation dtype (``zm``: the zero as MAGIC + z)."""
    q = ((words >> (4 * I)) & 15).to(gl.int16)
    v = (q | MAGIC).to(ACT, bitcast=True)
    return (v - zm[:, None]) * s[:, None]


@gluon.jit
def _tile_scales(s_ptr, qz_ptr, t, offs_n, mask_n, stride_sg, stride_zg, GROUP_SIZE: gl.constexpr,
                 HAS_ZEROS: gl.constexpr, MAGIC: gl.constexpr, ACT: gl.constexpr):
    """K tile t's scales and zeros (as MAGIC + z) of its group, per weight column."""
    g = (t * 128) // GROUP_SIZE
    s = gl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0)
    if HAS_ZEROS:
        zw = gl.load(qz_ptr + g * stride_zg + offs_n // 8, mask=mask_n, other=0)
        zq = ((zw >> ((offs_n % 8) * 4)) & 15).to(gl.int16)
    else:
        zq = gl.full(offs_n.shape, 8, gl.int16, offs_n.type.layout)
    return (zq | MAGIC).to(ACT, bitcast=True), s


@gluon.jit
def _gemm_rs_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                    M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                    GROUP_SIZE: gl.constexpr, HAS_ZEROS: gl.constexpr, HAS_BIAS: gl.constexpr,
                    KPLANES: gl.constexpr,
                    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, SPLIT_K: gl.constexpr, STAGES: gl.constexpr,
                    MMA_DEPTH: gl.constexpr):
    num_warps: gl.constexpr = gl.num_warps()
    gl.static_assert(KPLANES, "the register-operand GEMM reads the kplanes layout")
    gl.static_assert(STAGES >= 3, "the ring needs STAGES >= 3 (tile t + 1 is read while tile t - 1's slot refills)")
    gl.static_assert(MMA_DEPTH == 1 or MMA_DEPTH == 2, "MMA_DEPTH is 1 or 2")
    BLOCK_K: gl.constexpr = 128
    ACT: gl.constexpr = x_ptr.dtype.element_ty
    if ACT == gl.bfloat16:
        MAGIC: gl.constexpr = 0x4300
    else:
        MAGIC: gl.constexpr = 0x6400
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_M, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    WL: gl.constexpr = word_layout(BLOCK_N, num_warps, False)
    WT: gl.constexpr = word_layout(BLOCK_N, num_warps, True)
    WC: gl.constexpr = copy_layout(BLOCK_N, num_warps)
    x_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], ACT)
    w_sl: gl.constexpr = gl.SwizzledSharedLayout(4, 1, 8, [1, 0])     # 16-byte chunks, rows XOR-swizzled
    x_ld: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [num_warps, 1], [1, 0])

    pid_n = gl.program_id(0)
    pid_m = gl.program_id(1)
    pid_k = gl.program_id(2)
    n0 = pid_n * BLOCK_N
    m0 = pid_m * BLOCK_M
    offs_n = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, WL))
    mask_n = offs_n < N

    n_all = K // BLOCK_K
    per_split = gl.cdiv(n_all, SPLIT_K)
    t_lo = pid_k * per_split
    n_tiles = gl.minimum(n_all - t_lo, per_split)       # >= 1 (the spec's SPLIT_K rule)

    cr = gl.arange(0, 16, layout=gl.SliceLayout(1, WC))
    cn = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, WC))
    w_ptrs = qw_ptr + (t_lo * 16 + cr)[:, None] * stride_qk + cn[None, :]
    w_mask = (cn < N)[None, :]
    xm = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, x_ld))
    xk = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, x_ld))
    x_ptrs = x_ptr + xm[:, None] * stride_xm + t_lo * BLOCK_K + xk[None, :]
    x_mask = xm[:, None] < M
    x_smem = gl.allocate_shared_memory(ACT, [STAGES, BLOCK_M, BLOCK_K], x_sl)
    w_smem = gl.allocate_shared_memory(gl.int32, [STAGES, 16, BLOCK_N], w_sl)

    for t in gl.static_range(STAGES - 1):
        _async_load(x_smem.index(t), x_ptrs + t * BLOCK_K, mask=x_mask & (t < n_tiles))
        _async_load(w_smem.index(t), w_ptrs + t * 16 * stride_qk, mask=w_mask & (t < n_tiles))
        async_copy.commit_group()
    async_copy.wait_group(STAGES - 2)
    fence_async_shared()
    _barrier()
    words = gl.permute(w_smem.index(0).load(WT), [1, 0])          # [BLOCK_N, 16] in WL
    zm, s = _tile_scales(s_ptr, qz_ptr, t_lo, offs_n, mask_n, stride_sg, stride_zg, GROUP_SIZE, HAS_ZEROS, MAGIC, ACT)
    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, mma)
    q1 = gl.zeros([BLOCK_N, 16], ACT, a_l)       # the A operands of the MMAs still in flight
    q2 = gl.zeros([BLOCK_N, 16], ACT, a_l)
    for t in range(n_tiles):
        xs = x_smem.index(t % STAGES)
        t1 = gl.minimum(t + 1, n_tiles - 1)
        # the next tile's scales and zeros from global memory a whole tile before their first use
        zm_n, s_n = _tile_scales(s_ptr, qz_ptr, t_lo + t1, offs_n, mask_n, stride_sg, stride_zg, GROUP_SIZE,
                                 HAS_ZEROS, MAGIC, ACT)
        for i in gl.static_range(8):
            p = gl.convert_layout(_plane(words, i, zm, s, MAGIC, ACT), a_l, assert_trivial=True)
            acc = warpgroup_mma(p, xs.slice(16 * i, 16, dim=1).permute((1, 0)), acc, is_async=True)
            if MMA_DEPTH == 1:
                acc, q1 = warpgroup_mma_wait(num_outstanding=1, deps=[acc, q1])
                q1 = p
            else:
                acc, q2 = warpgroup_mma_wait(num_outstanding=2, deps=[acc, q2])
                q2 = q1
                q1 = p
            if i == 3:
                async_copy.wait_group(STAGES - 3)
                fence_async_shared()       # the copies this thread waited for, before wgmma (async proxy) reads
                _barrier()                 # ... and every warp's, and every warp group's MMAs on tile t - 1
                nt = t + STAGES - 1
                _async_load(x_smem.index(nt % STAGES), x_ptrs + nt * BLOCK_K, mask=x_mask & (nt < n_tiles))
                _async_load(w_smem.index(nt % STAGES), w_ptrs + nt * 16 * stride_qk, mask=w_mask & (nt < n_tiles))
                async_copy.commit_group()
                words_n = gl.permute(w_smem.index(t1 % STAGES).load(WT), [1, 0])
        words = words_n
        zm = zm_n
        s = s_n
    acc, q1, q2 = warpgroup_mma_wait(num_outstanding=0, deps=[acc, q1, q2])
    async_copy.wait_group(0)

    st: gl.constexpr = gl.BlockedLayout([8, 1], [4, 8], [1, num_warps], [0, 1])
    o = gl.convert_layout(acc, st)
    on = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, st))
    om = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, st))
    mask = (on[:, None] < N) & (om[None, :] < M)
    if SPLIT_K > 1:
        ws = ws_ptr + om[None, :] * N + on[:, None]
        gl.atomic_add(ws, o, mask=mask, sem="relaxed")
        _fence_gpu(num_warps)      # every thread's adds performed at gpu scope before the barrier and the ticket
        _barrier()
        tile_id = pid_m * gl.num_programs(0) + pid_n
        ticket = gl.atomic_add(lock_ptr + tile_id, 1, sem="acq_rel")
        if ticket == SPLIT_K - 1:
            o = gl.atomic_add(ws, gl.zeros_like(o), mask=mask, sem="acquire")     # read at L2
            gl.store(ws, gl.zeros_like(o), mask=mask)
            gl.atomic_xchg(lock_ptr + tile_id, 0)
            _store_out(o, out_ptr, bias_ptr, on, om, mask, stride_om, N, HAS_BIAS)
    else:
        _store_out(o, out_ptr, bias_ptr, on, om, mask, stride_om, N, HAS_BIAS)


@gluon.jit
def _fence_gpu(num_warps: gl.constexpr):
    """``fence.acq_rel.gpu`` in every thread (as ``decode._fence_gpu``)."""
    one: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])
    gl.inline_asm_elementwise("fence.acq_rel.gpu;\n mov.u32 $0, 0;", "=r,r", [gl.full([32 * num_warps], 0, gl.int32, one)],
                              dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _store_out(o, out_ptr, bias_ptr, on, om, mask, stride_om, N, HAS_BIAS: gl.constexpr):
    if HAS_BIAS:
        b = gl.load(bias_ptr + on, mask=on < N, other=0.0).to(gl.float32)
        o = o + b[:, None]
    gl.store(out_ptr + om[None, :] * stride_om + on[:, None], o.to(out_ptr.dtype.element_ty), mask=mask)
