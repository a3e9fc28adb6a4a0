"""``triton_gemm_rs``: the Hopper register-operand W4A16 GEMM (Gluon) -- each nibble plane of a kplanes K
tile, decoded in registers, is the A operand of one asynchronous wgmma (jit: ``triton/gemm_rs.py``).

Its ring depth is the table's ``num_stages`` (the jit code's STAGES, 3 where unset: Gluon has no software
pipeliner to hand it to); ``num_warps`` 4 or 8 (one or two warp groups, each over 16-row slices of BLOCK_N)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ..spec import KernelConfig, KernelSpec, LaunchPlan, fused_arguments, k_tile_reason
from .triton_stripe import stripe_geometry

BLOCK_K = 128          # one kplanes block per K tile: nibble plane i is its rows 16 i .. 16 i + 15
DEFAULT_STAGES = 3     # the ring depth where the launch options leave num_stages unset


def ring_depth(launch) -> int:
    return DEFAULT_STAGES if launch.num_stages is None else launch.num_stages


@dataclasses.dataclass(frozen=True)
class GemmRsConfig(KernelConfig):
    """BLOCK_M tokens (the wgmma N: 8..256, a multiple of 8) x BLOCK_N weight columns (16-row slices per warp,
    a power-of-two count per warp, <= 256) per program; SPLIT_K programs along K reduce through the split-K
    workspace; MMA_DEPTH wgmmas in flight while the next planes decode (1 or 2).  PER_SM > 0: a persistent grid
    of PER_SM programs per SM instead of one program per (tile, split), each walking a contiguous run of
    (tile, K tile) units -- every program streams the same number of weight tiles, and a tile whose K is shared
    by several runs is reduced through the same workspace (PER_SM needs SPLIT_K = 1).  UNROLL: each ring slot its
