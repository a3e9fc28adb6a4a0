"""The kernels that are not Triton: torch's CPU int4 kernel and dequantise-then-matmul (any device).

They take no table and no config; :mod:`awq_compile.runtime.dispatch` runs them."""

from __future__ import annotations

from ..spec import KernelSpec


def _cpu_int4pack_check(problem, target) -> str | None:
    if problem.group_size not in (32, 64, 128, 256):
        return f"torch's CPU int4 kernel takes group sizes 32/64/128/256, not {problem.group_size}"
    if problem.N % 16:
        return f"torch's CPU int4 kernel needs N divisible by 16, N={problem.N}"
    return None


SPECS = (
    # bf16 only: on CPUs without native fp16 math torch's int4 kernel ran fp16 ~35x slower than bf16
    # (measured on the 2-core CI machine, 2026-11-24); fp16/fp32 take the dequant + fp32 matmul path.
    KernelSpec("cpu_int4pack", "torch._weight_int4pack_mm_for_cpu on weights repacked for it (bf16)",
               ("cpu",), ("bfloat16",), extra_check=_cpu_int4pack_check),
    KernelSpec("torch_dequant", "dequantise the standard layout per call, then matmul (fp32 on CPU); "
               "weights stay 4-bit in memory, at the cost of one dequantisation per call",
               ("cpu", "cuda", "cdna", "rdna"), ("float16", "bfloat16", "float32"), layouts=("standard", "kplanes")),
)
