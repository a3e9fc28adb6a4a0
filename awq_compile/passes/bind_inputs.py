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


def concrete(value):
    """The example's value of a size: a SymInt's hint (never ``int()``, which would add a guard)."""
    if isinstance(value, torch.SymInt):
        hint = value.node.hint
        if hint is None:
            hint = value.node.shape_env.size_hint(value.node.expr)
        return int(hint)
    return value


def grad_mode_regions(gm: torch.fx.GraphModule):
    """``(hop node, submodule)`` for every ``wrap_with_set_grad_enabled`` call in ``gm``: how
    ``torch.export`` records a ``with torch.no_grad():`` block (the dequant of most AWQ modules)."""
    hop = getattr(torch.ops.higher_order, "wrap_with_set_grad_enabled", None)
    for node in gm.graph.nodes:
        if hop is not None and node.op == "call_function" and node.target is hop and len(node.args) >= 2:
            sub = node.args[1]
            if isinstance(sub, torch.fx.Node) and sub.op == "get_attr":
                try:
                    mod = gm.get_submodule(sub.target)
                except AttributeError:
                    continue
                if isinstance(mod, torch.fx.GraphModule):
                    yield node, mod


def graphs_of(gm: torch.fx.GraphModule):
    """``gm`` and, depth first, the submodules of its grad-mode regions: every graph the analysis reads."""
    yield gm
    for _, sub in grad_mode_regions(gm):
        yield from graphs_of(sub)


def bind_inputs(gm: torch.fx.GraphModule, example_inputs, *, static_names=()) -> Bindings:
    """``static_names``: placeholder name -> the weight's qualified name in the model, for placeholders
    known to be weights (``torch.export``'s parameters, buffers and constants).

    Placeholders of grad-mode regions (``wrap_with_set_grad_enabled`` submodules) are bound to what the
    region is called with: a weight passed in stays a weight."""
    values, static, origin, fqns = {}, set(), {}, {}
    names = dict(static_names) if isinstance(static_names, dict) else {n: "" for n in static_names}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, example_inputs):
        values[node] = concrete(value)
        if _is_static(node, value) or node.name in names:
            static.add(node)
        if names.get(node.name):
            fqns[node] = names[node.name]
    _bind_constants(gm, values, static)
    _bind_regions(gm, values, static, origin)
    return Bindings.of(values, static, origin, fqns)


def _bind_regions(gm, values, static, origin) -> None:
    for hop_node, sub in grad_mode_regions(gm):
        inner = [n for n in sub.graph.nodes if n.op == "placeholder"]
        for ph, outer in zip(inner, hop_node.args[2:]):
            if isinstance(outer, torch.fx.Node):
                origin[ph] = outer
                if outer in values:
                    values[ph] = values[outer]
                if outer in static:
                    static.add(ph)
            else:
                values[ph] = outer
        _bind_constants(sub, values, static)
        _bind_regions(sub, values, static, origin)


def _bind_constants(gm, values, static) -> None:
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
