"""Pass 1: bind each placeholder / get_attr to its real tensor and decide which ones are weights.

A weight is a parameter or buffer: Dynamo marks those example inputs with ``_dynamo_static_input_type``
(or they are ``nn.Parameter``s, or their source names a module attribute); ``get_attr`` nodes (Inductor
freezing) are constants by construction.  Everything else is a runtime input, and a matmul weight
computed from a runtime input is never rewritten.
"""

from __future__ import annotations

import torch

from .context import PassContext

_WEIGHT_SOURCE_HINTS = ("_parameters[", "_buffers[", ".weight", "qweight", "qzeros", "scales")


def _is_static(node, value) -> bool:
    if not isinstance(value, torch.Tensor):
        return False
    if getattr(value, "_dynamo_static_input_type", None) is not None or isinstance(value, torch.nn.Parameter):
        return True
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    name = source.name if source is not None and hasattr(source, "name") else ""
    name = name() if callable(name) else name
    return any(h in name for h in ("_parameters[", "_buffers["))


def bind_inputs(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, ctx.example_inputs):
        ctx.values[node] = value
        if _is_static(node, value):
            ctx.static.add(node)
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            obj = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            if isinstance(obj, torch.Tensor):
                ctx.values[node] = obj
                ctx.static.add(node)
    return gm
