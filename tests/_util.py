"""Helpers shared by the tests: references, relative error, capturing graphs around our passes."""

from __future__ import annotations

import operator
import re

import torch

from awq_compile.backend import awq_backend


def kernel_case(M, K, N, G, dtype, zeros, bias, seed, device):
    """Random standard-layout weights, x and bias on ``device``, and their float64 reference output."""
    from awq_compile.formats import from_unpacked, quantize

    torch.manual_seed(seed)
    u = quantize(torch.randn(K, N) * 0.1, G, symmetric=not zeros)
    u.scales = u.scales.to(dtype)
    std = from_unpacked(u)
    x = torch.randn(M, K).to(dtype)
    b = torch.randn(N).to(dtype) if bias else None
    ref = x.double() @ u.dequantize(torch.float64)
    if b is not None:
        ref = ref + b.double()
    to = (lambda t: None if t is None else t.to(device))
    return to(x), to(std.qweight), to(std.qzeros), to(std.scales), to(b), ref


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().to(ref.device).double(), ref.detach().double()   # a GPU result, a CPU reference
    return float((out - ref).norm() / ref.norm())


def _target_name(node) -> str:
    t = node.target
    if node.op == "call_method":
        return "." + t
    if node.op == "call_module":
        return "module:" + str(t)
    if node.op == "get_attr":
        return "get_attr"
    if isinstance(t, torch._ops.OpOverload):
        return f"{t.namespace}.{t._schema.name.split('::')[-1]}"
    if t in (operator.getitem,):
        return "getitem"
    if hasattr(t, "__module__") and getattr(t, "__name__", None):
        mod = t.__module__ or ""
        mod = {"_operator": "operator", "torch._C._nn": "F", "torch.nn.functional": "F",
               "torch._C": "torch._C", "torch._C._VariableFunctions": "torch"}.get(mod, mod)
        return f"{mod}.{t.__name__}"
    return str(t)


def normalize_graph(gm: torch.fx.GraphModule) -> str:
    """A version-robust text form: nodes renamed by position, targets by short name, long strings elided."""
    names = {}
    lines = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            names[node] = f"in{len([n for n in names.values() if n.startswith('in')])}"
            continue
        if node.op == "output":
            outs = node.args[0] if isinstance(node.args[0], (list, tuple)) else (node.args[0],)
            lines.append("return (" + ", ".join(names.get(n, "?") if isinstance(n, torch.fx.Node) else repr(n)
                                                for n in outs) + ")")
            continue
        if node.op == "call_function" and node.target is torch._C._set_grad_enabled:
            lines.append(f"set_grad_enabled({node.args[0]})")
            continue
        names[node] = f"v{len(lines)}"

        def fmt(a):
            if isinstance(a, torch.fx.Node):
                return names.get(a, "?")
            if isinstance(a, str) and len(a) > 24:
                return repr(a[:20] + "...")
            if isinstance(a, (list, tuple)):
                inner = ", ".join(fmt(x) for x in a)
                return f"[{inner}]" if isinstance(a, list) else f"({inner}{',' if len(a) == 1 else ''})"
            if isinstance(a, slice):
                return ":" if a == slice(None) else f"{a.start}:{a.stop}:{a.step}"
            if isinstance(a, torch.device):
                return "device"
            return repr(a)

        args = [fmt(a) for a in node.args] + [f"{k}={fmt(v)}" for k, v in node.kwargs.items() if k != "device"]
        lines.append(f"{names[node]} = {_target_name(node)}({', '.join(args)})")
    return "\n".join(lines)


class Capture:
    """A backend that records Dynamo's graph, runs our passes, and records the result."""

    def __init__(self, **options):
        self.options = dict(options)
        self.options.setdefault("inductor", False)
        self.before: list[str] = []
        self.after: list[str] = []

    def __call__(self, gm, example_inputs):
        self.before.append(normalize_graph(gm))
        fn = awq_backend(gm, example_inputs, options=self.options)
        self.after.append(normalize_graph(gm))
        return fn


def op_count(text: str) -> int:
    return len(re.findall(r"awq_compile\.w4a16_linear", text))
