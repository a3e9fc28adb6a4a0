"""Pass 6: drop the dequantisation nodes nothing uses any more (side-effecting nodes stay)."""

from __future__ import annotations

import torch

from .context import PassContext


def eliminate_dead_code(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    if ctx.options.analysis_only:
        return gm
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm
