"""``torch.ops.awq_compile.w4a16_linear``: the node our pass puts in place of a dequant + matmul.

::

    y = w4a16_linear(x, qweight, qzeros, scales, bias, aux, layer, fmt, group_size, plan, aux_digest)

* ``x`` [..., K] float16 / bfloat16 / float32; ``y`` [..., N] of x's dtype.
* ``qweight`` / ``qzeros`` / ``scales`` are the *source* tensors in layout ``fmt`` (``awq``, ``gptq_v2``,
  ...) exactly as the user's module holds them; the op finds their repacked form in the weight cache
  (:mod:`.weights`), repacking on first sight.
* ``aux`` are the other tensors the user's dequant read (reorder index, g_idx), checked against
  ``aux_digest`` whenever new weights appear.
* ``plan`` is the compile-time M -> (kernel, config) table (:class:`~.registry.Plan`) with the target it
  was made for; the choice by M happens here, at run time, so one compiled graph serves every batch size.
  The tensors' device is checked against the plan's target family once per device: on another family the
  plan is made again for the device's target and a warning names the layer (``runtime.dispatch``).

The op is opaque to Inductor (a ``custom_op`` with a fake implementation for shape propagation and
dynamic shapes).  Registration happens when this module is first imported, which the backend does.
"""

from __future__ import annotations

import functools
from typing import List, Optional

import torch

from ..formats.sources import get_format
from .dispatch import plan_on_device, run_entry
from ..kernels.problem import Problem
from ..kernels.registry import Plan
from .weights import weight_cache

__all__ = ["w4a16_linear", "check_inputs"]

_FLOAT = (torch.float16, torch.bfloat16, torch.float32)


def _fail(layer: str, what: str, expected, actual):
    raise ValueError(f"awq_compile: layer '{layer or '?'}': {what}: expected {expected}, got {actual}")


def check_inputs(x, qweight, qzeros, scales, bias, layer: str, fmt: str, group_size: int) -> tuple[int, int]:
    """Validate what reached the op; returns (K, N).  Errors name the layer and expected vs actual."""
    src = get_format(fmt)
    if qweight.dtype != torch.int32 or qweight.dim() != 2:
        _fail(layer, "qweight", "a 2-D int32 tensor", f"{qweight.dtype} of shape {tuple(qweight.shape)}")
    if src.packed_along == "N":
        K, N = qweight.shape[0], qweight.shape[1] * 8
    else:
        K, N = qweight.shape[0] * 8, qweight.shape[1]
    if x.dtype not in _FLOAT:
        _fail(layer, "activation dtype", "float16, bfloat16 or float32", x.dtype)
    if x.dim() < 1 or x.shape[-1] != K:
        _fail(layer, "activation's last dimension (in_features)", K, tuple(x.shape))
    if group_size <= 0 or K % group_size:
        _fail(layer, "group size", f"a divisor of K={K}", group_size)
    if tuple(scales.shape) != (K // group_size, N) or not scales.is_floating_point():
        _fail(layer, "scales", f"float [{K // group_size}, {N}]", f"{scales.dtype} {tuple(scales.shape)}")
    if src.has_zeros:
        if qzeros is None:
            _fail(layer, "qzeros", f"int32 [{K // group_size}, {N // 8}]", None)
        if qzeros.dtype != torch.int32 or tuple(qzeros.shape) != (K // group_size, N // 8):
            _fail(layer, "qzeros", f"int32 [{K // group_size}, {N // 8}]", f"{qzeros.dtype} {tuple(qzeros.shape)}")
    if bias is not None and (tuple(bias.shape) != (N,) or not bias.is_floating_point()):
        _fail(layer, "bias", f"float [{N}]", f"{bias.dtype} {tuple(bias.shape)}")
    for name, t in (("qweight", qweight), ("qzeros", qzeros), ("scales", scales), ("bias", bias)):
        if t is not None and t.device != x.device:
            _fail(layer, f"{name} device", x.device, t.device)
    return K, N


@functools.lru_cache(maxsize=4096)
def _plan_on(plan: str, layer: str, device_type: str, device_index, problem: Problem) -> Plan:
    """The plan text checked against the device once per (plan, layer, device, problem): the registry's
    rule re-plans (and warns once naming the layer) when the device is of another target family."""
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    return plan_on_device(Plan.decode(plan), device, problem, layer)


@torch.library.custom_op("awq_compile::w4a16_linear", mutates_args=())
def w4a16_linear(x: torch.Tensor, qweight: torch.Tensor, qzeros: Optional[torch.Tensor], scales: torch.Tensor,
                 bias: Optional[torch.Tensor], aux: List[torch.Tensor], layer: str, fmt: str, group_size: int,
                 plan: str, aux_digest: str) -> torch.Tensor:
    K, N = check_inputs(x, qweight, qzeros, scales, bias, layer, fmt, group_size)
    prepared = weight_cache().get(fmt, qweight, qzeros, scales, aux, aux_digest=aux_digest, layer=layer)
    x2d = x.reshape(-1, K)
    M = x2d.shape[0]
    if M == 0:
        return x.new_empty((*x.shape[:-1], N))
    problem = Problem(K, N, group_size, prepared.has_zeros, str(x.dtype).removeprefix("torch."),
                      has_bias=bias is not None)
    resolved = _plan_on(plan, layer, x.device.type, x.device.index, problem)
    out = run_entry(resolved.entry_for(M), x2d, prepared, qweight, qzeros, scales, bias, target=resolved.target)
    return out.reshape(*x.shape[:-1], N)


@w4a16_linear.register_fake
def _(x, qweight, qzeros, scales, bias, aux, layer, fmt, group_size, plan, aux_digest):
    K, N = check_inputs(x, qweight, qzeros, scales, bias, layer, fmt, group_size)
    return x.new_empty((*x.shape[:-1], N))


def _setup_context(ctx, inputs, output):
    x, qweight, qzeros, scales, bias, aux, layer, fmt, group_size, plan, aux_digest = inputs
    ctx.save_for_backward(qweight, qzeros, scales)
    ctx.meta = (fmt, group_size, bias is not None, len(aux))


def _backward(ctx, grad):
    # d/dx of x @ W is grad @ W^T; the weights themselves are constants (no gradient).
    qweight, qzeros, scales = ctx.saved_tensors
    fmt, group_size, has_bias, n_aux = ctx.meta
    w = get_format(fmt).to_unpacked(qweight, qzeros, scales).dequantize(grad.dtype)
    grad_x = grad @ w.t()
    grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if has_bias else None
    return grad_x, None, None, None, grad_bias, [None] * n_aux, None, None, None, None, None


w4a16_linear.register_autograd(_backward, setup_context=_setup_context)
