"""Analysis step 4: which AWQ linears read the same input and can run as one launch (q/k/v, gate/up).

Two layers merge when their activations are the same value -- the same node, or the same chain of
casts and reshapes of one node (``x.to(dtype).reshape(-1, K)`` spelt once per layer, as AutoAWQ-style
modules do) -- and nothing between the first and the last of them can write to it: every node in that
stretch provably writes nothing, and all of them run in one grad mode.  They must also agree on the
format, group size, K, activation dtype, zero points and bias (all or none), read no auxiliary tensors,
hold their weights and biases in graph inputs or constants (or casts of them), and have no scales that
need a gradient.
Merging is off with ``merge_projections=False`` and under ``reuse_weight_memory`` (the parts live in
separate buffers, so a concatenated copy would undo the memory saving).  A group that some kernel
cannot run as one problem stays separate.  The reasons a candidate stays separate go to the debug log.
"""

from __future__ import annotations

import dataclasses

import torch

from ..kernels.problem import Problem
from ..kernels.registry import NoKernelError
from ..options import Options
from ..report import MergeReport
from ..runtime.merged import merged_name
from ..runtime.planning import PlanRequest, plan_for
from ..target import Target
from .eliminate_dead_code import writes_nothing
from .records import Bindings, MergedGroup, log
from .select_kernels import example_m

__all__ = ["group_projections", "value_key", "movable"]

# calls that compute a view or a cast of their first argument and nothing else
_PURE_METHODS = {"to", "reshape", "view", "contiguous", "detach", "half", "float", "bfloat16", "type", "flatten", "size",
                 "view_as", "reshape_as", "type_as"}
_PURE_FUNCS = {torch.reshape, torch.flatten}
_GRAD_MODE = torch._C._set_grad_enabled


def _pure(node: torch.fx.Node) -> bool:
    return (node.op == "call_method" and node.target in _PURE_METHODS) or (
        node.op == "call_function" and node.target in _PURE_FUNCS)


def value_key(node):
    """A hashable key equal for two nodes that compute the same value from the same node."""
    if not isinstance(node, torch.fx.Node):
        if isinstance(node, (list, tuple)):
            return (type(node).__name__, tuple(value_key(a) for a in node))
        return ("lit", repr(node))
    if not _pure(node):
        return node
    return (node.op, str(node.target), tuple(value_key(a) for a in node.args),
            tuple(sorted((k, value_key(v)) for k, v in node.kwargs.items())))


def movable(node) -> bool:
    """A graph input, a constant, or casts/views of those only: it can be computed earlier in the graph
    (``bias.to(x.dtype)`` spelt once per layer)."""
    if node is None or not isinstance(node, torch.fx.Node):
        return True
    if node.op in ("placeholder", "get_attr"):
        return True
    return _pure(node) and all(movable(a) for a in node.all_input_nodes)


def _stretch_reason(nodes: list, first: torch.fx.Node, last: torch.fx.Node, own: set) -> str | None:
    """Why the nodes from ``first`` to ``last`` (graph order) may change the shared input, or None."""
    on = False
    for n in nodes:
        if n is first:
            on = True
        if not on:
            continue
        if n is last:
            return None
        if n in own or n.op in ("placeholder", "get_attr"):
            continue
        if n.op == "call_function" and n.target is _GRAD_MODE:
            return "the grad mode changes between them"
        if not writes_nothing(n):
            return f"'{n.name}' between them may write to a tensor"
    return None


@dataclasses.dataclass
class _Candidate:
    index: int
    layer: object   # PlannedLayer


def _static(node) -> bool:
    v = node.meta.get("example_value", node.meta.get("val")) if isinstance(node, torch.fx.Node) else None
    if not isinstance(v, torch.Tensor):
        return True
    return all(isinstance(d, int) or (isinstance(d, torch.SymInt) and d.node.maybe_as_int() is not None)
               for d in v.shape)


def _shared_reason(layer, gm: torch.fx.GraphModule, bindings: Bindings) -> str | None:
    m = layer.match
    if m.matmul.graph is not gm.graph:
        return "it sits in a nested region of the graph (torch.export's grad-mode regions)"
    if not (_static(m.scales) and _static(m.qweight)):
        return "its weight's shape is symbolic in this graph (one graph serves layers of several shapes)"
    if m.aux:
        return "it reads auxiliary tensors (reorder index or g_idx)"
    if not all(movable(n) for n in (m.qweight, m.qzeros, m.scales, m.bias)):
        return "its weights or bias are computed in the graph (not only cast or viewed)"
    s = bindings.values.get(m.scales)
    if isinstance(s, torch.Tensor) and s.requires_grad:
        return "its scales need a gradient"
    if m.N % 8:
        return f"N={m.N} is not a multiple of 8"
    return None


def group_projections(layers: tuple, gm: torch.fx.GraphModule, bindings: Bindings, target: Target,
                      options: Options, graph_index: int = 0) -> tuple[tuple, tuple]:
    """(merged groups, merge reports) for the planned ``layers`` of ``gm``."""
    if not options.merge_projections or len(layers) < 2:
        return (), ()
    if options.reuse_weight_memory:
        log.debug("graph %d: projections not merged: reuse_weight_memory keeps each layer in its own buffers",
                  graph_index)
        return (), ()
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    buckets: dict = {}
    for i, layer in enumerate(layers):
        why = _shared_reason(layer, gm, bindings)
        if why:
            log.debug("%s not merged: %s", layer.match.name, why)
            continue
        m = layer.match
        key = (value_key(m.x), m.fmt, m.group_size, m.K, m.act_dtype, m.qzeros is not None, m.bias is not None,
               layer.request)
        buckets.setdefault(key, []).append(_Candidate(i, layer))
    nodes = list(gm.graph.nodes)
    own = {n for layer in layers for n in layer.match.weight_nodes}
    groups, reports = [], []
    for members in buckets.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda c: order[c.layer.match.matmul])
        first, last = members[0].layer.match, members[-1].layer.match
        start = min((first.x, *(c.layer.match.x for c in members)), key=lambda n: order[n])
        names = [c.layer.match.name for c in members]
        why = _stretch_reason(nodes, start, last.matmul, own | {c.layer.match.matmul for c in members})
        if why:
            log.debug("%s not merged: %s", "+".join(names), why)
            continue
        N = sum(c.layer.match.N for c in members)
        problem = Problem(first.K, N, first.group_size, first.qzeros is not None,
                          str(first.act_dtype).removeprefix("torch."), has_bias=first.bias is not None)
        try:
            plan = plan_for(PlanRequest.decode(members[0].layer.request), problem)
        except NoKernelError as e:
            log.debug("%s not merged: no kernel runs N=%d as one problem (%s)", "+".join(names), N, e)
            continue
        name = merged_name(names)
        groups.append(MergedGroup(members=tuple(c.index for c in members), name=name, N=N, plan=plan))
        em = example_m(first)
        reports.append(MergeReport(name=name, parts=tuple(names), in_features=first.K, out_features=N,
                                   kernel=plan.entry_for(em if em is not None else 1).kernel,
                                   kernels={rng: e.label() for rng, e in plan.buckets()},
                                   graph=graph_index, layout=plan.layout))
        log.info("merged %s: one launch [%d -> %d] on %s: %s", name, first.K, N, target, plan.describe())
    return tuple(groups), tuple(reports)
