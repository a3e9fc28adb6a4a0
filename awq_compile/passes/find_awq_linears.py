"""Analysis step 2: find the matmuls whose weight is a verified 4-bit dequantisation.

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

from ..options import Options
from ..runtime.weights import digest
from ._grad import scales_gradient
from ._verify import Verified, compare, probe_tensors, verify_weight
from ._weight_subgraph import evaluate, matmul_site, weight_subgraph
from .bind_inputs import graphs_of
from .records import AwqMatch, Bindings, Skips, log


# the compiled module itself: ``L['self']``, or ``L['args'][0]`` when its forward is wrapped by a
# ``def wrapper(*args, **kwargs)`` decorator (Hugging Face's ``can_return_tuple``, ``auto_docstring``...)
_ROOT = re.compile(r"^[LG]\['self'\]|^[LG]\['args'\]\[0\]|^[LG]\['[^']*'\]")


def _strip_root(text: str) -> tuple[str, bool]:
    """(the path below the frame's local, whether that local is the compiled module itself)."""
    m = _ROOT.match(text)
    if not m:
        return text, False
    return text[m.end():], m.group(0).endswith(("['self']", "['args'][0]"))


def _module_path(source_name: str) -> str | None:
    """``L['self']._modules['layers']._modules['0']._buffers['qweight']`` -> ``layers.0`` (also from
    ``L['args'][0]...``, a decorated forward)."""
    if not source_name:
        return None
    body, is_module = _strip_root(source_name)
    parts = re.findall(r"\._(?:modules|parameters|buffers)\['([^']+)'\]|\.([A-Za-z_]\w*)|\[(\d+)\]", body)
    names = [a or b or c for a, b, c in parts]
    if len(names) < 1:
        return None
    if len(names) == 1 and is_module:
        return "<root>"  # a buffer of the compiled module itself
    return ".".join(names[:-1]) or None


def layer_name(site_node, qweight_node, bindings: Bindings | None = None) -> str:
    """Module path of the layer: from the qweight's source, else the call's module stack, else the node."""
    if bindings is not None:
        qweight_node = bindings.outermost(qweight_node)
        fqn = bindings.fqns.get(qweight_node)
        if fqn:
            return fqn.rsplit(".", 1)[0] if "." in fqn else "<root>"
    grapharg = qweight_node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    name = getattr(source, "name", "") if source is not None else ""
    name = name() if callable(name) else name
    path = _module_path(name)
    if path:
        return path
    local = re.fullmatch(r"L\['([^']+)'\]", name or "")
    if local:  # a plain local of a resumed or free-function frame: no module path exists
        func = re.findall(r", in (\w+)", site_node.meta.get("stack_trace") or "")
        where = re.sub(r"^torch_dynamo_resume_in_(\w+?)_at_\d+$", r"\1", func[-1]) if func else ""
        return f"<{local.group(1)} in {where}>" if where else f"<{local.group(1)}>"
    if qweight_node.op == "get_attr":
        return qweight_node.target.rsplit(".", 1)[0] if "." in qweight_node.target else qweight_node.target
    return _display_name(site_node)


def _display_name(site_node) -> str:
    stack = site_node.meta.get("nn_module_stack") or {}
    if stack:
        qual = list(stack.values())[-1][0]
        path = _strip_root(str(qual))[0].lstrip(".")
        if path:
            return path
    return f"<{site_node.name}>"


def _shape(t) -> tuple:
    """The example's shape, symbolic sizes read by their hint (comparing SymInts would add guards)."""
    from .bind_inputs import concrete

    return tuple(concrete(d) for d in t.shape)


def _dtype(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def _oriented(W, orientation):
    if orientation == "nk" and isinstance(W, torch.Tensor) and W.dim() == 2:
        return W.t()
    return W


def _check_probe(sub, site, v: Verified, values: dict) -> str | None:
    """Evaluate the subgraph again on random tensors of the matched layout; None if it still matches."""
    qw, qz, s = probe_tensors(v.fmt, values[v.qweight], values.get(v.qzeros) if v.qzeros is not None else None,
                              values[v.scales])
    replace = {v.qweight: qw, v.scales: s}
    if v.qzeros is not None:
        replace[v.qzeros] = qz
    try:
        W = _oriented(evaluate(sub, values, replace), site.orientation)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return compare(W, v.fmt, qw, qz, s)


def find_awq_linears(gm: torch.fx.GraphModule, bindings: Bindings, options: Options, graph_index: int = 0
                     ) -> tuple[tuple[AwqMatch, ...], tuple]:
    """The verified matches (graph order) and the refusals (``SkipReport``) of one graph."""
    skips = Skips(options, graph_index)
    matches: list[AwqMatch] = []
    values = bindings.values
    nodes = [n for g in graphs_of(gm) for n in g.graph.nodes]  # grad-mode regions (torch.export) too
    for node in nodes:
        site = matmul_site(node)
        if site is None:
            _user_kernel_on_packed_weights(node, bindings, skips)
            continue
        name = _display_name(node)
        if isinstance(site, str):
            skips.add(node, name, site)
            continue
        sub = weight_subgraph(site.weight, bindings.static, values, before=node)
        if sub.reason:
            skips.add(node, name, sub.reason)
            continue
        leaves = {leaf: values[leaf] for leaf in sub.leaves}
        looks_quantized = any(t.dtype == torch.int32 for t in leaves.values())
        runtime = ", ".join(f"'{n.name}'" for n in sub.inputs)
        runtime_reason = (f"the weight depends on the runtime input {runtime} (a graph input that is not a "
                          "parameter or buffer, and not one of the packed weight tensors); expected a weight "
                          "computed only from the model's tensors")
        if not sub.nodes:
            if sub.inputs:
                skips.add(node, name, runtime_reason)
                continue
            kinds = {_dtype(t) for t in leaves.values()}
            skips.add(node, name, f"not quantized: the weight is a plain {', '.join(sorted(kinds))} "
                                 "tensor, no dequantisation (expected one computed from int32 packed 4-bit codes)")
            continue
        if not looks_quantized:
            if sub.inputs:
                skips.add(node, name, runtime_reason)
                continue
            kinds = ", ".join(sorted({_dtype(t) for t in leaves.values()}))
            skips.add(node, name, f"not quantized: the weight is computed from {kinds} tensors, "
                                 "no int32 packed codes (expected int32-packed 4-bit AWQ or GPTQ layouts)")
            continue
        try:
            W = evaluate(sub, values)
        except Exception as e:  # noqa: BLE001 - any failure means: not ours
            skips.add(node, name, f"evaluating the weight computation on the real tensors failed "
                                 f"({type(e).__name__}: {e}); expected it to run on the model's own tensors",
                     quantized_looking=True)
            continue
        W = _oriented(W, site.orientation)
        if not isinstance(W, torch.Tensor):
            skips.add(node, name, f"expected the weight computation to produce a tensor, found {type(W).__name__}")
            continue
        verdict = verify_weight(W, leaves)
        if isinstance(verdict, str):
            skips.add(node, name, runtime_reason if sub.inputs else verdict, quantized_looking=True)
            continue
        roles = {verdict.qweight, verdict.qzeros, verdict.scales}
        if any(n not in roles for n in sub.inputs):
            skips.add(node, name, runtime_reason, quantized_looking=True)
            continue
        miss = _check_probe(sub, site, verdict, values)
        if miss is not None:
            skips.add(node, name, f"the weight equals the {verdict.fmt.name} dequantisation of the tensors seen at "
                                 f"compile time but not of other {verdict.fmt.name} weights, so it is not that "
                                 "dequantisation in general (the example tensors do not pin the computation "
                                 "down, e.g. all-zero buffers of a model compiled before its checkpoint was "
                                 f"loaded, while the code computes something else): {miss}. Compile after "
                                 "loading the real weights; expected a computation that equals the dequantisation "
                                 "for any weights", quantized_looking=True)
            continue
        x_val = site.x.meta.get("example_value")
        act_dtype = x_val.dtype if isinstance(x_val, torch.Tensor) else W.dtype
        if act_dtype != W.dtype:
            skips.add(node, name, f"the activation is {_dtype(x_val)} but the dequantised weight is {_dtype(W)}; "
                                 "expected both of one dtype (cast the input or the scales)", quantized_looking=True)
            continue
        if site.bias is not None:
            bias_val = values.get(site.bias, site.bias.meta.get("example_value"))
            if isinstance(bias_val, torch.Tensor) and _shape(bias_val) != (W.shape[1],):
                skips.add(node, name, f"the bias has shape {tuple(bias_val.shape)}, expected [{W.shape[1]}] (one "
                                     "value per output feature)", quantized_looking=True)
                continue
        grad, why = scales_gradient(sub, verdict.fmt, verdict.qweight, verdict.qzeros, verdict.scales, values,
                                    site.orientation, verdict.group_size)
        if why is not None:
            skips.add(node, name, why, quantized_looking=True)
            continue
        detach = not grad and getattr(values[verdict.scales], "requires_grad", False)
        matches.append(_record(bindings, site, sub, verdict, W, act_dtype, detach_scales=detach))
    return tuple(matches), tuple(skips.items)


def _triton_hops() -> tuple:
    hops = []
    for name in ("triton_kernel_wrapper_mutation", "triton_kernel_wrapper_functional"):
        hop = getattr(torch.ops.higher_order, name, None)
        if hop is not None:
            hops.append(hop)
    return tuple(hops)


def _kernel_name(node) -> str:
    try:
        from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

        kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
        fn = getattr(kernel, "fn", kernel)
        return getattr(fn, "__name__", None) or type(kernel).__name__
    except Exception:  # noqa: BLE001 - a name for the report only
        return "?"


def _user_kernel_on_packed_weights(node, bindings: Bindings, skips: Skips) -> None:
    """A user Triton kernel (AutoAWQ's own GEMM) reading int32 packed weights: a linear layer we cannot
    rewrite (its dequant is inside the kernel, opaque to us); listed so ``explain`` says why."""
    if node.op != "call_function" or node.target not in _triton_hops():
        return
    args = node.kwargs.get("kwargs") or {}
    packed = [(k, v) for k, v in args.items() if isinstance(v, torch.fx.Node) and v in bindings.static
              and isinstance(bindings.values.get(v), torch.Tensor) and bindings.values[v].dtype == torch.int32
              and bindings.values[v].dim() == 2]
    if not packed:
        return
    name = layer_name(node, packed[0][1], bindings)
    shown = ", ".join(f"{k}={tuple(bindings.values[v].shape)}" for k, v in packed)
    skips.add(node, name, f"a user Triton kernel ({_kernel_name(node)}) reads int32 packed weights ({shown}): its "
                          "dequantisation is inside the kernel, opaque to the rewrite, so the model's own kernel "
                          "runs; expected the dequant in plain PyTorch. Load the checkpoint with "
                          "awq_compile.load_pretrained(...) to get layers the backend can rewrite")


def _record(bindings: Bindings, site, sub, v: Verified, W, act_dtype, *, detach_scales: bool = False) -> AwqMatch:
    values = bindings.values
    roles = {v.qweight, v.qzeros, v.scales}
    aux = [leaf for leaf in sub.leaves if leaf not in roles]
    name = layer_name(site.node, v.qweight, bindings)
    K, N = W.shape
    match = AwqMatch(
        matmul=site.node, x=site.x, bias=site.bias, qweight=v.qweight, qzeros=v.qzeros, scales=v.scales,
        aux=tuple(aux), fmt=v.fmt.name, K=K, N=N, group_size=v.group_size, act_dtype=act_dtype, name=name,
        exact=v.exact, weight_nodes=tuple(sub.nodes),
        aux_digest=digest([values[a] for a in aux]) if aux else "", detach_scales=detach_scales)
    log.debug("matched %s: %s K=%d N=%d G=%d %s (%d nodes, aux %s)", name, v.fmt.name, K, N, v.group_size,
              "bit-exact" if v.exact else "within rounding", len(sub.nodes), [a.name for a in aux])
    return match
