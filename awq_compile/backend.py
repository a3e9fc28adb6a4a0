"""The ``awq`` torch.compile backend.

``torch.compile(model, backend="awq", options={...})`` reaches :func:`awq_backend` through the
``torch_dynamo_backends`` entry point.  It resolves the options and the target once, runs the analysis
and then the transformations (:mod:`awq_compile.passes`) over Dynamo's graph, and hands the result to
Inductor (``compile_fx``), which compiles everything around our custom op as usual.
"""

from __future__ import annotations

import itertools
import logging

import torch

from .options import Options
from .passes import Analysis, analyze, run_passes
from .target import Target, detect
from . import _torch_logs

__all__ = ["awq_backend", "analyze_graph"]

log = logging.getLogger("awq_compile")
_GRAPH_COUNTER = itertools.count()


def _target_from_inputs(example_inputs) -> Target:
    for t in example_inputs:
        if isinstance(t, torch.Tensor) and t.device.type != "cpu":
            return detect(t.device)
    return Target("cpu")


def analyze_graph(gm: torch.fx.GraphModule, example_inputs, options=None, **kw) -> Analysis:
    """The analysis of one graph with resolved options and target (what ``explain`` runs alone)."""
    opts = options if isinstance(options, Options) else Options.resolve(options)
    target = opts.target or _target_from_inputs(example_inputs)
    return analyze(gm, example_inputs, options=opts, target=target, graph_index=next(_GRAPH_COUNTER), **kw)


def awq_backend(gm: torch.fx.GraphModule, example_inputs, *, options=None, mode: str | None = None,
                on_analysis=None, **unused):
    """Dynamo backend: find AWQ linears, rewrite them to our op, then compile the rest with Inductor.

    ``on_analysis``: called with each graph's :class:`~awq_compile.passes.Analysis` (e.g.
    ``lambda a: awq_compile.explaining.report_of(report, a)`` to collect an explain report of a real
    compile)."""
    _torch_logs.register()
    if unused:
        raise TypeError(f"awq backend: unexpected arguments {sorted(unused)}")
    analysis = analyze_graph(gm, example_inputs, Options.resolve(options))
    if on_analysis is not None:
        on_analysis(analysis)
    gm = run_passes(gm, analysis)
    opts = analysis.options
    log.debug("graph %d on %s: %d layer(s) rewritten, %d left alone", analysis.graph_index, analysis.target,
              len(analysis.layers), len(analysis.skipped))
    if not opts.inductor:
        return gm.forward
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    mode = mode or opts.mode
    patches = list_mode_options(mode) if mode else {}
    compiled = compile_fx(gm, example_inputs, config_patches=patches)
    from torch._inductor import config as inductor_config

    cudagraphs = patches.get("triton.cudagraphs", inductor_config.triton.cudagraphs)
    return _with_weight_check(compiled, gm, analysis) if analysis.layers and cudagraphs else compiled


def _with_weight_check(compiled, gm, analysis: Analysis):
    """Repack the weights a call brings before the compiled code runs.

    Dynamo reuses this graph for other module instances.  Under CUDA graphs (``reduce-overhead``)
    Inductor records such a call without an eager warm-up, and a repack inside the capture would have to
    allocate from the graph's private pool; so new or modified weight tensors are found here, outside
    Inductor's wrapper, with a cheap identity + version comparison against the previous call.
    """
    from .passes.prepack_weights import weight_units
    from .runtime.weights import watch_signature, weight_cache

    index = {n: i for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")}
    constants = analysis.bindings.values  # get_attr weights: constants of this graph, prepacked already
    units = weight_units(analysis)
    watched = sorted({index[n] for u in units for n in u.nodes() if n in index})
    if not watched:
        return compiled
    last: list = [None]
    reuse = analysis.options.reuse_weight_memory

    def ensure(args):
        sig = watch_signature([args[i] for i in watched])
        if sig != last[0]:
            cache = weight_cache()
            for unit in units:
                unit.prepare(cache, lambda n: args[index[n]] if n in index else constants[n], reuse)
            last[0] = sig

    def run(*args):  # Dynamo calls the backend's result with the graph's inputs as positional arguments
        ensure(args)
        return compiled(*args)

    return run
