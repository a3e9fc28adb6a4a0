"""Transformation 3: drop the dequantisation nodes our rewrite left unused -- those and nothing else.

Only nodes of the matched weight subgraphs (``AwqMatch.weight_nodes``) are candidates: the rest of the
graph is the user's and is handed on exactly as Dynamo captured it (Inductor does its own dead-code
elimination, with the functionalisation that makes it safe).  A whole-graph DCE with FX's purity test
once deleted a user Triton kernel writing into a preallocated buffer: Dynamo records it as the
higher-order op ``triton_kernel_wrapper_mutation``, whose result nobody reads, and FX counts
higher-order ops as pure -- AutoAWQ's ``WQLinear_GEMM`` then returned zeros.

Even among the candidates a node is removed only when nothing reads it and it provably writes
nothing: a function or method call that is not in place (PyTorch's trailing ``_``, the ``operator``
in-place functions), has no ``out=`` argument, is no higher-order op, no OpOverload whose schema
mutates an argument, and nothing FX or torch.library mark as side-effecting or random.
"""

from __future__ import annotations

import operator

import torch

from .records import Analysis, log

_OPERATOR_IN_PLACE = {operator.iand, operator.ior, operator.ixor, operator.iadd, operator.isub, operator.imul,
                      operator.itruediv, operator.ifloordiv, operator.irshift, operator.ilshift, operator.setitem,
                      operator.imod, operator.ipow, operator.imatmul, operator.delitem}


def _in_place_name(name: str) -> bool:
    return name.endswith("_") and not name.endswith("__")


def writes_nothing(node: torch.fx.Node) -> bool:
    """True only for a call we can show has no effect beyond its result."""
    if node.op not in ("call_function", "call_method"):
        return False
    if "out" in node.kwargs:
        return False
    if node.op == "call_method":
        return not _in_place_name(str(node.target))
    t = node.target
    if isinstance(t, torch._ops.HigherOrderOperator):
        return False
    if isinstance(t, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        overload = t.default if isinstance(t, torch._ops.OpOverloadPacket) and hasattr(t, "default") else t
        schema = getattr(overload, "_schema", None)
        if schema is None or schema.is_mutable:
            return False
    if t in _OPERATOR_IN_PLACE:
        return False
    if node.is_impure():
        return False
    if getattr(t, "__module__", None) in ("_operator", "operator"):  # operator.and_ is not in place
        return True
    return not _in_place_name(getattr(t, "__name__", ""))


def _asserts_metadata_of(user: torch.fx.Node, node: torch.fx.Node) -> bool:
    check = getattr(torch.ops.aten, "_assert_tensor_metadata", None)
    return (check is not None and user.op == "call_function" and user.target is check.default
            and not user.users and user.args[:1] == (node,))


def eliminate_dead_code(gm: torch.fx.GraphModule, analysis: Analysis) -> torch.fx.GraphModule:
    candidates = {n for m in analysis.matches for n in m.weight_nodes}
    if not candidates:
        return gm
    # torch.export asserts the metadata of intermediates (``aten._assert_tensor_metadata``): checks of a
    # dequant value we no longer compute go with it (they would keep the full-size intermediates alive)
    asserts = [u for n in candidates for u in n.users if _asserts_metadata_of(u, n)]
    for a in asserts:
        a.graph.erase_node(a)
    position = {}
    for graph in {id(n.graph): n.graph for n in candidates}.values():  # gm's and grad-mode regions'
        position.update((n, i) for i, n in enumerate(graph.nodes))
    removed, touched = 0, {}
    # users come after their inputs: walking backwards frees a chain in one sweep
    for node in sorted((n for n in candidates if n in position), key=position.__getitem__, reverse=True):
        if not node.users and writes_nothing(node):
            touched[id(node.graph)] = node.graph
            node.graph.erase_node(node)
            removed += 1
    log.debug("removed %d dequant node(s) of %d candidate(s)", removed, len(candidates))
    for graph in touched.values():
        graph.lint()
        if graph.owning_module is not None:
            graph.owning_module.recompile()
    gm.recompile()
    return gm
