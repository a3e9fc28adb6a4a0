"""The ``awq`` torch.compile backend.

``torch.compile(model, backend="awq", options={...})`` reaches :func:`awq_backend` through the
``torch_dynamo_backends`` entry point.  It resolves the options and the target once, runs the analysis
and then the transformations (:mod:`awq_compile.passes`) over Dynamo's graph, and hands the result to
Inductor (``compile_fx``), which compiles everything around our custom op as usual.
"""

from __future__ import annotations

import contextlib
import itertools
import logging

import torch

from .options import Options
from .passes import Analysis, analyze, run_passes
from .target import Target, detect
from . import _torch_logs

__all__ = ["awq_backend", "analyze_graph", "shape_generic"]

log = logging.getLogger("awq_compile")
_GRAPH_COUNTER = itertools.count()


@contextlib.contextmanager
def shape_generic():
    """Context manager (or decorator) around the *calls* of a compiled model whose layers of many shapes
    share one forward (a graph break per layer, AutoAWQ / GPTQModel style, per-layer compiles)::

        compiled = torch.compile(model, backend="awq")
        with awq_compile.shape_generic():
            compiled(x)

    By default Dynamo gives parameters and buffers static shapes, specialises integer attributes of
    modules (``in_features``, ``group_size``) and assumes equal sizes stay equal ("duck sizing"), so
    every layer shape is a new graph, and past ``recompile_limit`` (8) graphs Dynamo runs the frame
    eagerly: the slow dequant path.  Under this patch the sizes that differ become symbolic; our
    rewrite and op are shape-generic (the kernel plan is chosen per call), so a forward shared by any
    number of layer shapes compiles about twice: once static, once symbolic (``dynamic=True``: once).
    A size of 1 (M = 1, one scale row) is still specialised by Dynamo: one more graph.
    """
    import torch._dynamo
    import torch.fx.experimental._config as fx_config

    with torch._dynamo.config.patch(force_parameter_static_shapes=False, allow_unspec_int_on_nn_module=True), \
            fx_config.patch(use_duck_shape=False):
        yield


class _FallbackWatch(logging.Filter):
    """Turns Dynamo's "hit config.recompile_limit" warning into one of ours, once per function."""

    def __init__(self):
        super().__init__()
        self.active = False
        self.seen: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.active and "hit config." in str(record.msg) and isinstance(record.args, tuple) \
                and len(record.args) >= 3 and "recompile_limit" in str(record.args[0]):
            func = str(record.args[2])
            if func not in self.seen:
                self.seen.add(func)
                log.warning(
                    "Dynamo stopped compiling %s after %s graphs (config.%s) and runs it eagerly from now "
                    "on: AWQ layers there take the slow dequant path, not our kernels. Layers of many "
                    "shapes sharing one forward: call the compiled model under awq_compile.shape_generic() "
                    "(symbolic layer sizes, about two graphs for any number of shapes); otherwise raise "
                    "torch._dynamo.config.recompile_limit. Last reason: %s",
                    func, record.args[1], record.args[0], record.args[3] if len(record.args) > 3 else "?")
        return True


_FALLBACK_WATCH = _FallbackWatch()


def _watch_for_eager_fallback() -> None:
    if not _FALLBACK_WATCH.active:
        logging.getLogger("torch._dynamo.convert_frame").addFilter(_FALLBACK_WATCH)
        _FALLBACK_WATCH.active = True


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
    if analysis.layers:
        _watch_for_eager_fallback()
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
    outer = analysis.bindings.outermost  # a grad-mode region's placeholder -> the graph's own input
    constants = analysis.bindings.values  # get_attr weights: constants of this graph, prepacked already
    units = weight_units(analysis)
    watched = sorted({index[outer(n)] for u in units for n in u.nodes() if outer(n) in index})
    if not watched:
        return compiled
    last: list = [None]
    reuse = analysis.options.reuse_weight_memory

    def ensure(args):
        sig = watch_signature([args[i] for i in watched])
        if sig != last[0]:
            cache = weight_cache()
            for unit in units:
                unit.prepare(cache, lambda n: args[index[outer(n)]] if outer(n) in index else constants[n], reuse)
            last[0] = sig

    def run(*args):  # Dynamo calls the backend's result with the graph's inputs as positional arguments
        ensure(args)
        return compiled(*args)

    return run
