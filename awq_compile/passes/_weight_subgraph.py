"""Helpers for the matching pass: recognise matmul nodes, cut out and evaluate a weight's subgraph.

The graphs are Dynamo's torch-level IR, so one matmul has many spellings; each spelling below is
normalised to ``(x, weight, bias, orientation)`` where orientation ``"kn"`` means ``y = x @ W`` and
``"nk"`` means ``y = x @ W.T`` (``F.linear``).
"""

from __future__ import annotations

import dataclasses
import operator

import torch
import torch.fx
from torch.fx.node import map_arg

__all__ = ["MatmulSite", "matmul_site", "weight_subgraph", "evaluate", "WeightSubgraph"]

aten = torch.ops.aten
_MATMUL_FUNCS = {torch.matmul, operator.matmul, torch.mm, aten.mm.default, aten.matmul.default}
_MATMUL_METHODS = {"matmul", "mm", "__matmul__"}
_LINEAR_FUNCS = {torch._C._nn.linear, torch.nn.functional.linear, aten.linear.default}
_ADDMM_FUNCS = {torch.addmm, aten.addmm.default}


@dataclasses.dataclass
class MatmulSite:
    node: torch.fx.Node
    x: torch.fx.Node
    weight: torch.fx.Node
    bias: torch.fx.Node | None
    orientation: str  # "kn" or "nk"


def _arg(node, i, name):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name)


def matmul_site(node: torch.fx.Node) -> MatmulSite | None | str:
    """The matmul this node performs, None if it is no matmul, or a reason string if it is one we
    recognise but cannot take (e.g. ``addmm`` with beta/alpha)."""
    if node.op == "call_function":
        t = node.target
        if t in _MATMUL_FUNCS:
            x, w = node.args[0], node.args[1]
            return _site(node, x, w, None, "kn")
        if t in _LINEAR_FUNCS:
            return _site(node, _arg(node, 0, "input"), _arg(node, 1, "weight"), _arg(node, 2, "bias"), "nk")
        if t in _ADDMM_FUNCS:
            if any(node.kwargs.get(k, 1) != 1 for k in ("beta", "alpha")):
                return (f"addmm with beta={node.kwargs.get('beta', 1)}, alpha={node.kwargs.get('alpha', 1)}: expected beta=1 and "
                        "alpha=1 (a plain bias add)")
            return _site(node, node.args[1], node.args[2], node.args[0], "kn")
    elif node.op == "call_method" and node.target in _MATMUL_METHODS:
        return _site(node, node.args[0], node.args[1], None, "kn")
    return None


def _site(node, x, w, bias, orientation):
    if not isinstance(x, torch.fx.Node) or not isinstance(w, torch.fx.Node):
        return None
    if bias is not None and not isinstance(bias, torch.fx.Node):
        return f"expected a bias tensor, found {type(bias).__name__} {bias!r}"
    return MatmulSite(node, x, w, bias, orientation)


@dataclasses.dataclass
class WeightSubgraph:
    nodes: list[torch.fx.Node]         # in graph order, computing nodes only
    leaves: list[torch.fx.Node]        # placeholders and get_attrs it reads
    reason: str | None = None          # why it cannot be a constant weight
    inputs: list[torch.fx.Node] = dataclasses.field(default_factory=list)  # leaves that are graph inputs
                                       # not marked as parameters/buffers (see find_awq_linears)
    output: torch.fx.Node | None = None  # the weight node (the last node, unless in-place ops follow it)
    sizes: list[torch.fx.Node] = dataclasses.field(default_factory=list)  # symbolic-size graph inputs
                                       # (a dynamic graph's SymInts: in_features, group_size...)


def _inputs(node):
    found = []
    map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


