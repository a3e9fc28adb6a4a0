"""Pass 2: find the matmuls whose weight is a verified 4-bit dequantisation.

Matching is semantic rather than syntactic.  Real code spells the AWQ dequant in dozens of ways
(``>>`` or ``bitwise_right_shift``, int8/int32/int64 codes, ``repeat_interleave`` or broadcasting,
``(q - z) * s`` or ``q * s - z * s``, ``matmul(x, W)`` or ``F.linear(x, W.t())``...), and a pattern per
spelling would both miss the next one and accept look-alikes.  Instead, for every matmul::

    y = torch.matmul(x, dequant(self.qweight, self.qzeros, self.scales))   # any spelling

we cut out the subgraph computing the weight operand, require that it reads only weights (parameters,
buffers, get_attr constants, input-free factories such as ``arange``), evaluate it on the real tensors
and check that the result equals our own dequantisation of some of those tensors in a known layout
(see ``_verify.py``).  Anything else is left alone, with the reason recorded for ``explain`` and the
``awq`` log.
"""

from __future__ import annotations

import re

import torch

from ._verify import Verified, verify_weight
from ._weight_subgraph import evaluate, matmul_site, weight_subgraph
from .context import AwqMatch, PassContext, log


def _module_path(source_name: str) -> str | None:
    """``L['self']._modules['layers']._modules['0']._buffers['qweight']`` -> ``layers.0``."""
    if not source_name:
        return None
    body = re.sub(r"^[LG]\['[^']*'\]", "", source_name)
    parts = re.findall(r"\._(?:modules|parameters|buffers)\['([^']+)'\]|\.([A-Za-z_]\w*)|\[(\d+)\]", body)
    names = [a or b or c for a, b, c in parts]
    if len(names) < 1:
        return None
    if len(names) == 1 and re.match(r"^[LG]\['self'\]", source_name):
        return "<root>"  # a buffer of the compiled module itself
    return ".".join(names[:-1]) or None


def layer_name(site_node, qweight_node) -> str:
    """Module path of the layer: from the qweight's source, else the call's module stack, else the node."""
    grapharg = qweight_node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    name = getattr(source, "name", "") if source is not None else ""
    name = name() if callable(name) else name
    path = _module_path(name)
    if path:
        return path
    if qweight_node.op == "get_attr":
        return qweight_node.target.rsplit(".", 1)[0] if "." in qweight_node.target else qweight_node.target
    stack = site_node.meta.get("nn_module_stack") or {}
    if stack:
        qual = list(stack.values())[-1][0]
        path = re.sub(r"^[LG]\['[^']*'\]\.?", "", str(qual))
        if path:
            return path
    return f"<{site_node.name}>"


def _display_name(site_node) -> str:
    stack = site_node.meta.get("nn_module_stack") or {}
    if stack:
        qual = list(stack.values())[-1][0]
        path = re.sub(r"^[LG]\['[^']*'\]\.?", "", str(qual))
        if path:
            return path
    return f"<{site_node.name}>"


def find_awq_linears(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    for node in list(gm.graph.nodes):
        site = matmul_site(node)
        if site is None:
            continue
        if isinstance(site, str):
            ctx.skip(node, _display_name(node), site)
            continue
        sub = weight_subgraph(site.weight, ctx.static)
        if sub.reason:
            ctx.skip(node, _display_name(node), sub.reason)
            continue
        leaves = {leaf: ctx.values[leaf] for leaf in sub.leaves}
        looks_quantized = any(t.dtype == torch.int32 for t in leaves.values())
        if not sub.nodes:
            kinds = {str(t.dtype).removeprefix("torch.") for t in leaves.values()}
            ctx.skip(node, _display_name(node), f"not quantized: the weight is a plain {', '.join(sorted(kinds))} "
                                                  "tensor, no dequantisation")
            continue
        if not looks_quantized:
            kinds = ", ".join(sorted({str(t.dtype).removeprefix('torch.') for t in leaves.values()}))
            ctx.skip(node, _display_name(node), f"not quantized: the weight is computed from {kinds} tensors, "
                                                  "no int32 packed codes")
            continue
        try:
            W = evaluate(sub, ctx.values)
        except Exception as e:  # noqa: BLE001 - any failure means: not ours
            ctx.skip(node, _display_name(node), f"evaluating the weight computation failed: {type(e).__name__}: {e}",
                     quantized_looking=True)
            continue
        if site.orientation == "nk" and isinstance(W, torch.Tensor) and W.dim() == 2:
            W = W.t()
        if not isinstance(W, torch.Tensor):
            ctx.skip(node, _display_name(node), "the weight computation does not produce a tensor")
            continue
        verdict = verify_weight(W, leaves)
        if isinstance(verdict, str):
            ctx.skip(node, _display_name(node), verdict, quantized_looking=True)
            continue
        x_val = site.x.meta.get("example_value")
        act_dtype = x_val.dtype if isinstance(x_val, torch.Tensor) else W.dtype
        if act_dtype != W.dtype:
            ctx.skip(node, _display_name(node), f"the activation is {act_dtype} but the weight is {W.dtype}",
                     quantized_looking=True)
            continue
        if site.bias is not None:
            bias_val = site.bias.meta.get("example_value")
            if isinstance(bias_val, torch.Tensor) and tuple(bias_val.shape) != (W.shape[1],):
                ctx.skip(node, _display_name(node), f"bias of shape {tuple(bias_val.shape)} is not [N]",
                         quantized_looking=True)
                continue
        _record(ctx, site, sub, verdict, W, act_dtype)
    return gm


def _record(ctx: PassContext, site, sub, v: Verified, W, act_dtype) -> None:
    roles = {v.qweight, v.qzeros, v.scales}
    aux = [leaf for leaf in sub.leaves if leaf not in roles]
    name = layer_name(site.node, v.qweight)
    K, N = W.shape
    ctx.matches.append(AwqMatch(
        matmul=site.node, x=site.x, bias=site.bias, qweight=v.qweight, qzeros=v.qzeros, scales=v.scales,
        aux=aux, fmt=v.fmt.name, K=K, N=N, group_size=v.group_size, act_dtype=act_dtype, name=name,
        exact=v.exact))
    log.debug("matched %s: %s K=%d N=%d G=%d %s (%d nodes, aux %s)", name, v.fmt.name, K, N, v.group_size,
              "bit-exact" if v.exact else "within rounding", len(sub.nodes), [a.name for a in aux])
