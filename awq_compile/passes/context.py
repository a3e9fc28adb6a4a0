"""State shared by the passes of one compile: options, target, example values, findings."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
import torch.fx

from ..report import LayerReport, SkipReport
from ..options import Options
from ..target import Target

log = logging.getLogger("awq_compile")


@dataclasses.dataclass
class AwqMatch:
    """One matmul whose weight operand was verified to be a 4-bit dequantisation."""

    matmul: torch.fx.Node
    x: torch.fx.Node
    bias: torch.fx.Node | None
    qweight: torch.fx.Node
    qzeros: torch.fx.Node | None
    scales: torch.fx.Node
    aux: list[torch.fx.Node]
    fmt: str
    K: int
    N: int
    group_size: int
    act_dtype: torch.dtype
    name: str
    exact: bool                       # bit-exact against our dequant (else within rounding)
    weight_nodes: tuple = ()          # the dequant subgraph: the only nodes dead-code removal may touch
    plan: Any = None                  # kernels.registry.Plan, set by select_kernels
    aux_digest: str = ""
    detach_scales: bool = False       # scales require grad but the user's dequant gives them none


@dataclasses.dataclass
class PassContext:
    options: Options
    target: Target
    graph_index: int = 0
    example_inputs: list = dataclasses.field(default_factory=list)
    values: dict = dataclasses.field(default_factory=dict)       # placeholder/get_attr node -> real tensor
    static: set = dataclasses.field(default_factory=set)         # nodes that hold weights (not runtime inputs)
    matches: list[AwqMatch] = dataclasses.field(default_factory=list)
    layers: list[LayerReport] = dataclasses.field(default_factory=list)
    skipped: list[SkipReport] = dataclasses.field(default_factory=list)

    def skip(self, node: torch.fx.Node, name: str, reason: str, *, quantized_looking: bool = False) -> None:
        self.skipped.append(SkipReport(name=name, node=node.name, reason=reason))
        log.info("skipped %s (%s): %s", name, node.name, reason)
        if quantized_looking and self.options.strict:
            raise RuntimeError(f"awq backend (strict): {name}: {reason}")