def _kind(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
    return type(value).__name__


def weight_subgraph(weight: torch.fx.Node, static: set, values: dict | None = None, before: torch.fx.Node | None = None,
                    max_nodes: int = 400) -> WeightSubgraph:
    """Everything ``weight`` depends on, stopping at placeholders and get_attrs.

    Every node must be a function or method call; input-free factories (``arange``) are fine.  Leaves
    that are weights (``static``: parameter/buffer placeholders, get_attrs) are ordinary; tensor
    placeholders that are not marked as weights are listed in ``inputs`` for the caller to judge (they
    are acceptable only as the packed tensors themselves); a non-tensor input (a symbolic size) means
    the weight's shape depends on the input, which is refused here.

    In-place operations that modify a node of the subgraph (or a view of one) before ``before`` (the
    matmul) are part of the computation even though nothing reads their result (``z.bitwise_and_(15)``,
    ``w.mul_(s)``): they are pulled in, so evaluation replays them in program order.
    """
    values = values if values is not None else {}
    position = {n: i for i, n in enumerate(weight.graph.nodes)}
    limit = position[before] if before is not None else len(position)
    seen, order, leaves, inputs, sizes = set(), [], [], [], []
    stack = [weight]
    while True:
        sub = _walk(stack, seen, order, leaves, inputs, sizes, static, values, max_nodes)
        if sub is not None:
            return sub
        stack = _mutators(seen, position, limit)
        if not stack:
            break
    if not leaves:
        return WeightSubgraph([], [], "the weight reads no parameter or buffer; expected a weight computed from "
                                      "packed tensors held by the model")
    order.sort(key=position.__getitem__)
    return WeightSubgraph(order, leaves, inputs=inputs, output=weight, sizes=sizes)


_VIEW_NAMES = {"view", "reshape", "view_as", "reshape_as", "t", "transpose", "permute", "unsqueeze", "squeeze",
               "expand", "expand_as", "flatten", "unflatten", "narrow", "select", "as_strided", "detach",
               "contiguous", "to", "type", "float", "half", "bfloat16", "getitem", "__getitem__", "split",
               "chunk", "unbind", "movedim", "moveaxis", "swapaxes", "swapdims", "diagonal", "alias", "unfold",
               "view_as_real", "view_as_complex", "tensor_split", "split_with_sizes", "T", "mT", "data"}


def _may_alias(node) -> bool:
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return name in _VIEW_NAMES


def _mutators(seen: set, position: dict, limit: int) -> list:
    """In-place users (before ``limit``) of the nodes in ``seen`` or of views of them, not yet seen."""
    found, visited = [], set()
    frontier = list(seen)
    while frontier:
        n = frontier.pop()
        if n in visited:
            continue
        visited.add(n)
        for u in n.users:
            if position.get(u, limit) >= limit or u in seen:
                continue
            if _in_place(u) and u.args and u.args[0] is n:
                found.append(u)
            elif _may_alias(u):
                frontier.append(u)
    return found


def _walk(stack, seen, order, leaves, inputs, sizes, static, values, max_nodes):
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op in ("placeholder", "get_attr"):
            if n not in static:
                v = values.get(n)
                if isinstance(v, int) and not isinstance(v, bool) and _is_symbolic_size(n):
                    sizes.append(n)  # a size of a dynamic graph (bound to the example's value)
                    continue
                if not isinstance(v, torch.Tensor):
                    return WeightSubgraph([], [], f"the weight depends on the runtime input '{n.name}' "
                                                  f"(a graph input that is a {_kind(v)}); expected a weight computed only "
                                                  "from parameters and buffers")
                inputs.append(n)
            leaves.append(n)
            continue
        if n.op == "call_module":
            return WeightSubgraph([], [], f"the weight is computed by a submodule call ({n.target}); "
                                          "expected plain tensor operations on the packed buffers")
        if n.op != "call_function" and n.op != "call_method":
            return WeightSubgraph([], [], f"found a {n.op} node in the weight computation; expected only function "
                                          "and method calls")
        order.append(n)
        if len(order) > max_nodes:
            return WeightSubgraph([], [], f"the weight computation has more than {max_nodes} nodes; expected a "
                                          "short dequantisation (shift, mask, reorder, scale)")
        stack.extend(_inputs(n))
    return None


def _is_symbolic_size(node) -> bool:
    return isinstance(node.meta.get("example_value", node.meta.get("val")), torch.SymInt)


_IN_PLACE_FUNCS = {operator.iand, operator.ior, operator.ixor, operator.iadd, operator.isub, operator.imul,
                   operator.itruediv, operator.ifloordiv, operator.irshift, operator.ilshift, operator.setitem}


def _in_place(node) -> bool:
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.target in _IN_PLACE_FUNCS:
        return True
    if getattr(node.target, "__module__", None) in ("_operator", "operator"):  # operator.and_ is not in place
        return False
    name = getattr(node.target, "__name__", "")
    return name.endswith("_") and not name.endswith("__")


def evaluate(sub: WeightSubgraph, values: dict, replace: dict | None = None) -> torch.Tensor:
    """Run the subgraph on the real tensors (``replace``: leaf -> another tensor to use instead);
    intermediates are freed as soon as their last use is done."""
    env = {leaf: values[leaf] for leaf in [*sub.leaves, *sub.sizes]}
    env.update(replace or {})
    if any(_in_place(n) for n in sub.nodes):
        # never let the user's in-place ops touch their own tensors while we evaluate
        env = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in env.items()}
    members = set(sub.nodes)
    out_node = sub.output if sub.output is not None else sub.nodes[-1]
    remaining = {n: sum(1 for u in n.users if u in members) for n in sub.nodes}
    with torch.no_grad():
        for n in sub.nodes:
            args, kwargs = map_arg((n.args, n.kwargs), lambda a: env[a])
            if n.op == "call_function":
                out = n.target(*args, **kwargs)
            else:
                self_obj, *rest = args
                out = getattr(self_obj, n.target)(*rest, **kwargs)
            env[n] = out
            for a in set(_inputs(n)):
                if a in remaining:
                    remaining[a] -= 1
                    if remaining[a] == 0 and a is not out_node:
                        env.pop(a, None)
    return env[out_node]
