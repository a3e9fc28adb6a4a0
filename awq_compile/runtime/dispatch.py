"""Run one plan entry: the bridge from a kernel id and config to the code that computes it, and the rule
for a plan meeting a device of another target family."""

from __future__ import annotations

import dataclasses
import functools
import logging

import torch

from ..formats.standard import dequantize_packed
from ..kernels.problem import Problem
from ..kernels.registry import KERNELS, Plan, PlanEntry, plan_for_device
from ..target import Target, detect, interpreter_active
from .weights import Prepared

__all__ = ["run_entry", "entry_runner", "plan_on_device", "device_target"]

log = logging.getLogger("awq_compile")


def _torch_dequant(x2d, prepared: Prepared, w, bias):
    if x2d.device.type == "cpu":
        # CPUs without fp16/bf16 matrix units multiply fastest (and most accurately) in float32
        out = (x2d.to(torch.float32) @ dequantize_packed(w, torch.float32)).to(x2d.dtype)
    else:
        out = x2d @ dequantize_packed(w, x2d.dtype)
    return out if bias is None else out + bias


def _cpu_int4pack(x2d, prepared: Prepared, std, bias):
    form = prepared.form("cpu_int4pack", std.qweight, std.scales, std.qzeros, x2d.dtype)
    out = torch._weight_int4pack_mm_for_cpu(x2d.contiguous(), form.qweight, form.group_size, form.scales)
    return out if bias is None else out + bias


def _triton_runner(entry: PlanEntry, problem: Problem, target: Target):
    from ..kernels.spec import LaunchOptions
    from ..kernels.triton.launch import launch, planned

    plan = planned(entry.kernel, entry.config, entry.launch or LaunchOptions(), problem, target, _interpreting())

    def run(x2d, prepared: Prepared, w, bias):
        out = torch.empty((x2d.shape[0], w.qweight.shape[1]), dtype=x2d.dtype, device=x2d.device)
        return launch(plan, x2d.contiguous(), w.qweight, w.qzeros, w.scales, bias, out)
    return run


@functools.lru_cache(maxsize=None)
def _interpreting() -> bool:
    return interpreter_active()


_RUNNERS = {"torch_dequant": _torch_dequant, "cpu_int4pack": _cpu_int4pack}


@functools.lru_cache(maxsize=None)
def device_target(device_type: str, index: int | None) -> Target:
    """The target of a device the op meets (detected once per device)."""
    return detect(torch.device(device_type, index) if index is not None else torch.device(device_type))


_WARNED: set = set()


def plan_on_device(plan: Plan, device: torch.device, problem: Problem, layer: str) -> Plan:
    """``plan`` if it was made for the family of ``device``'s target, else the registry's rule
    (:func:`~awq_compile.kernels.registry.plan_for_device`): re-planned for the device's target, with one
    warning per (layer, plan target, device target).  The result always carries a target."""
    target = device_target(device.type, device.index)
    resolved, why = plan_for_device(plan, target, problem)
    if why:
        key = (layer, str(plan.target), str(target))
        if key not in _WARNED:
            _WARNED.add(key)
            log.warning("awq_compile: layer '%s': %s", layer or "?", why)
    if resolved.target is None:
        resolved = dataclasses.replace(resolved, target=target)
    return resolved


def entry_runner(entry: PlanEntry, problem: Problem, target: Target):
    """``run(x2d, prepared, w, bias) -> out`` for ``entry`` of a plan for ``target`` on ``problem`` (its M and the
    layout its weight is prepared in): what depends on those -- the layout check, the launch plan -- decided
    once, so that a call site can keep it for every call at that M (:mod:`.calls`)."""
    spec = KERNELS[entry.kernel]
    if problem.layout not in spec.layouts:
        raise RuntimeError(f"awq_compile: {entry.kernel} reads the {'/'.join(spec.layouts)} layout but the weight is "
                           f"prepared in {problem.layout} (a plan and its weight disagree)")
    if entry.config is not None:
        return _triton_runner(entry, problem, target)
    return _RUNNERS[entry.kernel]


def run_entry(entry: PlanEntry, x2d, prepared: Prepared, qweight, qzeros, scales, bias, *, target: Target):
    """Run ``entry`` of a plan for ``target`` (from :func:`plan_on_device`) on the op's source tensors,
    resolved through ``prepared`` to the layout it holds (the plan's: the entry's kernel reads it)."""
    if bias is not None and bias.dtype != x2d.dtype:
        bias = bias.to(x2d.dtype)
    w = prepared.packed(qweight, scales, qzeros)
    M, K = x2d.shape
    problem = Problem(K, w.N, prepared.group_size, w.qzeros is not None, str(x2d.dtype).removeprefix("torch."),
                      has_bias=bias is not None, m=M, layout=w.layout)
    return entry_runner(entry, problem, target)(x2d, prepared, w, bias)
