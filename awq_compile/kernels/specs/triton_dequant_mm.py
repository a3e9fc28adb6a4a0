"""``triton_dequant_mm``: for large M, Triton dequantises the weight to the activation dtype, then
torch.matmul (cuBLAS / hipBLASLt) multiplies (jit: ``triton/dequant.py``)."""

from __future__ import annotations

import dataclasses

from ..spec import KernelConfig, KernelSpec, LaunchPlan, Operands, k_tile_reason


@dataclasses.dataclass(frozen=True)
class DequantConfig(KernelConfig):
    """BLOCK_N columns x BLOCK_K rows of the dense weight per program."""

    BLOCK_N: int
    BLOCK_K: int

    def check(self, launch, problem, shared_limit):
        return k_tile_reason(self.BLOCK_K, problem) or self._shared_reason(launch, problem, shared_limit)


def dequant_arguments(o: Operands) -> tuple:
    K, N = o.dense.shape
    return (o.qweight, o.qzeros if o.qzeros is not None else o.qweight, o.scales, o.dense, N, K,
            o.qweight.stride(0), o.qzeros.stride(0) if o.qzeros is not None else 0, o.scales.stride(0),
            o.dense.stride(0))


def plan(cfg: DequantConfig, launch, problem, target, interpret: bool) -> LaunchPlan:
    from ..triton.dequant import _dequant_kernel

    grid = (-(-problem.N // cfg.BLOCK_N), problem.K // cfg.BLOCK_K)
    consts = dict(GROUP_SIZE=problem.group_size, HAS_ZEROS=problem.has_zeros, **cfg.constexprs(),
                  KPLANES=problem.layout == "kplanes")
    return LaunchPlan("triton_dequant_mm", _dequant_kernel, grid, consts,
                      {} if interpret else launch.for_backend(target.backend), dequant_arguments, dense_weight=True)


SPECS = (KernelSpec("triton_dequant_mm", "large M: Triton dequantises the weight to the activation dtype, then "
                    "torch.matmul (cuBLAS / hipBLASLt) multiplies; for M buckets from 256 up where a table lists it",
                    ("cuda", "cdna", "rdna"), ("float16", "bfloat16"), config=DequantConfig, plan=plan,
                    m_min=256, layouts=("standard", "kplanes")),)
