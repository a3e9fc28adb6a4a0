"""``triton_stripe``: the persistent stripe kernel -- PER_SM programs per SM walk contiguous runs of
(output tile, K tile) units, partial tiles reduced by their few contributors (jit: ``triton/stripe.py``).

The grid is ``PER_SM x`` :attr:`Target.compute_units` programs (at most one per unit of work), so it is
a fact of the target the plan is made for, never of the host.  A tile whose K is split between the c
programs whose stripes meet in it (at most ``C_MAX``, a run-time argument computed here) is reduced
through the ``slots`` workspace (one fp32 slot per contributor, plain stores, summed in program order by
the last to take the tile's ticket; :mod:`..triton.launch` keeps it apart from the zero-kept split-K
buffer) or, with SLOTS off, through fp32 atomics into the zero-kept one.

Offered for ``kplanes`` weights only (KPERM, BLOCK_K = 128: each plane's activations one contiguous
load): on the standard layout no stripe config was measured faster than the shipped plan
(docs/performance.md), so the layer never plans it there; the standalone launcher
(``triton.stripe.stripe_linear``, the sweeps) still runs the standard-layout bodies (WIDE, PAIRS).
"""

from __future__ import annotations

import dataclasses
import functools

from ..spec import KernelConfig, KernelSpec, LaunchPlan, Operands, k_tile_reason
from .triton_gemv import fence_code


