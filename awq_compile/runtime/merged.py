"""``torch.ops.awq_compile.w4a16_linear_merged``: several AWQ linears that read one input, one launch.

::

    y = w4a16_linear_merged(x, [qweight...], [qzeros...], [scales...], bias, "q;k;v", fmt,
                            group_size, plan)                       # y [..., N_1 + ... + N_p]

The merge transformation (``passes/merge_projections.py``) puts this op where q/k/v or gate/up read the
same activation, then takes each part's output as a slice of ``y``.  The parts' source tensors are
passed as they are (one compiled graph serves every module instance, as for the single op); the weight
cache concatenates their standard layouts along N once per set of weights (then permutes the
concatenation into the plan's layout, when that is ``kplanes``)
(:meth:`~awq_compile.runtime.weights.WeightCache.get_merged`).  ``qzeros`` is empty for formats
without zero points; ``bias`` is the parts' biases concatenated in the graph (``torch.cat``, which
Inductor fuses with their casts) or None when no part has one (the transformation merges only parts
that agree); ``layers`` names the parts, joined by ``;`` (custom-op schemas take no list of strings).  Every
part is validated like the single op's arguments, errors naming that part's layer.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ..formats.sources import get_format
from ..formats.standard import dequantize_packed
from ..kernels.problem import Problem
from .calls import call_memo
from .op import check_inputs, plan_for_call, remembered, run_resolved
from .registration import define
from .weights import weight_cache

__all__ = ["w4a16_linear_merged", "merged_name", "join_names"]

_SEP = ";"


def join_names(layers) -> str:
    return _SEP.join(layers)


def merged_name(layers) -> str:
    """``layers.0.self_attn.q_proj+k_proj+v_proj`` for parts that share a module path prefix."""
    layers = list(layers)
    heads = [name.rsplit(".", 1) for name in layers]
    if all(len(h) == 2 for h in heads) and len({h[0] for h in heads}) == 1:
        return heads[0][0] + "." + "+".join(h[1] for h in heads)
    return "+".join(layers)


def _parts(x, qweights, qzeros, scales, bias, layers, fmt, group_size):
    layers = layers.split(_SEP)
    name = merged_name(layers)
    p = len(qweights)
    if not p or len(scales) != p or len(layers) != p or len(qzeros) not in (0, p):
        raise ValueError(f"awq_compile: merged layer {name!r}: expected one qweight, scales and layer name per "
                         f"part and qzeros for all parts or none; got {len(qweights)} qweight, {len(qzeros)} "
                         f"qzeros, {len(scales)} scales, {len(layers)} names")
    parts, widths, K = [], [], None
    for i in range(p):
        z = qzeros[i] if qzeros else None
        K, n = check_inputs(x, qweights[i], z, scales[i], None, layers[i], fmt, group_size)
        parts.append((qweights[i], z, scales[i]))
        widths.append(n)
    N = sum(widths)
    if bias is not None and (tuple(bias.shape) != (N,) or not bias.is_floating_point() or bias.device != x.device):
        raise ValueError(f"awq_compile: layer '{name}': bias: expected float [{N}] on {x.device}, got "
                         f"{bias.dtype} {tuple(bias.shape)} on {bias.device}")
    return parts, N, K, name


def _forward(x: torch.Tensor, qweights: List[torch.Tensor], qzeros: List[torch.Tensor],
             scales: List[torch.Tensor], bias: Optional[torch.Tensor], layers: str, fmt: str,
             group_size: int, plan: str) -> torch.Tensor:
    tensors = (*qweights, *qzeros, *scales)
    key = ("merged", plan, layers, fmt, group_size, len(qweights), len(qzeros), x.dtype, x.device,
           x.shape[-1] if x.dim() else None, bias is None, *map(id, tensors))
    r = remembered(key, tensors, x, bias)
    if r is None:
        parts, N, K, name = _parts(x, qweights, qzeros, scales, bias, layers, fmt, group_size)
        problem = Problem(K, N, group_size, get_format(fmt).has_zeros, str(x.dtype).removeprefix("torch."),
                          has_bias=bias is not None)
        resolved = plan_for_call(plan, name, x.device.type, x.device.index, problem)
        merged = weight_cache().get_merged(fmt, parts, layer=name, layout=resolved.layout)
        r = call_memo().remember(key, tensors, resolved, merged, K, N, problem.with_layout(merged.prepared.layout))
    else:
        merged = r.prepared()
    return run_resolved(r, x, merged.prepared, merged.packed(), bias)


def _fake(x, qweights, qzeros, scales, bias, layers, fmt, group_size, plan):
    _, N, _, _ = _parts(x, qweights, qzeros, scales, bias, layers, fmt, group_size)
    return x.new_empty((*x.shape[:-1], N))


@torch.library.custom_op("awq_compile::w4a16_linear_merged_grad_x", mutates_args=())
def w4a16_linear_merged_grad_x(grad: torch.Tensor, qweights: List[torch.Tensor], qzeros: List[torch.Tensor],
                               scales: List[torch.Tensor], layers: str, fmt: str, group_size: int) -> torch.Tensor:
    """``grad @ W^T`` for the merged weight, read through the cache (float32 accumulation)."""
    parts = [(qweights[i], qzeros[i] if qzeros else None, scales[i]) for i in range(len(qweights))]
    std = weight_cache().get_merged(fmt, parts, layer=merged_name(layers.split(_SEP)), layout=None).packed()
    w = dequantize_packed(std, torch.float32)
    g2d = grad.reshape(-1, std.N).to(torch.float32)
    return (g2d @ w.t()).to(grad.dtype).reshape(*grad.shape[:-1], std.K)


@w4a16_linear_merged_grad_x.register_fake
def _(grad, qweights, qzeros, scales, layers, fmt, group_size):
    K = scales[0].shape[0] * group_size
    return grad.new_empty((*grad.shape[:-1], K))


def _setup_context(ctx, inputs, output):
    x, qweights, qzeros, scales, bias, layers, fmt, group_size, plan = inputs
    ctx.save_for_backward(*qweights, *qzeros, *scales)
    ctx.meta = (len(qweights), len(qzeros), bias is not None, layers, fmt, group_size)


def _backward(ctx, grad):
    # The merge transformation never merges parts whose scales need a gradient; x and bias get theirs
    # (the bias gradient flows back through the graph's torch.cat to each part's bias).
    p, nz, has_bias, layers, fmt, group_size = ctx.meta
    saved = list(ctx.saved_tensors)
    qweights, qzeros, scales = saved[:p], saved[p:p + nz], saved[p + nz:]
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = w4a16_linear_merged_grad_x(grad, qweights, qzeros, scales, layers, fmt, group_size)
    grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if has_bias and ctx.needs_input_grad[4] else None
    return grad_x, None, None, None, grad_bias, None, None, None, None


_LIB = torch.library.Library("awq_compile", "FRAGMENT")
w4a16_linear_merged = define(
    _LIB, "w4a16_linear_merged(Tensor x, Tensor[] qweights, Tensor[] qzeros, Tensor[] scales, Tensor? bias, "
          "str layers, str fmt, SymInt group_size, str plan) -> Tensor",
    _forward, _fake, setup_context=_setup_context, backward=_backward, grad_inputs=(0, 4))
