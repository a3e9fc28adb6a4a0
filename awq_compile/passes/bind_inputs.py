"""Analysis step 1: bind each placeholder / get_attr to its real value and decide which ones are weights.

A weight is a parameter or buffer: Dynamo marks those example inputs with ``_dynamo_static_input_type``
(or they are ``nn.Parameter``s, or their source names a module attribute); ``get_attr`` nodes (Inductor
freezing, ``torch.export``) are constants by construction.  Everything else is a runtime input, and a
matmul weight computed from a runtime input is never rewritten.  Symbolic sizes (``SymInt``
placeholders of a dynamic graph) are bound to the example's concrete value.
"""

from __future__ import annotations

import torch

from .records import Bindings


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


def bind_inputs(gm: torch.fx.GraphModule, example_inputs, *, static_names=()) -> Bindings:
    """``static_names``: placeholder names known to be weights (``torch.export``'s parameters/buffers)."""
    values, static = {}, set()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, example_inputs):
        values[node] = value
        if _is_static(node, value) or node.name in static_names:
            static.add(node)
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            obj = gm
            try:
                for part in node.target.split("."):
                    obj = getattr(obj, part)
            except AttributeError:
                continue
            if isinstance(obj, torch.Tensor):
                values[node] = obj
                static.add(node)
    return Bindings.of(values, static)
