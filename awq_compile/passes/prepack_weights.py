"""Pass 5: repack the example weights now, at compile time, so the first call pays nothing.

Later instances that share the compiled graph are repacked on their first call (the op's cache).
With ``reuse_weight_memory`` the example weights are rewritten in place into the standard layout
(no second copy; the user's buffers then hold standard-layout bits, so their eager forward is no
longer valid -- which is why it is opt-in).  Instances first seen at run time get a separate copy.
"""

from __future__ import annotations

import torch

from ..runtime.weights import weight_cache
from .context import PassContext, log


def prepack_weights(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    if ctx.options.analysis_only or not ctx.options.prepack:
        return gm
    cache = weight_cache()
    for m in ctx.matches:
        v = ctx.values
        cache.get(m.fmt, v[m.qweight], v.get(m.qzeros) if m.qzeros is not None else None, v[m.scales],
                  [v[a] for a in m.aux], aux_digest=m.aux_digest, layer=m.name,
                  reuse=ctx.options.reuse_weight_memory)
    if ctx.matches:
        log.debug("prepacked %d layer(s); cache holds %d entries", len(ctx.matches), len(cache))
    return gm
