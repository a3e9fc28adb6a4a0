"""Run one plan entry: the bridge from a kernel id and config to the code that computes it."""

from __future__ import annotations

import torch

from ..formats.standard import dequantize_standard
from ..kernels.registry import KERNELS, Plan, PlanEntry
from ..kernels.problem import Problem
from .weights import Prepared

__all__ = ["run_entry", "entry_for_device"]


def _torch_dequant(x2d, prepared: Prepared, std, bias):
    q, qz, s = std.qweight, std.qzeros, std.scales
    if x2d.device.type == "cpu":
        # CPUs without fp16/bf16 matrix units multiply fastest (and most accurately) in float32
        w = dequantize_standard(q, qz, s, prepared.group_size, torch.float32)
        out = (x2d.to(torch.float32) @ w).to(x2d.dtype)
    else:
        out = x2d @ dequantize_standard(q, qz, s, prepared.group_size, x2d.dtype)
    return out if bias is None else out + bias


def _cpu_int4pack(x2d, prepared: Prepared, std, bias):
    form = prepared.form("cpu_int4pack", std.qweight, std.scales, std.qzeros, x2d.dtype)
    out = torch._weight_int4pack_mm_for_cpu(x2d.contiguous(), form.qweight, form.group_size, form.scales)
    return out if bias is None else out + bias


def _triton(kernel_id):
    def run(x2d, prepared: Prepared, std, bias, cfg):
        from ..kernels import triton_w4a16

        q, qz, s = std.qweight, std.qzeros, std.scales
        out = torch.empty((x2d.shape[0], q.shape[1]), dtype=x2d.dtype, device=x2d.device)
        return triton_w4a16.launch(kernel_id, x2d.contiguous(), q, qz, s, bias, out, prepared.group_size, cfg)
    return run


_RUNNERS = {
    "torch_dequant": lambda x, p, std, b, cfg: _torch_dequant(x, p, std, b),
    "cpu_int4pack": lambda x, p, std, b, cfg: _cpu_int4pack(x, p, std, b),
    "triton_gemm": _triton("triton_gemm"),
    "triton_gemv": _triton("triton_gemv"),
    "triton_dequant_mm": _triton("triton_dequant_mm"),
}


def entry_for_device(plan: Plan, m: int, device: torch.device, problem: Problem) -> PlanEntry:
    """The plan's entry for M, unless the tensors live where that kernel cannot run.

    A plan made for a GPU target can meet CPU tensors (explain for ``hip:gfx942`` on a laptop, then a
    real call); those run the CPU path -- torch's int4 kernel where it applies, else dequant + matmul.
    """
    entry = plan.entry_for(m)
    on_cpu = device.type == "cpu"
    kernel = KERNELS[entry.kernel]
    if on_cpu and "cpu" in kernel.families:
        return entry
    if not on_cpu and (kernel.uses_triton or entry.kernel == "torch_dequant"):
        return entry
    if on_cpu:
        from ..target import Target

        if KERNELS["cpu_int4pack"].can_implement(problem.with_m(m), Target("cpu")).ok:
            return PlanEntry(entry.m_max, "cpu_int4pack")
    return PlanEntry(entry.m_max, "torch_dequant")


def run_entry(entry: PlanEntry, x2d, prepared: Prepared, qweight, qzeros, scales, bias):
    """Run ``entry`` on the op's source tensors, resolved to the standard layout through ``prepared``."""
    if bias is not None and bias.dtype != x2d.dtype:
        bias = bias.to(x2d.dtype)
    std = prepared.standard(qweight, scales, qzeros)
    return _RUNNERS[entry.kernel](x2d, prepared, std, bias, entry.config_dict)
