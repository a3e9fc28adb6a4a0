"""The analysis' frozen records: what the analysis found in one graph, read by the transformations.

Nothing here is mutated after it is built: the analysis (``bind_inputs`` -> ``find_awq_linears`` ->
``select_kernels``) returns new records, the transformations (``rewrite_awq_linears``,
``prepack_weights``, ``eliminate_dead_code``) only read them.  ``explain`` runs the analysis alone.
"""

from __future__ import annotations

import dataclasses
import logging
from types import MappingProxyType
from typing import Any, Mapping

import torch
import torch.fx

from ..options import Options
from ..report import LayerReport, SkipReport
from ..target import Target

__all__ = ["Bindings", "AwqMatch", "PlannedLayer", "MergedGroup", "Analysis", "Skips", "log"]

log = logging.getLogger("awq_compile")


@dataclasses.dataclass(frozen=True)
class Bindings:
    """Placeholder / get_attr node -> its real value; which of them hold weights (not runtime inputs)."""

    values: Mapping[torch.fx.Node, Any]
    static: frozenset
    origin: Mapping[torch.fx.Node, torch.fx.Node] = dataclasses.field(   # region placeholder -> outer arg
        default_factory=lambda: MappingProxyType({}))
    fqns: Mapping[torch.fx.Node, str] = dataclasses.field(               # weight -> "layers.0.q_proj.qweight"
        default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, values: dict, static: set, origin=None, fqns=None) -> "Bindings":
        return cls(MappingProxyType(dict(values)), frozenset(static), MappingProxyType(dict(origin or {})),
                   MappingProxyType(dict(fqns or {})))

    def outermost(self, node: torch.fx.Node) -> torch.fx.Node:
        """The top-level graph's node that a grad-mode region's placeholder stands for."""
        while node in self.origin:
            node = self.origin[node]
        return node


@dataclasses.dataclass(frozen=True)
class AwqMatch:
    """One matmul whose weight operand was verified to be a 4-bit dequantisation."""

    matmul: torch.fx.Node
    x: torch.fx.Node
    bias: torch.fx.Node | None
    qweight: torch.fx.Node
    qzeros: torch.fx.Node | None
    scales: torch.fx.Node
    aux: tuple                        # other leaves the dequant read (reorder index, g_idx)
    fmt: str
    K: int                            # of the example (the graph itself may be symbolic in K, N)
    N: int
    group_size: int
    act_dtype: torch.dtype
    name: str
    exact: bool                       # bit-exact against our dequant (else within rounding)
    weight_nodes: tuple = ()          # the dequant subgraph: the only nodes dead-code removal may touch
    aux_digest: str = ""              # content hash of ``aux`` (checked when new weights appear)
    detach_scales: bool = False       # scales require grad but the user's dequant gives them none


@dataclasses.dataclass(frozen=True)
class PlannedLayer:
    """A match with what the op is told: the plan request, and the plan it gives for the example."""

    match: AwqMatch
    request: str                      # runtime.planning.PlanRequest, encoded: the op plans per call
    plan: Any                         # kernels.registry.Plan for the example's (K, N): report and check


@dataclasses.dataclass(frozen=True)
class MergedGroup:
    """Layers that read one input and run as one launch over their concatenated N (q/k/v, gate/up)."""

    members: tuple                    # indices into Analysis.layers, in graph order
    name: str                         # "layers.0.self_attn.q_proj+k_proj+v_proj"
    N: int                            # the sum of the members' N (of the example)
    plan: Any                         # kernels.registry.Plan for (K, N) of the example: report and check


@dataclasses.dataclass(frozen=True)
class Analysis:
    graph_index: int
    target: Target
    options: Options
    bindings: Bindings
    layers: tuple = ()                # PlannedLayer, in graph order
    skipped: tuple = ()               # SkipReport
    reports: tuple = ()               # LayerReport, one per layer
    groups: tuple = ()                # MergedGroup: layers that run as one launch
    merge_reports: tuple = ()         # MergeReport, one per group

    @property
    def matches(self) -> tuple:
        return tuple(p.match for p in self.layers)


class Skips:
    """Collects the refusals of one analysis step (logged; ``strict`` raises on quantized-looking ones)."""

    def __init__(self, options: Options, graph_index: int = 0):
        self.options, self.graph_index, self.items = options, graph_index, []

    def add(self, node: torch.fx.Node, name: str, reason: str, *, quantized_looking: bool = False) -> None:
        self.items.append(SkipReport(name=name, node=node.name, reason=reason, graph=self.graph_index))
        log.info("skipped %s (%s): %s", name, node.name, reason)
        if quantized_looking and self.options.strict:
            raise RuntimeError(f"awq backend (strict): {name}: {reason}")
