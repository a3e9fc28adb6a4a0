"""Transformation 1: replace each verified matmul with ``torch.ops.awq_compile.w4a16_linear``.

::

    y = torch.matmul(x, <dequant subgraph>(qweight, qzeros, scales))      # before
    y = torch.ops.awq_compile.w4a16_linear(x, qweight, qzeros, scales, bias, [aux...],
                                           "layers.0.q_proj", "awq", 128, "request:...", "<aux digest>")

The op receives the *source* tensors so the weights are looked up per call (see runtime/weights.py):
one compiled graph stays correct for every module instance that reuses it.  Its ``plan`` argument is
a request the op resolves per call (runtime/planning.py).  The now-unused dequant nodes are removed by
the dead-code transformation.
"""

from __future__ import annotations

import operator

import torch

from ..runtime.op import w4a16_linear  # noqa: F401  (registers the op)
from .records import Analysis

LAYER_INDEX = "awq_compile_layer"


def _fake(node):
    return node.meta.get("example_value", node.meta.get("val"))


def _group_size_arg(gm, m, x):
    """The group size as the graph knows it: K // scale rows.  A plain int when the graph fixes it (the
    usual case, and a dynamic graph whose layers share G); else nodes computing it from the call's
    sizes, so the op is right for every layer a symbolic graph serves."""
    xv, sv = _fake(m.x), _fake(m.scales)
    if not isinstance(xv, torch.Tensor) or not isinstance(sv, torch.Tensor):
        return m.group_size
    g = xv.shape[-1] // sv.shape[0]
    if not isinstance(g, torch.SymInt) or g.node.is_constant() or g.node.maybe_as_int() is not None:
        return m.group_size
    graph = m.matmul.graph
    k = graph.call_method("size", (x, -1))
    rows = graph.call_method("size", (m.scales, 0))
    return graph.call_function(operator.floordiv, (k, rows))


def rewrite_awq_linears(gm: torch.fx.GraphModule, analysis: Analysis) -> torch.fx.GraphModule:
    op = torch.ops.awq_compile.w4a16_linear.default
    replaced: dict = {}  # erased matmul -> its replacement (a later layer's input may be an earlier layer)
    touched = {}
    for index, layer in enumerate(analysis.layers):
        m = layer.match
        x = replaced.get(m.x, m.x)
        bias = replaced.get(m.bias, m.bias)
        graph = m.matmul.graph  # gm's, or a grad-mode region's (torch.export)
        touched[id(graph)] = graph
        with graph.inserting_before(m.matmul):
            group_size = _group_size_arg(gm, m, x)
            scales = graph.call_method("detach", (m.scales,)) if m.detach_scales else m.scales
            new = graph.call_function(op, (x, m.qweight, m.qzeros, scales, bias, list(m.aux), m.name,
                                           m.fmt, group_size, layer.request, m.aux_digest))
        replaced[m.matmul] = new
        new.meta[LAYER_INDEX] = index   # the merge transformation finds each layer's op by it
        new.meta.update({k: v for k, v in m.matmul.meta.items() if k in ("nn_module_stack", "stack_trace",
                                                                          "source_fn_stack", "example_value",
                                                                          "val")})
        m.matmul.replace_all_uses_with(new)
        graph.erase_node(m.matmul)
    for graph in touched.values():
        graph.owning_module.recompile()
    gm.recompile()
    return gm