@dataclasses.dataclass(frozen=True)
class StripeKernelConfig(KernelConfig):
    """BLOCK_M x BLOCK_N output tiles, K tiles of BLOCK_K; DOT (eight plane dots per K tile on the matrix
    units; else the fp32 FMA body, BLOCK_M = 1); STAGES (software-pipelining depth of the K loop: the
    launch's ``num_stages`` stays 1); PER_SM (programs per SM); TRANS (``out^T = W^T x^T``: the decoded
    weight is the register operand); SCALE_IN (scale the decoded weight before the dot, not the fp32
    partial after it); SLOTS (per-contributor slot reduction instead of atomics)."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int = 128
    DOT: bool = True
    STAGES: int = 4
    PER_SM: int = 2
    TRANS: bool = True
    SCALE_IN: bool = False
    SLOTS: bool = True

    def check(self, launch, problem, shared_limit):
        why = k_tile_reason(self.BLOCK_K, problem)
        if why:
            return why
        if self.DOT and (self.BLOCK_K < 128 or self.BLOCK_M < 16):
            return f"DOT needs BLOCK_K >= 128 (plane dots of K >= 16) and BLOCK_M >= 16, not {self.BLOCK_K}/{self.BLOCK_M}"
        if not self.DOT:
            # H200, Triton 3.6 (2026-12-01 night): the FMA body with slots, an even N and no zero points fails
            # to compile ("operand #0 does not dominate this use"); no table needs it (the GEMV serves M = 1)
            return "the FMA body (DOT=0) is not offered to tables: Triton 3.6 cannot compile it for every problem"
        if self.BLOCK_K != 128:
            return "the kplanes layout is permuted in blocks of 128 rows: BLOCK_K must be 128"
        if self.STAGES < 1 or self.PER_SM < 1:
            return f"STAGES={self.STAGES} and PER_SM={self.PER_SM} must be at least 1"
        if launch.num_stages not in (None, 1):
            return f"the K loop is pipelined by STAGES; num_stages must be 1, not {launch.num_stages}"
        return self._shared_reason(launch, problem, shared_limit)

    def label(self) -> str:
        """``16x128x128 stages3 per_sm2 dot trans slots``."""
        flags = [k.lower() for k in ("DOT", "TRANS", "SCALE_IN", "SLOTS") if getattr(self, k)]
        return " ".join([f"{self.BLOCK_M}x{self.BLOCK_N}x{self.BLOCK_K}", f"stages{self.STAGES}",
                         f"per_sm{self.PER_SM}"] + flags)

    def shared_bytes(self, launch, act_bytes=2):
        # the pipelined K loop keeps STAGES - 1 tiles of weight words and activations in flight
        per_stage = self.BLOCK_K * self.BLOCK_N // 2 + self.BLOCK_M * self.BLOCK_K * act_bytes + self.BLOCK_N * 4
        return max(self.STAGES - 1, 1) * per_stage


def stripe_geometry(cfg, M: int, N: int, K: int, sms: int) -> tuple[int, int, int, int]:
    """(programs, output tiles, C_MAX, units) of a launch of the stripe kernel with ``cfg`` (anything with
    BLOCK_M / BLOCK_N / BLOCK_K / PER_SM: this spec's config or the standalone launcher's) on ``sms``
    multiprocessors: PER_SM per SM, at most one program per (tile, K tile) unit."""
    tiles = -(-M // cfg.BLOCK_M) * -(-N // cfg.BLOCK_N)
    kt = K // cfg.BLOCK_K
    units = tiles * kt
    programs = max(1, min(cfg.PER_SM * max(sms, 1), units))
    c_max = -(-kt // max(units // programs, 1)) + 1          # programs whose stripes can meet in one tile
    return programs, tiles, c_max, units


def stripe_workspace_size(cfg, M: int, N: int, tiles: int, c_max: int) -> tuple[int, int]:
    """(fp32 elements, tile tickets) in the launch's workspace kind: one slot per contributor of every tile
    (``slots``), or the [M rounded up to BLOCK_M, N] partial sums (``atomic``)."""
    if cfg.SLOTS:
        return tiles * c_max * cfg.BLOCK_M * cfg.BLOCK_N, tiles
    return -(-M // cfg.BLOCK_M) * cfg.BLOCK_M * N, tiles


def stripe_shape(cfg: StripeKernelConfig, problem, target) -> tuple[int, int, int, int]:
    """(programs, output tiles, C_MAX, units) of a launch for ``problem`` (``problem.m``: the concrete M)."""
    return stripe_geometry(cfg, problem.m, problem.N, problem.K, target.compute_units)


def stripe_workspace(cfg: StripeKernelConfig, problem, target) -> tuple[int, int]:
    """(fp32 elements, tile tickets) the launch needs in its workspace kind (``slots`` or ``atomic``)."""
    programs, tiles, c_max, _ = stripe_shape(cfg, problem, target)
    return stripe_workspace_size(cfg, problem.m, problem.N, tiles, c_max)


def stripe_arguments(o: Operands, *, c_max: int) -> tuple:
    M, K = o.x.shape
    N = o.qweight.shape[1]
    return (o.x, o.qweight, o.qzeros if o.qzeros is not None else o.qweight, o.scales,
            o.bias if o.bias is not None else o.scales, o.out, o.workspace, o.tickets,
            M, N, K, c_max, o.x.stride(0), o.qweight.stride(0), o.qzeros.stride(0) if o.qzeros is not None else 0,
            o.scales.stride(0), o.out.stride(0))


def plan(cfg: StripeKernelConfig, launch, problem, target, interpret: bool) -> LaunchPlan:
    from ..triton.stripe import _stripe_kernel

    programs, tiles, c_max, units = stripe_shape(cfg, problem, target)
    if (units + 1) * programs >= 2 ** 31:
        raise ValueError(f"triton_stripe: {units} units on {programs} programs overflows 32-bit unit arithmetic")
    consts = dict(GROUP_SIZE=problem.group_size, HAS_ZEROS=problem.has_zeros, HAS_BIAS=problem.has_bias,
                  BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, DOT=cfg.DOT, STAGES=cfg.STAGES,
                  KPERM=problem.layout == "kplanes", EVEN_N=problem.N % cfg.BLOCK_N == 0, TRANS=cfg.TRANS,
                  SCALE_IN=cfg.SCALE_IN, WIDE=False, PAIRS=False, ASM=False, SLOTS=cfg.SLOTS,
                  FENCE=cfg.SLOTS and fence_code(target, interpret),
                  UPCAST=interpret and problem.act_dtype == "bfloat16")
    options = {} if interpret else {**launch.for_backend(target.backend), "num_stages": 1}
    return LaunchPlan("triton_stripe", _stripe_kernel, (programs,), consts, options,
                      functools.partial(stripe_arguments, c_max=c_max),
                      workspace=stripe_workspace(cfg, problem, target),
                      workspace_kind="slots" if cfg.SLOTS else "atomic")


SPECS = (KernelSpec("triton_stripe", "Triton persistent stripe W4A16 kernel: PER_SM programs per SM over "
                    "(tile, K tile) runs, pipelined weight loads, plane dots with the weight as the register "
                    "operand, partial tiles reduced by their few contributors", ("cuda",), ("float16", "bfloat16"),
                    config=StripeKernelConfig, plan=plan, matrix_units=True, layouts=("kplanes",)),)
