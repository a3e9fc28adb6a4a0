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

import torch

from ..runtime.op import w4a16_linear  # noqa: F401  (registers the op)
from .records import Analysis

LAYER_INDEX = "awq_compile_layer"


def rewrite_awq_linears(gm: torch.fx.GraphModule, analysis: Analysis) -> torch.fx.GraphModule:
    op = torch.ops.awq_compile.w4a16_linear.default
    replaced: dict = {}  # erased matmul -> its replacement (a later layer's input may be an earlier layer)
    for index, layer in enumerate(analysis.layers):
        m = layer.match
        x = replaced.get(m.x, m.x)
        bias = replaced.get(m.bias, m.bias)
        with gm.graph.inserting_before(m.matmul):
            new = gm.graph.call_function(op, (x, m.qweight, m.qzeros, m.scales, bias, list(m.aux), m.name,
                                              m.fmt, m.group_size, layer.request, m.aux_digest))
        replaced[m.matmul] = new
        new.meta[LAYER_INDEX] = index   # the merge transformation finds each layer's op by it
        new.meta.update({k: v for k, v in m.matmul.meta.items() if k in ("nn_module_stack", "stack_trace",
                                                                          "source_fn_stack", "example_value",
                                                                          "val")})
        m.matmul.replace_all_uses_with(new)
        gm.graph.erase_node(m.matmul)
    gm.recompile()
    return gm
