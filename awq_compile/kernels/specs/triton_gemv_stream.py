"""``triton_gemv_stream``: the GEMV with the next K tile's words, scales and zeros loaded before the current
one is decoded (register double buffering; jit: ``triton/gemv.py``)."""

from __future__ import annotations

import dataclasses

from ..spec import KernelConfig, KernelSpec, LaunchPlan, fused_arguments, k_tile_reason
from .triton_gemv import common_constexprs, gemv_grid_and_workspace


@dataclasses.dataclass(frozen=True)
class GemvStreamConfig(KernelConfig):
    """As the GEMV, but each of the SPLIT_K programs streams a contiguous run of K *tiles* (not groups)."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    SPLIT_K: int = 1

    def check(self, launch, problem, shared_limit):
        why = k_tile_reason(self.BLOCK_K, problem)
        if why:
            return why
        if self.SPLIT_K > problem.K // self.BLOCK_K:
            return f"SPLIT_K={self.SPLIT_K} exceeds the {problem.K // self.BLOCK_K} K tiles"
        return self._shared_reason(launch, problem, shared_limit)

    def shared_bytes(self, launch, act_bytes=2):
        stages = launch.stages
        return 0 if stages <= 1 else (stages - 1) * (self.BLOCK_M * self.BLOCK_K * act_bytes
                                                     + self.BLOCK_K * self.BLOCK_N // 2)


def plan(cfg: GemvStreamConfig, launch, problem, target, interpret: bool) -> LaunchPlan:
    from ..triton.gemv import _gemv_stream_kernel

    grid, ws = gemv_grid_and_workspace(cfg, problem)
    return LaunchPlan("triton_gemv_stream", _gemv_stream_kernel, grid,
                      {**common_constexprs(problem, target, interpret), **cfg.constexprs()},
                      {} if interpret else launch.for_backend(target.backend), fused_arguments, workspace=ws)


SPECS = (KernelSpec("triton_gemv_stream", "Triton split-K GEMV streaming K tiles with the next tile prefetched "
                    "into registers", ("cuda", "cdna", "rdna"), ("float16", "bfloat16"),
                    config=GemvStreamConfig, plan=plan, m_max=4, layouts=("standard", "kplanes")),)
