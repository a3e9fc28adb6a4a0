"""``torch.ops.awq_compile.w4a16_linear``: the node our pass puts in place of a dequant + matmul.

::

    y = w4a16_linear(x, qweight, qzeros, scales, bias, aux, layer, fmt, group_size, plan, aux_digest)

* ``x`` [..., K] float16 / bfloat16 / float32; ``y`` [..., N] of x's dtype.
* ``qweight`` / ``qzeros`` / ``scales`` are the *source* tensors in layout ``fmt`` (``awq``, ``gptq_v2``,
  ...) exactly as the user's module holds them; the op finds their repacked form in the weight cache
  (:mod:`.weights`), repacking on first sight.
* ``aux`` are the other tensors the user's dequant read (reorder index, g_idx), checked against
  ``aux_digest`` whenever new weights appear.
* ``plan`` is a plan request (:mod:`.planning`: target, forced / disabled kernels), resolved here for
  the call's concrete (K, N, M) and cached, so one compiled graph serves every layer shape and batch
  size; a fixed encoded :class:`~awq_compile.kernels.registry.Plan` is accepted too.  Either way the plan
  records its target, and the tensors' device is checked against that target's family once per device:
  on another family the plan is made again for the device's target and a warning names the layer
  (:func:`.dispatch.plan_on_device`).

Autograd: ``x``, ``scales`` (when it is a parameter that requires grad) and ``bias`` get gradients;
the backward is a second opaque op, ``w4a16_linear_backward``, that reads the weights through the same
cache (so it sees the layout the cache says the buffers hold, also after an in-place repack).

The op is opaque to Inductor (an operator with a Python implementation and a fake implementation for shape
propagation and dynamic shapes, registered by :mod:`.registration` without ``custom_op``'s per-call wrappers).
Registration happens when this module is first imported, which the backend does.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import List, Optional

import torch

from ..formats.sources import get_format
from ..formats.standard import dequantize_packed
from .calls import MAX_RUNNERS, Resolved, call_memo
from .dispatch import entry_runner, plan_on_device
from .registration import define
from ..kernels.problem import Problem
from .planning import resolve
from .weights import weight_cache

__all__ = ["w4a16_linear", "w4a16_linear_backward", "check_inputs", "remembered", "run_resolved", "runner_for"]

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
def plan_for_call(plan: str, layer: str, device_type: str, device_index, problem: Problem):
    """The plan argument resolved for ``problem`` and checked against the device, once per (plan, layer,
    device, problem): the registry's rule re-plans (and warns once naming the layer) when the device is of
    another target family."""
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    resolved = plan_on_device(resolve(plan, problem, layer), device, problem, layer)
    if device.type == "cuda":
        # the stripe kernel's slot workspace must exist before any CUDA-graph capture runs the plan
        from ..kernels.triton.launch import reserve_for_plan

        reserve_for_plan(resolved, problem, device)
    return resolved


def _forward(x: torch.Tensor, qweight: torch.Tensor, qzeros: Optional[torch.Tensor], scales: torch.Tensor,
             bias: Optional[torch.Tensor], aux: List[torch.Tensor], layer: str, fmt: str, group_size: int,
             plan: str, aux_digest: str) -> torch.Tensor:
    # what this call resolves (checks, plan, weight, launch plan) is kept for the next call with the same
    # weight tensors, unwritten since (.calls): a layer's later calls go straight to the launch
    tensors = (qweight, qzeros, scales, *aux)
    key = (plan, layer, fmt, group_size, aux_digest, x.dtype, x.device, x.shape[-1] if x.dim() else None,
           bias is None, *map(id, tensors))
    r = remembered(key, tensors, x, bias)
    if r is None:
        K, N = check_inputs(x, qweight, qzeros, scales, bias, layer, fmt, group_size)
        problem = Problem(K, N, group_size, get_format(fmt).has_zeros, str(x.dtype).removeprefix("torch."),
                          has_bias=bias is not None)
        # the plan (for the tensors' device) decides the layout the weight is prepared in
        resolved = plan_for_call(plan, layer, x.device.type, x.device.index, problem)
        prepared = weight_cache().get(fmt, qweight, qzeros, scales, aux, aux_digest=aux_digest, layer=layer,
                                      layout=resolved.layout)
        r = call_memo().remember(key, tensors, resolved, prepared, K, N, problem.with_layout(prepared.layout))
    else:
        prepared = r.prepared()
    return run_resolved(r, x, prepared, prepared.packed(qweight, scales, qzeros), bias)


def remembered(key, tensors, x, bias) -> Resolved | None:
    """The memo's resolution of a call (:mod:`.calls`), or None: a first call, changed tensors, or a bias that
    breaks check_inputs' rule (the bias is not one of the remembered tensors: a graph may compute it) -- the
    full path then validates, and raises naming the layer."""
    r = call_memo().lookup(key, tensors)
    if r is not None and bias is not None and not (
            bias.shape == (r.N,) and bias.is_floating_point() and bias.device == x.device):
        return None
    return r


def run_resolved(r: Resolved, x, prepared, w, bias):
    """x [..., K] through ``r``'s runner for its M, with ``prepared`` / ``w`` (the cache's value and its Packed
    weight) and the bias in x's dtype: the last step of the op and of the merged op."""
    flat = x.dim() == 2                      # (a reshape costs ~1 µs of host time each way)
    x2d = x if flat else x.reshape(-1, r.K)
    M = x2d.shape[0]
    if M == 0:
        return x.new_empty((*x.shape[:-1], r.N))
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    out = runner_for(r, M)(x2d, prepared, w, bias)
    return out if flat else out.reshape(*x.shape[:-1], r.N)


