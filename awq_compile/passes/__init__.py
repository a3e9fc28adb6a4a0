"""The pass pipeline.  Each pass is ``fn(gm, ctx) -> gm``; they run in this order.

1. bind_inputs          placeholders/get_attrs -> real tensors; which are weights
2. find_awq_linears     matmuls whose weight verifies as a 4-bit dequantisation
3. select_kernels       plan (M bucket -> kernel, config) per layer for the target
4. rewrite_awq_linears  matmul -> torch.ops.awq_compile.w4a16_linear on the source tensors
5. prepack_weights      repack the example weights into the runtime cache now
6. eliminate_dead_code  remove the dequant nodes left unused
"""

from __future__ import annotations

import os

import torch

from .bind_inputs import bind_inputs
from .context import AwqMatch, PassContext
from .eliminate_dead_code import eliminate_dead_code
from .find_awq_linears import find_awq_linears
from .prepack_weights import prepack_weights
from .rewrite_awq_linears import rewrite_awq_linears
from .select_kernels import select_kernels

PASSES = (bind_inputs, find_awq_linears, select_kernels, rewrite_awq_linears, prepack_weights,
          eliminate_dead_code)

__all__ = ["PASSES", "PassContext", "AwqMatch", "run_passes"]


def _dump(directory: str, index: int, step: int, label: str, gm: torch.fx.GraphModule) -> None:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"graph{index:03d}_{step:02d}_{label}.txt")
    with open(path, "w") as f:
        f.write(gm.print_readable(print_output=False))


def run_passes(gm: torch.fx.GraphModule, ctx: PassContext, passes=PASSES) -> torch.fx.GraphModule:
    dump = ctx.options.dump_graphs
    if dump:
        _dump(dump, ctx.graph_index, 0, "input", gm)
    for step, p in enumerate(passes, 1):
        gm = p(gm, ctx)
        if dump:
            _dump(dump, ctx.graph_index, step, p.__name__, gm)
    return gm
