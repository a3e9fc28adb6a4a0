"""Transformation 2: repack the example weights now, at compile time, so the first call pays nothing.

Reads the analysis only (the source tensors and the verified digests); the graph is returned as it is.
Later instances that share the compiled graph are repacked on their first call (the op's cache).
With ``reuse_weight_memory`` the example weights are rewritten in place into the standard layout
(no second copy; the user's buffers then hold standard-layout bits, so their eager forward is no
longer valid -- which is why it is opt-in).  Instances first seen at run time get a separate copy.
"""

from __future__ import annotations

import torch

from ..runtime.weights import weight_cache
from .records import Analysis, log


def prepack_weights(gm: torch.fx.GraphModule, analysis: Analysis) -> torch.fx.GraphModule:
    if not analysis.options.prepack or not analysis.layers:
        return gm
    cache = weight_cache()
    v = analysis.bindings.values
    for m in analysis.matches:
        cache.get(m.fmt, v[m.qweight], v.get(m.qzeros) if m.qzeros is not None else None, v[m.scales],
                  [v[a] for a in m.aux], aux_digest=m.aux_digest, layer=m.name,
                  reuse=analysis.options.reuse_weight_memory)
    log.debug("prepacked %d layer(s); cache holds %d entries", len(analysis.layers), len(cache))
    return gm
