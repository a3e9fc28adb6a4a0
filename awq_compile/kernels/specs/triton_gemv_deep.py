"""``triton_gemv_deep``: the GEMV with several K tiles per load, the next chunk prefetched (or the loop
software-pipelined), per-word scale/zero and one reduction per program (jit: ``triton/gemv_deep.py``)."""

from __future__ import annotations

import dataclasses

from ..spec import KernelConfig, KernelSpec, LaunchPlan, fused_arguments, k_tile_reason
from .triton_gemv import common_constexprs, gemv_grid_and_workspace


@dataclasses.dataclass(frozen=True)
class GemvDeepConfig(KernelConfig):
    """BLOCK_N columns per program (BLOCK_M = 1: one program per row), chunks of TILES K tiles of BLOCK_K
    rows, SPLIT_K programs along K (each a contiguous run of chunks; 1 = no workspace, no ticket).
    PREFETCH: the next chunk loaded before the current one is decoded (register double buffering).
    STAGES > 1: the chunk loop goes to Triton's software pipeliner with that many stages (cp.async into
    shared memory on NVIDIA) -- the alternative to PREFETCH, not combined with it.  XSUM: the zero-point and
    offset terms come from per-tile sums of one contiguous load of x (else per word row, from the nibble
    loads; the compiler then loads x a second time in another layout).  XPREFETCH (with PREFETCH and XSUM):
    the next chunk's x is loaded with its words, one iteration ahead."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    TILES: int = 1
    SPLIT_K: int = 1
    PREFETCH: bool = True
    STAGES: int = 1
    XSUM: bool = True
    XPREFETCH: bool = False

    def check(self, launch, problem, shared_limit):
        why = k_tile_reason(self.BLOCK_K, problem)
        if why:
            return why
        if self.BLOCK_M != 1:
            return f"BLOCK_M={self.BLOCK_M}: the deep GEMV takes one row per program (BLOCK_M = 1)"
        t = self.TILES
        if t < 1 or t & (t - 1):
            return f"TILES={t} must be a power of two"
        if self.STAGES < 1:
            return f"STAGES={self.STAGES} must be at least 1"
        if self.XPREFETCH and not (self.PREFETCH and self.XSUM):
            return "XPREFETCH rides on PREFETCH and XSUM"
        if self.PREFETCH and self.STAGES > 1:
            return "PREFETCH (register double buffering) and STAGES > 1 (the pipeliner) are alternatives"
        chunks = -(-problem.K // (t * self.BLOCK_K))
        if self.SPLIT_K > chunks:
            return f"SPLIT_K={self.SPLIT_K} exceeds the {chunks} chunks of {t}x{self.BLOCK_K} K rows"
        return self._shared_reason(launch, problem, shared_limit)

    def shared_bytes(self, launch, act_bytes=2):
        # the pipeliner's buffers: words of STAGES - 1 chunks in flight
        return 0 if self.STAGES <= 1 else (self.STAGES - 1) * self.TILES * self.BLOCK_K * self.BLOCK_N // 2


def plan(cfg: GemvDeepConfig, launch, problem, target, interpret: bool) -> LaunchPlan:
    from ..triton.gemv_deep import _gemv_deep_kernel

    grid, ws = gemv_grid_and_workspace(cfg, problem)
    return LaunchPlan("triton_gemv_deep", _gemv_deep_kernel, grid, {**common_constexprs(problem), **cfg.constexprs()},
                      {} if interpret else launch.for_backend(target.backend), fused_arguments, workspace=ws)


SPECS = (KernelSpec("triton_gemv_deep", "Triton GEMV with several K tiles per load, the next chunk in flight, "
                    "one reduction per program", ("cuda", "cdna", "rdna"), ("float16", "bfloat16"),
                    config=GemvDeepConfig, plan=plan, m_max=4),)