def runner_for(r: Resolved, M: int):
    """The runner of ``r``'s plan entry for M (kept in ``r`` per M)."""
    run = r.runners.get(M)
    if run is None:
        if len(r.runners) >= MAX_RUNNERS:
            r.runners.clear()
        run = r.runners[M] = entry_runner(r.plan.entry_for(M), r.problem.with_m(M), r.plan.target)
    return run


def _fake(x, qweight, qzeros, scales, bias, aux, layer, fmt, group_size, plan, aux_digest):
    K, N = check_inputs(x, qweight, qzeros, scales, bias, layer, fmt, group_size)
    return x.new_empty((*x.shape[:-1], N))


@torch.library.custom_op("awq_compile::w4a16_linear_backward", mutates_args=())
def w4a16_linear_backward(grad: torch.Tensor, x: Optional[torch.Tensor], qweight: torch.Tensor,
                          qzeros: Optional[torch.Tensor], scales: torch.Tensor, aux: List[torch.Tensor], layer: str,
                          fmt: str, group_size: int, aux_digest: str, need_x: bool,
                          need_scales: bool) -> List[torch.Tensor]:
    """``[grad_x, grad_scales]`` of ``y = x @ W``, ``W = (q - z) * s``; an unneeded one is an empty tensor.

    Opaque like the forward: the weights are read through the cache, whose value says which layout they
    are in (with ``reuse_weight_memory`` the source buffers themselves hold the standard layout).
    """
    prepared = weight_cache().get(fmt, qweight, qzeros, scales, aux, aux_digest=aux_digest, layer=layer,
                                  layout=None)
    packed = prepared.packed(qweight, scales, qzeros)
    K, N = packed.K, packed.N
    g2d = grad.reshape(-1, N)
    out = []
    if need_x:
        w = dequantize_packed(packed, torch.float32)
        out.append((g2d.to(torch.float32) @ w.t()).to(grad.dtype).reshape(*grad.shape[:-1], K))
    else:
        out.append(grad.new_empty(0))
    if need_scales:
        # dL/ds[g, n] = sum over the group's rows k of (q - z)[k, n] * (x^T grad)[k, n]
        codes = dequantize_packed(dataclasses.replace(packed, scales=torch.ones_like(packed.scales,
                                                                                    dtype=torch.float32)))
        gw = x.reshape(-1, K).to(torch.float32).t() @ g2d.to(torch.float32)
        out.append((codes * gw).view(K // group_size, group_size, N).sum(1).to(scales.dtype))
    else:
        out.append(scales.new_empty(0))
    return out


@w4a16_linear_backward.register_fake
def _(grad, x, qweight, qzeros, scales, aux, layer, fmt, group_size, aux_digest, need_x, need_scales):
    K = scales.shape[0] * group_size
    gx = grad.new_empty((*grad.shape[:-1], K)) if need_x else grad.new_empty(0)
    gs = scales.new_empty(scales.shape) if need_scales else scales.new_empty(0)
    return [gx, gs]


def _setup_context(ctx, inputs, output):
    x, qweight, qzeros, scales, bias, aux, layer, fmt, group_size, plan, aux_digest = inputs
    need_scales = bool(ctx.needs_input_grad[3])
    ctx.save_for_backward(x if need_scales else None, qweight, qzeros, scales, *aux)
    ctx.meta = (layer, fmt, group_size, aux_digest, bias is not None, len(aux), need_scales)


def _backward(ctx, grad):
    # Integer weights have no gradient; x, scales and bias do.
    x, qweight, qzeros, scales, *aux = ctx.saved_tensors
    layer, fmt, group_size, aux_digest, has_bias, n_aux, need_scales = ctx.meta
    need_x = bool(ctx.needs_input_grad[0])
    grad_x = grad_scales = None
    if need_x or need_scales:
        gx, gs = w4a16_linear_backward(grad, x, qweight, qzeros, scales, list(aux), layer, fmt, group_size,
                                       aux_digest, need_x, need_scales)
        grad_x = gx if need_x else None
        grad_scales = gs if need_scales else None
    grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if has_bias and ctx.needs_input_grad[4] else None
    return grad_x, None, None, grad_scales, grad_bias, None, None, None, None, None, None


_LIB = torch.library.Library("awq_compile", "FRAGMENT")
w4a16_linear = define(
    _LIB, "w4a16_linear(Tensor x, Tensor qweight, Tensor? qzeros, Tensor scales, Tensor? bias, Tensor[] aux, "
          "str layer, str fmt, SymInt group_size, str plan, str aux_digest) -> Tensor",
    _forward, _fake, setup_context=_setup_context, backward=_backward, grad_inputs=(0, 3, 4))