own shared-memory allocation and the K loop unrolled by the ring depth (3..5), so no slot index is dynamic and
Triton's barrier pass adds no second CTA barrier per K tile (more code, and more registers where the loop
carries a persistent grid's unit state).  ACC_SCALE: the group scale applied to each K tile's fp32 partial (the
wgmmas take ``q - z``: one FMA per accumulator element per K tile instead of one fp16x2 multiply per pair of K rows
on the path into every wgmma; one more accumulator's registers, and a wait for the tile's MMAs as the next one
starts)."""

    BLOCK_M: int
    BLOCK_N: int
    SPLIT_K: int = 1
    MMA_DEPTH: int = 1
    PER_SM: int = 0
    UNROLL: bool = False
    ACC_SCALE: bool = False
    BLOCK_K: ClassVar[int] = BLOCK_K     # fixed, not a table key

    def check(self, launch, problem, shared_limit):
        why = k_tile_reason(BLOCK_K, problem)
        if why:
            return why
        if not (8 <= self.BLOCK_M <= 256 and self.BLOCK_M % 8 == 0):
            return f"BLOCK_M={self.BLOCK_M}: the wgmma N side is 8..256, a multiple of 8"
        warps = launch.num_warps or 4
        if warps not in (4, 8):
            return f"num_warps={warps}: one or two warp groups (4 or 8)"
        reps, rem = divmod(self.BLOCK_N, 16 * warps)
        if rem or reps < 1 or reps & (reps - 1) or self.BLOCK_N > 256:
            return (f"BLOCK_N={self.BLOCK_N} must be a power-of-two multiple of 16 x num_warps = {16 * warps}, "
                    f"<= 256")
        if ring_depth(launch) < 3:
            return "num_stages (the ring depth) must be >= 3"
        if self.UNROLL and ring_depth(launch) > 5:
            return f"UNROLL: the unrolled ring has 3..5 slots, not {ring_depth(launch)}"
        if self.MMA_DEPTH not in (1, 2):
            return f"MMA_DEPTH={self.MMA_DEPTH}: 1 or 2"
        if self.PER_SM and self.SPLIT_K != 1:
            return f"PER_SM={self.PER_SM}: a persistent grid reduces the tiles it shares itself; it needs SPLIT_K = 1"
        tiles = problem.K // BLOCK_K
        if self.SPLIT_K < 1 or (self.SPLIT_K - 1) * -(-tiles // self.SPLIT_K) >= tiles:
            return f"SPLIT_K={self.SPLIT_K}: every split needs at least one of the {tiles} K tiles"
        return self._shared_reason(launch, problem, shared_limit)

    def shared_bytes(self, launch, act_bytes=2):
        ring = ring_depth(launch) * (self.BLOCK_M * BLOCK_K * act_bytes + 16 * self.BLOCK_N * 4)
        if self.PER_SM:      # a tile ends while the ring is still loading: the epilogue's layout change has its own
            return ring + self.BLOCK_M * self.BLOCK_N * 4
        return max(ring, self.BLOCK_M * self.BLOCK_N * 4)      # the epilogue's layout change reuses it

    def label(self) -> str:
        c = dict(self.items())
        rest = [f"sk{c['SPLIT_K']}"] if c.get("SPLIT_K", 1) != 1 else []
        rest += [f"d{c['MMA_DEPTH']}"] if c.get("MMA_DEPTH", 1) != 1 else []
        rest += [f"per_sm{c['PER_SM']}"] if c.get("PER_SM", 0) else []
        rest += ["unrolled"] if c.get("UNROLL", 0) else []
        rest += ["acc_scale"] if c.get("ACC_SCALE", 0) else []
        return " ".join([f"{self.BLOCK_M}x{self.BLOCK_N}x{self.BLOCK_K}"] + rest)


def _hopper_only(problem, target) -> str | None:
    if target.arch != "sm90":
        return f"wgmma exists on sm90 only, not {target.arch}"
    return None


def plan(cfg: GemmRsConfig, launch, problem, target, interpret: bool) -> LaunchPlan:
    if interpret:
        raise ValueError("triton_gemm_rs is a Gluon kernel: Triton's interpreter cannot run it")
    from ..triton.gemm_rs import _gemm_rs_kernel

    M, N = problem.m, problem.N
    tiles = (-(-N // cfg.BLOCK_N), -(-M // cfg.BLOCK_M))
    if cfg.PER_SM:     # the stripe kernel's persistent geometry: PER_SM per SM, at most one program per unit
        programs, _, _, units = stripe_geometry(cfg, M, N, problem.K, target.compute_units)
        if (units + 1) * programs >= 2 ** 31:
            raise ValueError(f"triton_gemm_rs: {units} units on {programs} programs overflows 32-bit unit arithmetic")
        grid = (programs,)
        ws = (M * N, tiles[0] * tiles[1])
    else:
        grid = (*tiles, cfg.SPLIT_K)
        ws = (M * N, tiles[0] * tiles[1]) if cfg.SPLIT_K > 1 else None
    options = {k: v for k, v in launch.for_backend(target.backend).items() if k != "num_stages"}
    consts = dict(GROUP_SIZE=problem.group_size, HAS_ZEROS=problem.has_zeros, HAS_BIAS=problem.has_bias,
                  KPLANES=True, **{k: v for k, v in cfg.constexprs().items() if k != "PER_SM"},
                  STAGES=ring_depth(launch), STRIPES=cfg.PER_SM > 0)
    return LaunchPlan("triton_gemm_rs", _gemm_rs_kernel, grid, consts, options, fused_arguments, workspace=ws,
                      x_aligned=True)


SPECS = (KernelSpec("triton_gemm_rs", "Gluon W4A16 GEMM for Hopper: each decoded nibble plane is the register "
                    "A operand of an asynchronous wgmma (no shared-memory round trip of the decoded weight)",
                    ("cuda",), ("float16", "bfloat16"), config=GemmRsConfig, plan=plan, extra_check=_hopper_only,
                    matrix_units=True, layouts=("kplanes",), interpretable=False),)
