"""``triton_gemm_planes``: the fused GEMM as eight dots per K tile, one per nibble plane, decoded in the
activation dtype (jit: ``triton/gemm.py``)."""

from __future__ import annotations

import dataclasses

from ..spec import KernelSpec, LaunchPlan, fused_arguments, k_tile_reason
from .triton_gemm import GemmConfig, gemm_grid_and_workspace, upcast_dot
from .triton_gemv import common_constexprs


@dataclasses.dataclass(frozen=True)
class GemmPlanesConfig(GemmConfig):
    """GemmConfig plus TRANS (compute ``out^T = W^T x^T``: the weight is the left operand) and XPERM (the
    launch regroups each K tile of x plane by plane, so a plane's activations are one vector load; a
    kplanes weight has its planes in K order already, so nothing is regrouped).
    BLOCK_K >= 128 (a dot of K = BLOCK_K/8 >= 16 per plane) and <= the group."""

    TRANS: bool = False
    XPERM: bool = False

    def check(self, launch, problem, shared_limit):
        why = k_tile_reason(self.BLOCK_K, problem)
        if why:
            return why
        if self.BLOCK_K < 128:
            return f"PLANES needs BLOCK_K >= 128 (a dot of K = BLOCK_K/8 >= 16 per nibble plane), not {self.BLOCK_K}"
        return self._gemm_rules(launch, problem, shared_limit)


def plan(cfg: GemmPlanesConfig, launch, problem, target, interpret: bool) -> LaunchPlan:
    from ..triton.gemm import _gemm_planes_kernel

    grid, ws = gemm_grid_and_workspace(cfg, problem)
    consts = {**common_constexprs(problem, target, interpret), **cfg.constexprs(),
              "UPCAST_DOT": upcast_dot(problem, interpret)}
    return LaunchPlan("triton_gemm_planes", _gemm_planes_kernel, grid, consts,
                      {} if interpret else launch.for_backend(target.backend), fused_arguments,
                      x_regroup=cfg.BLOCK_K if cfg.XPERM and problem.layout == "standard" else 0, workspace=ws)


SPECS = (KernelSpec("triton_gemm_planes", "Triton fused GEMM over nibble planes (eight dots per K tile, 16-bit "
                    "decode, no conversion instructions)", ("cuda", "cdna", "rdna"), ("float16", "bfloat16"),
                    config=GemmPlanesConfig, plan=plan, matrix_units=True, layouts=("standard", "kplanes")),)
