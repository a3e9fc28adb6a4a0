"""The analysis: bind inputs, find and verify AWQ linears, plan kernels, group projections that share an
input -- one frozen record, no change
to the graph.  ``explain`` runs this alone; the backend runs it, then the transformations."""

from __future__ import annotations

import torch

from ..options import Options
from ..target import Target
from .bind_inputs import bind_inputs
from .find_awq_linears import find_awq_linears
from .group_projections import group_projections
from .records import Analysis
from .select_kernels import select_kernels

__all__ = ["analyze"]


def analyze(gm: torch.fx.GraphModule, example_inputs, *, options: Options, target: Target, graph_index: int = 0,
            static_names=()) -> Analysis:
    bindings = bind_inputs(gm, example_inputs, static_names=static_names)
    matches, skipped = find_awq_linears(gm, bindings, options, graph_index)
    layers, refused, reports = select_kernels(matches, target, options, graph_index)
    groups, merge_reports = group_projections(layers, gm, bindings, target, options, graph_index)
    return Analysis(graph_index=graph_index, target=target, options=options, bindings=bindings, layers=layers,
                    skipped=skipped + refused, reports=reports, groups=groups, merge_reports=merge_reports)
