"""Stripe W4A16 kernel: a persistent grid walking (tile, K tile) work in contiguous stripes.

``triton_stripe`` computes ``out[M, N] = x[M, K] @ dequant(W)[K, N] (+ bias)`` from the standard layout
(qweight int32 [K/8, N] packed along K, see ``formats/standard.py``) or from the ``kplanes`` layout
(``formats/kplanes.py``: the same words with K permuted inside each 128-row block so that nibble plane i
of a tile is the contiguous K range ``k0 + 16 i .. k0 + 16 i + 15``).

Work decomposition (Stream-K style).  The output is cut into tiles of BLOCK_M x BLOCK_N; each tile's K
is cut into K tiles of BLOCK_K (one quantisation group or a divisor of it), so there are
``U = tiles * K/BLOCK_K`` units of work.  The grid is P programs (a few per SM, P <= U) and program p
takes the contiguous unit range ``[p U / P, (p + 1) U / P)``: every program streams the same number of
weight bytes (no partial last wave) and walks whole runs of K for at most a few tiles.  A tile covered
by one program is written directly; a tile shared by the c programs whose stripes meet in it (2-7 here,
never 32) is reduced by the last of them to take the tile's ticket: with ``SLOTS`` each contributor
stores its fp32 partial in its own slot (plain stores; the sum is taken in program order, the same on
every call), otherwise the partials are fp32 atomics into a zero-kept workspace.  Tickets are left zeroed.

Per K tile the weight words are read with one wide load along N and decoded plane by plane (nibble i
of every word is plane i) with the 16-bit magic: ``(q | 0x6400)`` read as fp16 is ``1024 + q``
(``0x4300`` as bf16 is ``128 + q``), so ``q - z`` is one subtraction, exact.  Two bodies:

* ``DOT``: out^T tile [BLOCK_N, BLOCK_M] += W_plane^T [BLOCK_N, BLOCK_K/8] @ x_plane^T [BLOCK_K/8, BLOCK_M]
  for the eight planes -- the decoded weight is the left operand of the dot (on Hopper the register
  operand of wgmma), so it never goes back to shared memory; the group's scale multiplies the fp32
  partial of the K tile once (``q - z`` is exact in fp16/bf16).
* FMA (``DOT`` false, BLOCK_M == 1): fp32 ``x * (q - z)`` accumulated per thread, reduced once per K tile.

The K-tile loop is software-pipelined ``STAGES`` deep (``tl.range(..., num_stages=STAGES)``): the weight
words of the next tiles are in flight while the current one is decoded.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .decode import _fence_gpu, _magic16, _owner, _plane_act
from ..specs.triton_stripe import stripe_geometry, stripe_workspace_size
from .launch import workspace

__all__ = ["StripeConfig", "stripe_linear", "stripe_grid", "check_config"]


@dataclasses.dataclass(frozen=True)
class StripeConfig:
    """Tile sizes and variant of one ``triton_stripe`` launch, plus its launch options."""

    BLOCK_M: int = 16
    BLOCK_N: int = 128
    BLOCK_K: int = 128
    DOT: bool = True            # the plane dots on the matrix units (else fp32 FMA, BLOCK_M == 1)
    STAGES: int = 4             # software-pipelining depth of the K-tile loop
    PER_SM: int = 2             # programs per SM (the grid is PER_SM x SMs, at most the unit count)
    KPERM: bool = False         # weights in the kplanes layout (x planes contiguous) instead of standard
    TRANS: bool = True          # DOT: out^T = W^T x^T (weight = operand A: register wgmma on Hopper), else
                                # out = x W (x = operand A; mma.sync when BLOCK_M < 64)
    SCALE_IN: bool = False      # DOT: scale the decoded weight before the dot (one accumulator chain, rounded
                                # once like the user's dequant) instead of the fp32 partial after it
    PAIRS: bool = False         # DOT, weights in the kpairs layout: four dots of K = BLOCK_K / 4 per K tile, two
                                # nibbles decoded per 32-bit operation into one operand register
    SLOTS: bool = True          # partial tiles reduce through per-contributor slots (plain stores, deterministic)
                                # instead of fp32 atomics into a zeroed workspace
    WIDE: bool = False          # DOT + TRANS, standard layout: one dot of K = BLOCK_K per K tile (all nibbles of a
                                # word side by side) instead of eight plane dots of K = BLOCK_K / 8
    num_warps: int = 4

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"StripeConfig.{f.name} must be a positive int, not {v!r}")


def check_config(cfg: StripeConfig, *, K: int, N: int, group_size: int) -> str | None:
    """None when ``cfg`` can run this problem, else why not."""
    bk = cfg.BLOCK_K
    if bk % 8 or group_size % bk or K % bk:
        return f"BLOCK_K={bk} must be a multiple of 8 dividing the group size {group_size} and K={K}"
    if cfg.DOT and (bk < 128 or cfg.BLOCK_M < 16):
        return f"DOT needs BLOCK_K >= 128 (plane dots of K >= 16) and BLOCK_M >= 16, not {bk}/{cfg.BLOCK_M}"
    if not cfg.DOT and cfg.BLOCK_M != 1:
        return f"the FMA body takes BLOCK_M = 1, not {cfg.BLOCK_M}"
    if cfg.WIDE and (not cfg.DOT or not cfg.TRANS or cfg.KPERM):
        return "WIDE is a DOT + TRANS body over the standard layout (KPERM off)"
    if cfg.PAIRS and (not cfg.DOT or cfg.KPERM or cfg.WIDE or bk != 128):
        return "PAIRS is a DOT body over the kpairs layout (KPERM and WIDE off, BLOCK_K = 128)"
    if cfg.KPERM and bk != 128:
        return "the kplanes layout is permuted in blocks of 128 rows: BLOCK_K must be 128"
    if N % 8:
        return f"N={N} must be a multiple of 8"
    return None


# ----------------------------------------------------------------------------------------------------
@triton.jit
def _plane32(packed, I: tl.constexpr):
    """fp32 ``2**(23-P) + q`` for nibble I (masked in place at bit P, OR-ed into the exponent)."""
    if I >= 5:
        src = packed >> 12
        P: tl.constexpr = 4 * I - 12
    else:
        src = packed
        P: tl.constexpr = 4 * I
    MASK: tl.constexpr = 15 << P
    MAGIC: tl.constexpr = (150 - P) << 23
    return ((src & MASK) | MAGIC).to(tl.float32, bitcast=True)


@triton.jit
def _pair_asm(src, zm2, s2, ACT: tl.constexpr, SCALE: tl.constexpr):
    """int32 holding two activation-dtype values ``(q - z)`` (times s when SCALE) for nibbles 0 and 4 of
    ``src``: LOP3 ``(src & 0x000F000F) | MAGIC2``, then one paired subtract (and multiply) -- PTX only."""
    if ACT == tl.bfloat16:
        if SCALE:
            return tl.inline_asm_elementwise(
                "{ .reg .b32 t; lop3.b32 t, $1, 983055, 1124090624, 234; sub.rn.bf16x2 t, t, $2; "
                "mul.rn.bf16x2 $0, t, $3; }", "=r,r,r,r", [src, zm2, s2], dtype=tl.int32, is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise(
                "{ .reg .b32 t; lop3.b32 t, $1, 983055, 1124090624, 234; sub.rn.bf16x2 $0, t, $2; }",
                "=r,r,r,r", [src, zm2, s2], dtype=tl.int32, is_pure=True, pack=1)
    else:
        if SCALE:
            return tl.inline_asm_elementwise(
                "{ .reg .b32 t; lop3.b32 t, $1, 983055, 1677747200, 234; sub.rn.f16x2 t, t, $2; "
                "mul.rn.f16x2 $0, t, $3; }", "=r,r,r,r", [src, zm2, s2], dtype=tl.int32, is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise(
                "{ .reg .b32 t; lop3.b32 t, $1, 983055, 1677747200, 234; sub.rn.f16x2 $0, t, $2; }",
                "=r,r,r,r", [src, zm2, s2], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _offset32(I: tl.constexpr):
    """The ``2**(23-P)`` that ``_plane32`` adds to nibble I."""
    if I >= 5:
        return 1.0 * (1 << (35 - 4 * I))
    else:
        return 1.0 * (1 << (23 - 4 * I))


@triton.jit
def _stripe_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                   M, N, K, C_MAX, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                   GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   DOT: tl.constexpr, STAGES: tl.constexpr, KPERM: tl.constexpr, EVEN_N: tl.constexpr,
                   TRANS: tl.constexpr, SCALE_IN: tl.constexpr, WIDE: tl.constexpr, PAIRS: tl.constexpr,
                   ASM: tl.constexpr, SLOTS: tl.constexpr, FENCE: tl.constexpr, UPCAST: tl.constexpr):
    ACT: tl.constexpr = x_ptr.dtype.element_ty
    BK8: tl.constexpr = BLOCK_K // 8
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    KT = K // BLOCK_K
    U = tiles_m * tiles_n * KT
    u0 = (pid * U) // P
    u1 = ((pid + 1) * U) // P
    offs_r = tl.arange(0, BK8)
    offs_bn = tl.arange(0, BLOCK_N)
    offs_bm = tl.arange(0, BLOCK_M)
    if KPERM:
        XR: tl.constexpr = 1          # plane i, word row r holds K row k0 + BK8 i + r
        XI: tl.constexpr = BK8
    else:
        XR: tl.constexpr = 8          # k0 + 8 r + i
        XI: tl.constexpr = 1
    # TRANS (and the FMA body): tiles are [BLOCK_N, .] (out^T); else [BLOCK_M, BLOCK_N] with x as operand A
    NT: tl.constexpr = TRANS or not DOT
    for tile in range(u0 // KT, tl.cdiv(u1, KT)):
        pid_m = tile % tiles_m
        pid_n = tile // tiles_m
        ka = max(u0, tile * KT) - tile * KT
        kb = min(u1, tile * KT + KT) - tile * KT
        offs_n = pid_n * BLOCK_N + offs_bn
        offs_m = pid_m * BLOCK_M + offs_bm
        mask_n = offs_n < N
        mask_m = offs_m < M
        # weight words of this column strip; N is the contiguous (wide-load) dimension
        if NT:
            w_ptrs = qw_ptr + offs_r[None, :] * stride_qk + offs_n[:, None]        # [BLOCK_N, BK8]
            w_mask = mask_n[:, None]
        else:
            w_ptrs = qw_ptr + offs_r[:, None] * stride_qk + offs_n[None, :]        # [BK8, BLOCK_N]
            w_mask = mask_n[None, :]
        if DOT:
            if TRANS:
                acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)            # out^T tile
                x_ptrs = x_ptr + offs_m[None, :] * stride_xm + offs_r[:, None] * XR   # [BK8, BLOCK_M]
                x_mask = mask_m[None, :]
                xw_ptrs = x_ptr + offs_m[None, :] * stride_xm + tl.arange(0, BLOCK_K)[:, None]   # [BK, BM]
                xq_ptrs = x_ptr + offs_m[None, :] * stride_xm + tl.arange(0, 2 * BK8)[:, None]   # [2 BK8, BM]
            else:
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_r[None, :] * XR   # [BLOCK_M, BK8]
                x_mask = mask_m[:, None]
                xq_ptrs = x_ptr + offs_m[:, None] * stride_xm + tl.arange(0, 2 * BK8)[None, :]   # [BM, 2 BK8]
        else:
            acc2 = tl.zeros((BLOCK_N, BK8), dtype=tl.float32)   # per-thread partials, reduced once per tile
            x_ptrs = x_ptr + pid_m * stride_xm + offs_r * XR
        for kt in tl.range(ka, kb, num_stages=STAGES):
            k0 = kt * BLOCK_K
            g = k0 // GROUP_SIZE
            if EVEN_N:
                packed = tl.load(w_ptrs + kt * BK8 * stride_qk)
                s = tl.load(s_ptr + g * stride_sg + offs_n)
            else:
                packed = tl.load(w_ptrs + kt * BK8 * stride_qk, mask=w_mask, other=0)
                s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0)
            if HAS_ZEROS:
                zw = tl.load(qz_ptr + g * stride_zg + offs_n // 8, mask=mask_n, other=0)
                zq = (zw >> ((offs_n % 8) * 4)) & 15
            else:
                zq = tl.full((BLOCK_N,), 8, tl.int32)
            if DOT:
                zm = _magic16(zq.to(tl.int16), ACT)                           # MAGIC + z
                if UPCAST:
                    zm = zm.to(tl.float32)
                sa = s.to(ACT)
                if TRANS:
                    zb = zm[:, None]
                    sb = sa[:, None]
                else:
                    zb = zm[None, :]
                    sb = sa[None, :]
                if not SCALE_IN:
                    if TRANS:
                        part = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
                    else:
                        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                if PAIRS:
                    # kpairs layout: nibbles i and i + 4 of a word are K rows 32 i + 2 r and 32 i + 2 r + 1; one
                    # 32-bit AND/OR makes both fp16 (or bf16) magics, the pair is one register of the operand
                    if ACT == tl.bfloat16:
                        MAG2: tl.constexpr = 0x43004300
                    else:
                        MAG2: tl.constexpr = 0x64006400
                    if ASM:
                        zbits = (zm.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF)
                        sbits = (sa.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF)
                        if TRANS:
                            zm2 = tl.broadcast_to((zbits | (zbits << 16))[:, None], (BLOCK_N, BK8))
                            s2 = tl.broadcast_to((sbits | (sbits << 16))[:, None], (BLOCK_N, BK8))
                        else:
                            zm2 = tl.broadcast_to((zbits | (zbits << 16))[None, :], (BK8, BLOCK_N))
                            s2 = tl.broadcast_to((sbits | (sbits << 16))[None, :], (BK8, BLOCK_N))
                    for i in tl.static_range(4):
                        if i > 0:
                            src = packed >> (4 * i)
                        else:
                            src = packed
                        if ASM:
                            # one LOP3 makes both magics, one f16x2/bf16x2 subtract (and multiply) finishes the pair
                            w2 = _pair_asm(src, zm2, s2, ACT, SCALE_IN)
                            w_lo = (w2 & 0xFFFF).to(tl.int16).to(ACT, bitcast=True)
                            w_hi = (w2 >> 16).to(tl.int16).to(ACT, bitcast=True)
                        else:
                            v = (src & 0x000F000F) | MAG2
                            lo = (v & 0xFFFF).to(tl.int16).to(ACT, bitcast=True)
                            hi = (v >> 16).to(tl.int16).to(ACT, bitcast=True)
                            if UPCAST:
                                lo = lo.to(tl.float32)
                                hi = hi.to(tl.float32)
                            w_lo = lo - zb
                            w_hi = hi - zb
                            if SCALE_IN:
                                if UPCAST:
                                    w_lo = (w_lo * sb.to(tl.float32)).to(ACT).to(tl.float32)
                                    w_hi = (w_hi * sb.to(tl.float32)).to(ACT).to(tl.float32)
                                else:
                                    w_lo = w_lo * sb
                                    w_hi = w_hi * sb
                        xp = tl.load(xq_ptrs + (k0 + 2 * BK8 * i), mask=x_mask, other=0.0)
                        if UPCAST:
                            xp = xp.to(tl.float32)
                        if TRANS:
                            w = tl.reshape(tl.join(w_lo, w_hi), (BLOCK_N, 2 * BK8))          # k = 2 r + j
                            if SCALE_IN:
                                acc = tl.dot(w, xp, acc)
                            else:
                                part = tl.dot(w, xp, part)
                        else:
                            w = tl.reshape(tl.permute(tl.join(w_lo, w_hi), (0, 2, 1)), (2 * BK8, BLOCK_N))
                            if SCALE_IN:
                                acc = tl.dot(xp, w, acc)
                            else:
                                part = tl.dot(xp, w, part)
                elif WIDE:
                    # one dot of K = BLOCK_K: all eight nibbles of each word side by side, natural k order
                    sh = tl.arange(0, 8) * 4
                    q3 = ((packed[:, :, None] >> sh[None, None, :]) & 15).to(tl.int16)
                    w3 = _magic16(q3, ACT)
                    if UPCAST:
                        w3 = w3.to(tl.float32)
                    w3 = w3 - zb[:, :, None]
                    if SCALE_IN:
                        w3 = w3 * sb[:, :, None]
                    w = tl.reshape(w3, (BLOCK_N, BLOCK_K))
                    xw = tl.load(xw_ptrs + k0, mask=x_mask, other=0.0)
                    if UPCAST:
                        xw = xw.to(tl.float32)
                    if SCALE_IN:
                        acc = tl.dot(w.to(xw.dtype), xw, acc)
                    else:
                        part = tl.dot(w.to(xw.dtype), xw, part)
                else:
                    for i in tl.static_range(8):
                        xp = tl.load(x_ptrs + (k0 + i * XI), mask=x_mask, other=0.0)
                        if UPCAST:   # interpreter: its bf16 arithmetic is wrong; the same values in fp32 are exact
                            w = _plane_act(packed, i, ACT).to(tl.float32) - zb
                            if SCALE_IN:
                                w = (w * sb.to(tl.float32)).to(ACT).to(tl.float32)
                            xp = xp.to(tl.float32)
                        else:
                            w = _plane_act(packed, i, ACT) - zb                 # q - z, exact
                            if SCALE_IN:
                                w = w * sb                                    # rounded once, as the user's dequant
                        if SCALE_IN:
                            if TRANS:
                                acc = tl.dot(w, xp, acc)
                            else:
                                acc = tl.dot(xp, w, acc)
                        else:
                            if TRANS:
                                part = tl.dot(w, xp, part)
                            else:
                                part = tl.dot(xp, w, part)
                if not SCALE_IN:
                    if TRANS:
                        acc += part * s.to(tl.float32)[:, None]
                    else:
                        acc += part * s.to(tl.float32)[None, :]
            else:
                zf = zq.to(tl.float32)
                d = tl.zeros((BLOCK_N, BK8), dtype=tl.float32)
                for i in tl.static_range(8):
                    xi = tl.load(x_ptrs + (k0 + i * XI)).to(tl.float32)
                    d += (_plane32(packed, i) - (zf + _offset32(i))[:, None]) * xi[None, :]
                acc2 += d * s.to(tl.float32)[:, None]
        # ---- write the tile: directly when this stripe covered its whole K, else through the workspace
        if DOT:
            if TRANS:
                o_off = offs_m[None, :] * stride_om + offs_n[:, None]
                w_off = offs_m[None, :] * N + offs_n[:, None]
                o_mask = mask_m[None, :] & mask_n[:, None]
                b_idx = offs_n[:, None]
            else:
                o_off = offs_m[:, None] * stride_om + offs_n[None, :]
                w_off = offs_m[:, None] * N + offs_n[None, :]
                o_mask = mask_m[:, None] & mask_n[None, :]
                b_idx = offs_n[None, :]
        else:
            acc = tl.sum(acc2, axis=1)
            o_off = pid_m * stride_om + offs_n
            w_off = pid_m * N + offs_n
            o_mask = mask_n
            b_idx = offs_n
        whole = (ka == 0) & (kb == KT)
        done = whole
        if not whole:
            first = _owner(tile * KT, U, P)
            last = _owner(tile * KT + KT - 1, U, P)
            if SLOTS:
                # every contributor stores its partial in its own slot (plain stores, no atomics on data); the
                # last to take the tile's ticket sums the slots in program order (the same sum on every call)
                if DOT:
                    if TRANS:
                        loc = offs_bm[None, :] * BLOCK_N + offs_bn[:, None]
                        l_mask = mask_m[None, :]       # rows past M (small-M padding): not stored, not read
                    else:
                        loc = offs_bm[:, None] * BLOCK_N + offs_bn[None, :]
                        l_mask = mask_m[:, None]
                else:
                    loc = offs_bn
                    l_mask = mask_n
                TILE: tl.constexpr = BLOCK_M * BLOCK_N
                slot0 = ws_ptr + tile * C_MAX * TILE
                tl.store(slot0 + (pid - first) * TILE + loc, acc, mask=l_mask)
                _fence_gpu(FENCE)            # this thread's partial is visible at gpu scope before the ticket
                tl.debug_barrier()
                ticket = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel")
                done = ticket == last - first
                if done:
                    _fence_gpu(FENCE)
                    acc = tl.zeros_like(acc)
                    for j in range(0, last - first + 1):
                        acc += tl.load(slot0 + j * TILE + loc, mask=l_mask, other=0.0, cache_modifier=".cg")
                    tl.atomic_xchg(lock_ptr + tile, 0)
            else:
                tl.atomic_add(ws_ptr + w_off, acc, mask=o_mask, sem="relaxed")
                # every thread's adds performed at gpu scope before this program takes its ticket
                tl.atomic_add(ws_ptr + w_off, tl.zeros_like(acc), mask=o_mask, sem="release")
                tl.debug_barrier()
                ticket = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel")
                done = ticket == last - first
                if done:
                    acc = tl.atomic_add(ws_ptr + w_off, tl.zeros_like(acc), mask=o_mask, sem="acquire")
                    tl.store(ws_ptr + w_off, tl.zeros_like(acc), mask=o_mask)
                    tl.atomic_xchg(lock_ptr + tile, 0)
        if done:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + b_idx, mask=b_idx < N, other=0.0).to(tl.float32)
            tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


# ----------------------------------------------------------------------------------------------------
# The standalone launcher (benchmarks/stripe_sweep.py, stripe_profile.py and tests/kernels/test_stripe.py):
# every StripeConfig variant, including the standard-layout bodies (WIDE, PAIRS) the layer does not offer.
# The layer's launch is planned by specs/triton_stripe.py.
_SMS: dict = {}


def _sm_count(device) -> int:
    if device.type != "cuda":
        return 4          # the interpreter: a few programs, so stripes still meet inside tiles
    if device.index not in _SMS:
        _SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device.index]


def stripe_grid(cfg: StripeConfig, M: int, N: int, K: int, sms: int) -> int:
    """Programs launched: PER_SM per SM, at most one per unit of work (the spec's geometry)."""
    return stripe_geometry(cfg, M, N, K, sms)[0]


def stripe_linear(x2d, qweight, qzeros, scales, bias, group_size: int, cfg: StripeConfig, out=None, *,
                  sms: int | None = None, interpret: bool = False, asm: bool = True):
    """``x2d [M, K] @ W (+ bias)`` with W in the standard layout (or kplanes when ``cfg.KPERM``).

    ``sms``: multiprocessors to size the grid for (default: the tensors' device's).  ``interpret``: the
    Triton interpreter runs this launch (CPU tensors), which changes only how a bf16 dot is evaluated.
    ``asm``: PAIRS decodes with inline PTX (NVIDIA only; the portable Triton spelling otherwise).
    """
    M, K = x2d.shape
    N = qweight.shape[1]
    if qweight.shape[0] * 8 != K:
        raise ValueError(f"stripe_linear: x has K={K} but the weight holds {qweight.shape[0] * 8} rows")
    why = check_config(cfg, K=K, N=N, group_size=group_size)
    if why:
        raise ValueError(f"stripe_linear: {why}")
    if x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    out = out if out is not None else torch.empty((M, N), dtype=x2d.dtype, device=x2d.device)
    P, tiles, c_max, units = stripe_geometry(cfg, M, N, K, sms or _sm_count(x2d.device))
    if (units + 1) * P >= 2 ** 31:
        raise ValueError(f"stripe_linear: {tiles} tiles x {K // cfg.BLOCK_K} K tiles on {P} programs "
                         "overflows 32-bit unit arithmetic")
    # the kernel layer's per-device workspaces (kernels/triton/launch.py): slots, or the zero-kept atomic one
    ws, lock = workspace(x2d.device, *stripe_workspace_size(cfg, M, N, tiles, c_max),
                         "slots" if cfg.SLOTS else "atomic")
    _stripe_kernel[(P,)](
        x2d, qweight, qzeros if qzeros is not None else qweight, scales,
        bias if bias is not None else scales, out, ws, lock,
        M, N, K, c_max, x2d.stride(0), qweight.stride(0),
        qzeros.stride(0) if qzeros is not None else 0, scales.stride(0), out.stride(0),
        GROUP_SIZE=group_size, HAS_ZEROS=qzeros is not None, HAS_BIAS=bias is not None,
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, DOT=cfg.DOT, STAGES=cfg.STAGES,
        KPERM=cfg.KPERM, EVEN_N=N % cfg.BLOCK_N == 0, TRANS=cfg.TRANS, SCALE_IN=cfg.SCALE_IN, WIDE=cfg.WIDE,
        PAIRS=cfg.PAIRS, ASM=bool(cfg.PAIRS and asm and not interpret), SLOTS=cfg.SLOTS,
        FENCE=bool(cfg.SLOTS and not interpret),
        UPCAST=bool(interpret and x2d.dtype == torch.bfloat16),
        num_warps=cfg.num_warps, num_stages=1)
    return out
