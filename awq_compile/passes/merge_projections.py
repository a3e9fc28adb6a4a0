"""Transformation 2: one launch for the layers that read the same input (the analysis' groups).

::

    q = w4a16_linear(x, qw_q, ...); k = w4a16_linear(x, qw_k, ...); v = w4a16_linear(x, qw_v, ...)   # before
    b = torch.cat([b_q, b_k, b_v])                                                     # when they have biases
    y = w4a16_linear_merged(x, [qw_q, qw_k, qw_v], [qz_q, ...], [s_q, ...], b, "q;k;v", ...)  # after
    q = y.narrow(-1, 0, Nq).contiguous(); k = y.narrow(-1, Nq, Nk).contiguous(); ...

The merged op goes where the first part was; each part's result becomes its slice of ``y`` at the part's
own place (``contiguous`` keeps the user's later ``view``s valid; Inductor fuses the copy into the
consumer).  The parts' weights are graph inputs or constants (the analysis checked it), so they are
defined before the merged op; a constant (or a cast of one, ``bias.to(x.dtype)``) defined later is
moved up: it reads nothing the stretch could change.
"""

from __future__ import annotations

import torch

from ..runtime.merged import join_names, w4a16_linear_merged  # noqa: F401  (registers the op)
from .records import Analysis
from .rewrite_awq_linears import LAYER_INDEX


def _move_before(node, anchor: torch.fx.Node, order: dict) -> None:
    """Move ``node`` (an input, a constant or casts of them: the analysis checked it) and what it reads
    before ``anchor`` when it is defined later."""
    if node is None or node.op == "placeholder" or order[node] < order[anchor]:
        return
    for a in node.all_input_nodes:
        _move_before(a, anchor, order)
    anchor.prepend(node)
    order[node] = order[anchor] - 0.5


def merge_projections(gm: torch.fx.GraphModule, analysis: Analysis) -> torch.fx.GraphModule:
    if not analysis.groups:
        return gm
    single = torch.ops.awq_compile.w4a16_linear.default
    merged = torch.ops.awq_compile.w4a16_linear_merged.default
    ops = {n.meta[LAYER_INDEX]: n for n in gm.graph.nodes
           if n.op == "call_function" and n.target is single and LAYER_INDEX in n.meta}
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for group in analysis.groups:
        parts = [ops[i] for i in group.members]
        matches = [analysis.layers[i].match for i in group.members]
        first, m0 = parts[0], matches[0]
        for m, p in zip(matches, parts):
            for n in (m.qweight, m.qzeros, p.args[3], p.args[4]):   # args 3, 4: scales, bias as passed
                _move_before(n, first, order)
        with gm.graph.inserting_before(first):
            bias = None
            if m0.bias is not None:
                # the parts' bias arguments as the rewrite passed them (casts of the bias, moved up above)
                bias = gm.graph.call_function(torch.cat, ([p.args[4] for p in parts],))
            args = (first.args[0], [m.qweight for m in matches],
                    [m.qzeros for m in matches] if m0.qzeros is not None else [],
                    [p.args[3] for p in parts], bias, join_names(m.name for m in matches), m0.fmt,
                    m0.group_size, analysis.layers[group.members[0]].request)
            y = gm.graph.call_function(merged, args)
        y.meta.update({k: v for k, v in first.meta.items() if k in ("nn_module_stack", "stack_trace")})
        offset = 0
        for node, m in zip(parts, matches):
            with gm.graph.inserting_before(node):
                part = gm.graph.call_method("contiguous", (gm.graph.call_method("narrow", (y, -1, offset, m.N)),))
            part.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")})
            node.replace_all_uses_with(part)
            gm.graph.erase_node(node)
            offset += m.N
    gm.graph.lint()
    gm.recompile()
    return gm
