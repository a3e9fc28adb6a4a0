"""``triton_gemv``: split-K GEMV (fp32 FMA, no matrix units) for decode-sized M (jit: ``triton/gemv.py``)."""

from __future__ import annotations

import dataclasses

from ..spec import KernelConfig, KernelSpec, LaunchPlan, fused_arguments, k_tile_reason


@dataclasses.dataclass(frozen=True)
class GemvConfig(KernelConfig):
    """BLOCK_M rows x BLOCK_N columns per program, K tiles of BLOCK_K, SPLIT_K programs along K (each a
    contiguous run of groups).  FMA_DECODE (BLOCK_M = 1, power-of-two groups): one FMA per weight on
    ``OFF + q``, the offsets taken off once per group."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    SPLIT_K: int = 1
    FMA_DECODE: bool = False

    def check(self, launch, problem, shared_limit):
        split = self.SPLIT_K
        why = k_tile_reason(self.BLOCK_K, problem)
        if why:
            return why
        G = problem.group_size
        if self.FMA_DECODE and (G & (G - 1) or self.BLOCK_M != 1):
            return f"FMA_DECODE needs BLOCK_M=1 and a power-of-two group size, not {G}"
        if split > problem.K // G:
            return f"SPLIT_K={split} exceeds the {problem.K // G} groups"
        if split > problem.K // self.BLOCK_K:
            return f"SPLIT_K={split} exceeds the {problem.K // self.BLOCK_K} K tiles"
        return self._shared_reason(launch, problem, shared_limit)

    def shared_bytes(self, launch, act_bytes=2):
        stages = launch.stages
        return 0 if stages <= 1 else (stages - 1) * (self.BLOCK_M * self.BLOCK_K * act_bytes
                                                     + self.BLOCK_K * self.BLOCK_N // 2)


def gemv_grid_and_workspace(cfg, problem):
    """Grid (N tiles, split, M tiles) and the split-K workspace of the GEMV kernels."""
    M, N = problem.m, problem.N
    tiles_m, tiles_n = -(-M // cfg.BLOCK_M), -(-N // cfg.BLOCK_N)
    ws = (M * N, tiles_m * tiles_n) if cfg.SPLIT_K > 1 else None
    return (tiles_n, cfg.SPLIT_K, tiles_m), ws


def fence_code(target, interpret: bool) -> bool:
    """Whether a kernel's FENCE constexpr may select ``fence.acq_rel.gpu`` (inline PTX: NVIDIA code, not under
    the interpreter) -- the split-K epilogue's and the stripe kernel's per-thread release."""
    return not interpret and target.backend == "cuda"


def common_constexprs(problem, target, interpret: bool) -> dict:
    """The constexprs every fused kernel takes: group size, zeros, bias, layout, and FENCE (:func:`fence_code`)."""
    return dict(GROUP_SIZE=problem.group_size, HAS_ZEROS=problem.has_zeros, HAS_BIAS=problem.has_bias,
                KPLANES=problem.layout == "kplanes", FENCE=fence_code(target, interpret))


def plan(cfg: GemvConfig, launch, problem, target, interpret: bool) -> LaunchPlan:
    from ..triton.gemv import _gemv_kernel

    grid, ws = gemv_grid_and_workspace(cfg, problem)
    consts = {**common_constexprs(problem, target, interpret), **cfg.constexprs()}
    return LaunchPlan("triton_gemv", _gemv_kernel, grid, consts,
                      {} if interpret else launch.for_backend(target.backend), fused_arguments, workspace=ws)


SPECS = (KernelSpec("triton_gemv", "Triton split-K GEMV (fp32 FMA, no matrix units) for decode-sized M",
                    ("cuda", "cdna", "rdna"), ("float16", "bfloat16"), config=GemvConfig, plan=plan, m_max=4, layouts=("standard", "kplanes")),)
