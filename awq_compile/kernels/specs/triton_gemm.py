"""``triton_gemm``: tiled fused W4A16 GEMM on the matrix units, optional split-K (jit: ``triton/gemm.py``)."""

from __future__ import annotations

import dataclasses

from ..spec import KernelConfig, KernelSpec, LaunchPlan, fused_arguments, k_tile_reason
from .triton_gemv import common_constexprs


@dataclasses.dataclass(frozen=True)
class GemmConfig(KernelConfig):
    """BLOCK_M x BLOCK_N output tiles over K tiles of BLOCK_K, GROUP_M row tiles per column strip (L2
    order), SPLIT_K programs along K.  SCALE_AFTER: the dot takes ``q - z`` and the group scale multiplies
    the product (instead of dequantising ``(q - z) * s`` into the operand)."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    SPLIT_K: int = 1
    GROUP_M: int = 8
    SCALE_AFTER: bool = False

    def check(self, launch, problem, shared_limit):
        why = k_tile_reason(self.BLOCK_K, problem)
        if why:
            return why
        return self._gemm_rules(launch, problem, shared_limit)

    def _gemm_rules(self, launch, problem, shared_limit):
        if self.SPLIT_K > problem.K // self.BLOCK_K:
            return f"SPLIT_K={self.SPLIT_K} exceeds the {problem.K // self.BLOCK_K} K tiles"
        if self.BLOCK_M < 16:
            return "tl.dot needs BLOCK_M >= 16"
        return self._shared_reason(launch, problem, shared_limit)

    def shared_bytes(self, launch, act_bytes=2):
        per_stage = self.BLOCK_M * self.BLOCK_K * act_bytes + self.BLOCK_K * self.BLOCK_N // 2
        # the dequantised B operand is staged through shared memory once for the dot
        return max(launch.stages - 1, 1) * per_stage + self.BLOCK_K * self.BLOCK_N * act_bytes


def gemm_grid_and_workspace(cfg, problem):
    """Grid (M tiles x N tiles in grouped order, split) and the split-K workspace of the GEMM kernels."""
    M, N = problem.m, problem.N
    tiles = -(-M // cfg.BLOCK_M) * -(-N // cfg.BLOCK_N)
    return (tiles, cfg.SPLIT_K), ((M * N, tiles) if cfg.SPLIT_K > 1 else None)


def upcast_dot(problem, interpret: bool) -> bool:
    """Triton's interpreter multiplies bf16 wrongly in ``tl.dot``: it gets the fp32 of the same values."""
    return interpret and problem.act_dtype == "bfloat16"


def plan(cfg: GemmConfig, launch, problem, target, interpret: bool) -> LaunchPlan:
    from ..triton.gemm import _gemm_kernel

    grid, ws = gemm_grid_and_workspace(cfg, problem)
    consts = {**common_constexprs(problem, target, interpret), **cfg.constexprs(),
              "UPCAST_DOT": upcast_dot(problem, interpret)}
    return LaunchPlan("triton_gemm", _gemm_kernel, grid, consts,
                      {} if interpret else launch.for_backend(target.backend), fused_arguments, workspace=ws,
                      x_kplanes=cfg.BLOCK_K if problem.layout == "kplanes" and cfg.BLOCK_K < 128 else 0)


SPECS = (KernelSpec("triton_gemm", "Triton tiled fused W4A16 GEMM on the matrix units, optional split-K",
                    ("cuda", "cdna", "rdna"), ("float16", "bfloat16"), config=GemmConfig, plan=plan, matrix_units=True,
                    layouts=("standard", "kplanes")),)
