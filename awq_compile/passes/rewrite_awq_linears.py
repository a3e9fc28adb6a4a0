"""Pass 4: replace each verified matmul with ``torch.ops.awq_compile.w4a16_linear``.

::

    y = torch.matmul(x, <dequant subgraph>(qweight, qzeros, scales))      # before
    y = torch.ops.awq_compile.w4a16_linear(x, qweight, qzeros, scales, bias, [aux...],
                                           "layers.0.q_proj", "awq", 128, "<plan>", "<aux digest>")

The op receives the *source* tensors so the weights are looked up per call (see runtime/weights.py):
one compiled graph stays correct for every module instance that reuses it.  The now-unused dequant
nodes are removed by the dead-code pass.
"""

from __future__ import annotations

import torch

from ..runtime.op import w4a16_linear  # noqa: F401  (registers the op)
from ..runtime.weights import digest
from .context import PassContext


def rewrite_awq_linears(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    if ctx.options.analysis_only:
        return gm
    op = torch.ops.awq_compile.w4a16_linear.default
    replaced: dict = {}  # erased matmul -> its replacement (a later layer's input may be an earlier layer)
    for m in ctx.matches:
        m.aux_digest = digest([ctx.values[a] for a in m.aux]) if m.aux else ""
        m.x = replaced.get(m.x, m.x)
        m.bias = replaced.get(m.bias, m.bias)
        with gm.graph.inserting_before(m.matmul):
            scales = gm.graph.call_method("detach", (m.scales,)) if m.detach_scales else m.scales
            new = gm.graph.call_function(op, (m.x, m.qweight, m.qzeros, scales, m.bias, list(m.aux), m.name,
                                              m.fmt, m.group_size, m.plan.encode(), m.aux_digest))
        replaced[m.matmul] = new
        new.meta.update({k: v for k, v in m.matmul.meta.items() if k in ("nn_module_stack", "stack_trace",
                                                                          "source_fn_stack", "example_value")})
        m.matmul.replace_all_uses_with(new)
        gm.graph.erase_node(m.matmul)
    return gm
