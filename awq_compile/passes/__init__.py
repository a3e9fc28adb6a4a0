"""The pass pipeline: an analysis producing frozen records, then transformations ``gm -> gm`` reading it.

Analysis (:func:`analyze`, no change to the graph; ``explain`` runs it alone):

1. bind_inputs          placeholders/get_attrs -> real values; which are weights
2. find_awq_linears     matmuls whose weight verifies as a 4-bit dequantisation (frozen ``AwqMatch``es)
3. select_kernels       the plan request per layer, and the plan for the example shape (report, check)
4. group_projections    which layers read the same input and can run as one launch

Transformations (:data:`TRANSFORMS`, in this order, each ``fn(gm, analysis) -> gm``):

1. rewrite_awq_linears  matmul -> torch.ops.awq_compile.w4a16_linear on the source tensors
2. merge_projections    layers that read one input (q/k/v, gate/up) -> one w4a16_linear_merged launch
3. prepack_weights      repack the example weights into the runtime cache now
4. eliminate_dead_code  remove the dequant nodes left unused (those only)
"""

from __future__ import annotations

import os

import torch

from .analysis import analyze
from .eliminate_dead_code import eliminate_dead_code
from .merge_projections import merge_projections
from .prepack_weights import prepack_weights
from .records import Analysis, AwqMatch, Bindings, MergedGroup, PlannedLayer
from .rewrite_awq_linears import rewrite_awq_linears

TRANSFORMS = (rewrite_awq_linears, merge_projections, prepack_weights, eliminate_dead_code)

__all__ = ["TRANSFORMS", "Analysis", "AwqMatch", "Bindings", "MergedGroup", "PlannedLayer", "PassError", "analyze", "run_passes"]


class PassError(RuntimeError):
    """A transformation failed; ``pass_name`` names it, the original error is the ``__cause__``."""

    def __init__(self, pass_name: str, graph_index: int, error: BaseException):
        self.pass_name = pass_name
        super().__init__(f"awq_compile: pass {pass_name} failed on graph {graph_index}: "
                         f"{type(error).__name__}: {error}")


def _dump(directory: str, index: int, step: int, label: str, gm: torch.fx.GraphModule) -> None:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"graph{index:03d}_{step:02d}_{label}.txt")
    with open(path, "w") as f:
        f.write(gm.print_readable(print_output=False))


def run_passes(gm: torch.fx.GraphModule, analysis: Analysis, passes=TRANSFORMS) -> torch.fx.GraphModule:
    dump = analysis.options.dump_graphs
    if dump:
        _dump(dump, analysis.graph_index, 0, "input", gm)
    for step, p in enumerate(passes, 1):
        try:
            gm = p(gm, analysis)
        except PassError:
            raise
        except Exception as e:
            raise PassError(p.__name__, analysis.graph_index, e) from e
        if dump:
            _dump(dump, analysis.graph_index, step, p.__name__, gm)
    return gm
