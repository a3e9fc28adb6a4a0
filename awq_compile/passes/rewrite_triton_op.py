"""Export transformation (GPU targets): matmul -> ``w4a16_linear_triton``, one call per M bucket.

::

    y = torch.matmul(x, <dequant>(qweight, qzeros, scales))                         # before
    y = w4a16_linear_triton(x, qweight, qzeros, scales, bias, "up", 128, "@target=cuda:sm90;*:triton_gemv:...")
    # or, when the program's M range meets several plan entries:
    y = torch.cond(M <= 4, <gemv call>, <cond(M <= 16, <gemm call>, <dequant_mm call>)>, (x, qweight, ...))[0]

Used by :func:`awq_compile.exporting.rewrite_exported` for ExportedPrograms (ATen IR, no grad-mode
regions) after it has added the repacked weights to the program as constants: each layer's
:class:`LayerCall` names those nodes.  On the CPU target a layer may instead become torch's int4 matmul
``aten._weight_int4pack_mm_for_cpu`` on weights repacked for it (plain ATen, which AOTInductor compiles
to a C call).

Why a ``torch.cond`` and not a branch in the op: the op's body is traced with a symbolic M, and a Python
``if M <= 4`` there would put a guard on M, which ``torch.export`` refuses (or specialises the program
to one bucket).  A ``cond`` on a size is what export and AOTInductor compile into a run-time branch, so
one package serves every M of the exported range with the kernel tuned for that M -- only the plan
entries whose buckets meet the range are compiled (a static M: exactly one call, no cond).
"""

from __future__ import annotations

import dataclasses
import operator

import torch

from ..runtime.triton_op import w4a16_linear_triton  # noqa: F401  (registers the op)
from .records import Analysis

__all__ = ["Branch", "LayerCall", "rewrite_triton_op"]


@dataclasses.dataclass(frozen=True)
class Branch:
    """Calls with M up to ``m_max`` (None: every larger M) run the one-entry ``plan``."""

    m_max: int | None
    plan: str


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """How one layer is computed: ``w4a16_linear_triton`` over ``branches`` on the standard-layout
    ``weights`` (qweight, qzeros or None, scales nodes), or -- ``int4pack`` -- torch's CPU int4 matmul
    (``aten._weight_int4pack_mm_for_cpu``) on ``weights`` = (packed weight, None, scales-and-zeros)."""

    weights: tuple
    branches: tuple = ()
    int4pack: bool = False


def _val(node):
    return node.meta.get("val", node.meta.get("example_value"))


def _m_of(graph: torch.fx.Graph, x: torch.fx.Node):
    """Nodes computing M = the product of x's leading sizes (plain ints stay ints), with their values."""
    shape = _val(x).shape
    m_node, m_val, static = None, 1, 1
    for i, d in enumerate(shape[:-1]):
        if not isinstance(d, torch.SymInt):
            static *= int(d)
            continue
        size = graph.call_function(torch.ops.aten.sym_size.int, (x, i))
        size.meta["val"] = d
        m_val = m_val * d
        if m_node is None:
            m_node = size
        else:
            m_node = graph.call_function(operator.mul, (m_node, size))
            m_node.meta["val"] = m_val
    if m_node is None:
        return static, static
    if static != 1:
        m_val = m_val * static
        m_node = graph.call_function(operator.mul, (m_node, static))
        m_node.meta["val"] = m_val
    return m_node, m_val


def _call(graph, x, weights, bias, name, group_size, plan, out_val):
    q, z, s = weights
    node = graph.call_function(torch.ops.awq_compile.w4a16_linear_triton.default,
                               (x, q, z, s, bias, name, group_size, plan))
    node.meta["val"] = out_val
    return node


def _dispatch(owner: torch.nn.Module, graph: torch.fx.Graph, x, weights, bias, name: str, group_size: int,
              branches: tuple, out_val, prefix: str):
    """The node computing the layer in ``graph``: one call, or a cond on M over ``branches``."""
    if len(branches) == 1:
        return _call(graph, x, weights, bias, name, group_size, branches[0].plan, out_val)
    first, rest = branches[0], branches[1:]
    m_node, m_val = _m_of(graph, x)
    pred = graph.call_function(operator.le, (m_node, first.m_max))
    pred.meta["val"] = m_val <= first.m_max
    operands = [t for t in (x, *weights, bias) if t is not None]

    def branch(label, sub_branches):
        sub = torch.fx.Graph()
        inner = {}
        for t in operands:
            ph = sub.placeholder(t.name)
            ph.meta["val"] = _val(t)
            inner[t] = ph
        get = lambda t: None if t is None else inner[t]   # noqa: E731
        holder = torch.nn.Module()
        out = _dispatch(holder, sub, get(x), tuple(get(w) for w in weights), get(bias), name, group_size,
                        sub_branches, out_val, f"{prefix}_{label}")
        sub.output((out,))
        gm = torch.fx.GraphModule(holder, sub)
        attr = f"{prefix}_{label}"
        owner.register_module(attr, gm)
        node = graph.get_attr(attr)
        return node

    true_gm = branch(f"le{first.m_max}", (first,))
    false_gm = branch(f"gt{first.m_max}", rest)
    cond = graph.call_function(torch.ops.higher_order.cond, (pred, true_gm, false_gm, tuple(operands)))
    cond.meta["val"] = (out_val,)
    out = graph.call_function(operator.getitem, (cond, 0))
    out.meta["val"] = out_val
    return out


def rewrite_triton_op(gm: torch.fx.GraphModule, analysis: Analysis, calls: dict, *,
                      replaced: dict | None = None) -> torch.fx.GraphModule:
    """``calls``: layer index -> :class:`LayerCall`; layers not in it stay as they are.  ``replaced``
    receives erased matmul -> its replacement (for a later rewrite of the other layers)."""
    replaced = {} if replaced is None else replaced
    for index, layer in enumerate(analysis.layers):
        if index not in calls:
            continue
        call = calls[index]
        m = layer.match
        x = replaced.get(m.x, m.x)
        bias = replaced.get(m.bias, m.bias)
        graph = m.matmul.graph
        if graph is not gm.graph:
            raise ValueError(f"layer '{m.name}': the matmul is inside a nested region; the export rewrites "
                             "the top-level ATen graph only")
        with graph.inserting_before(m.matmul):
            if call.int4pack:
                packed, _, scale_zero = call.weights
                new = graph.call_function(torch.ops.aten._weight_int4pack_mm_for_cpu.default,
                                          (x, packed, m.group_size, scale_zero))
                new.meta["val"] = _val(m.matmul)
                if bias is not None:
                    out_dtype = _val(m.matmul).dtype
                    if _val(bias).dtype != out_dtype:
                        bias = graph.call_function(torch.ops.aten._to_copy.default, (bias,), {"dtype": out_dtype})
                        bias.meta["val"] = _val(bias.args[0]).to(out_dtype)
                    new = graph.call_function(torch.ops.aten.add.Tensor, (new, bias))
                    new.meta["val"] = _val(m.matmul)
            else:
                new = _dispatch(gm, graph, x, call.weights, bias, m.name, m.group_size, tuple(call.branches),
                                _val(m.matmul), f"awq_layer{index}")
        new.meta.update({k: v for k, v in m.matmul.meta.items() if k in ("nn_module_stack", "stack_trace",
                                                                          "source_fn_stack")})
        replaced[m.matmul] = new
        m.matmul.replace_all_uses_with(new)
        graph.erase_node(m.matmul)
    gm.recompile()
    return gm
