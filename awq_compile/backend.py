"""The ``awq`` torch.compile backend.

``torch.compile(model, backend="awq", options={...})`` reaches :func:`awq_backend` through the
``torch_dynamo_backends`` entry point.  It resolves the options and the target once, runs the pass
pipeline (:mod:`awq_compile.passes`) over Dynamo's graph, and hands the result to Inductor
(``compile_fx``), which compiles everything around our custom op as usual.
"""

from __future__ import annotations

import itertools
import logging

import torch

from .options import Options
from .passes import PassContext, run_passes
from .target import Target, detect
from . import _torch_logs

__all__ = ["awq_backend"]

log = logging.getLogger("awq_compile")
_GRAPH_COUNTER = itertools.count()


def _target_from_inputs(example_inputs) -> Target:
    for t in example_inputs:
        if isinstance(t, torch.Tensor) and t.device.type != "cpu":
            return detect(t.device)
    return Target("cpu")


def awq_backend(gm: torch.fx.GraphModule, example_inputs, *, options=None, mode: str | None = None, **unused):
    """Dynamo backend: find AWQ linears, rewrite them to our op, then compile the rest with Inductor."""
    _torch_logs.register()
    if unused:
        raise TypeError(f"awq backend: unexpected arguments {sorted(unused)}")
    opts = Options.resolve(options)
    target = opts.target or _target_from_inputs(example_inputs)
    ctx = PassContext(options=opts, target=target, graph_index=next(_GRAPH_COUNTER),
                      example_inputs=list(example_inputs))
    gm = run_passes(gm, ctx)
    sink = opts.report_sink
    if sink is not None:
        sink.target = target
        sink.graphs += 1
        for r in ctx.layers:
            r.graph = ctx.graph_index
        for s in ctx.skipped:
            s.graph = ctx.graph_index
        sink.layers.extend(ctx.layers)
        sink.skipped.extend(ctx.skipped)
    log.debug("graph %d on %s: %d layer(s) rewritten, %d left alone", ctx.graph_index, target,
              len(ctx.layers), len(ctx.skipped))
    if opts.analysis_only or not opts.inductor:
        return gm.forward
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    mode = mode or opts.mode
    patches = list_mode_options(mode) if mode else {}
    return compile_fx(gm, example_inputs, config_patches=patches)
