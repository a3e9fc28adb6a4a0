"""``triton_gemm_wide``: fused W4A16 GEMM for prefill-sized M -- big tiles, 16-bit decode of the whole K
tile in natural order, one dot per K tile, optional persistent grid (jit: ``triton/gemm_wide.py``)."""

from __future__ import annotations

import dataclasses

from ..spec import KernelConfig, KernelSpec, LaunchPlan, fused_arguments, k_tile_reason
from .triton_gemm import GemmConfig, upcast_dot
from .triton_gemv import common_constexprs

# Programs of a persistent launch per SM target: the plan has no SM count (plan_launch is pure), so a
# persistent grid is sized to the largest count of the family's parts (H100/H200 SXM: 132); on a part with
# fewer SMs the extra programs form a short second wave, never a wrong result.
PERSIST_PROGRAMS = {"cuda": 132, "cdna": 304, "rdna": 96}


@dataclasses.dataclass(frozen=True)
class GemmWideConfig(KernelConfig):
    """BLOCK_M x BLOCK_N output tiles over K tiles of BLOCK_K, GROUP_M row tiles per column strip (L2
    order), SPLIT_K programs along K; TRANS (``out^T = W^T x^T``: the decoded weight is the left,
    register-capable operand); PERSIST (a persistent grid of PERSIST programs per SM walks the tiles; 0:
    one program per tile)."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    SPLIT_K: int = 1
    GROUP_M: int = 8
    TRANS: bool = False
    PERSIST: int = 0

    _gemm_rules = GemmConfig._gemm_rules

    def check(self, launch, problem, shared_limit):
        why = k_tile_reason(self.BLOCK_K, problem)
        if why:
            return why
        if self.PERSIST and self.SPLIT_K > 1:
            return "PERSIST walks whole tiles: SPLIT_K must be 1"
        return self._gemm_rules(launch, problem, shared_limit)

    def shared_bytes(self, launch, act_bytes=2):
        per_stage = self.BLOCK_M * self.BLOCK_K * act_bytes + self.BLOCK_K * self.BLOCK_N // 2 + self.BLOCK_N * 4
        staged_w = 0 if self.TRANS else self.BLOCK_K * self.BLOCK_N * act_bytes
        return max(launch.stages - 1, 1) * per_stage + staged_w


def wide_grid_and_workspace(cfg: GemmWideConfig, problem, family: str):
    M, N = problem.m, problem.N
    tiles = -(-M // cfg.BLOCK_M) * -(-N // cfg.BLOCK_N)
    if cfg.PERSIST:
        return (min(tiles, cfg.PERSIST * PERSIST_PROGRAMS.get(family, 132)), 1), None
    return (tiles, cfg.SPLIT_K), ((M * N, tiles) if cfg.SPLIT_K > 1 else None)


def plan(cfg: GemmWideConfig, launch, problem, target, interpret: bool) -> LaunchPlan:
    from ..triton.gemm_wide import _gemm_wide_kernel

    grid, ws = wide_grid_and_workspace(cfg, problem, target.family)
    consts = {**common_constexprs(problem, target, interpret), **cfg.constexprs(),
              "UPCAST_DOT": upcast_dot(problem, interpret)}
    return LaunchPlan("triton_gemm_wide", _gemm_wide_kernel, grid, consts,
                      {} if interpret else launch.for_backend(target.backend), fused_arguments, workspace=ws,
                      x_kplanes=cfg.BLOCK_K if problem.layout == "kplanes" and cfg.BLOCK_K < 128 else 0)


SPECS = (KernelSpec("triton_gemm_wide", "Triton fused W4A16 GEMM for prefill M: wide tiles, 16-bit decode of "
                    "the whole K tile, one dot per K tile, optional persistent grid",
                    ("cuda", "cdna", "rdna"), ("float16", "bfloat16"), config=GemmWideConfig, plan=plan,
                    matrix_units=True, layouts=("standard", "kplanes")),)
