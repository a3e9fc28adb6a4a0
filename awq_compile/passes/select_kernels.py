"""Pass 3: choose the kernel plan (M bucket -> kernel, config) for each match on the target.

Selection is :func:`awq_compile.kernels.registry.select`, a pure function of (problem, target): this
pass only builds the problem and records the outcome for ``explain`` and the log.
"""

from __future__ import annotations

import torch

from ..report import LayerReport
from ..kernels.problem import Problem
from ..kernels.registry import NoKernelError, select
from .context import PassContext, log


def _example_m(match) -> int | None:
    """M of the example input, for the report only.  Never ``int()`` a symbolic size here: that would
    add a guard and specialise a ``dynamic=True`` graph to this one batch size."""
    val = match.x.meta.get("example_value")
    if isinstance(val, torch.Tensor) and val.dim() >= 1:
        m = 1
        for d in val.shape[:-1]:
            if isinstance(d, torch.SymInt):
                hint = getattr(d.node, "hint", None)
                if not isinstance(hint, int):
                    return None
                d = hint
            m *= int(d)
        return m
    return None


def select_kernels(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    kept = []
    for m in ctx.matches:
        problem = Problem(m.K, m.N, m.group_size, m.qzeros is not None,
                          str(m.act_dtype).removeprefix("torch."), has_bias=m.bias is not None)
        try:
            m.plan = select(problem, ctx.target, force=ctx.options.kernel, disabled=ctx.options.disabled_kernels)
        except NoKernelError as e:
            reasons = "; ".join(f"{k}: {r}" for k, r in e.reasons.items())
            ctx.skip(m.matmul, m.name, f"no kernel can run it on {ctx.target}: {reasons}", quantized_looking=True)
            continue
        kept.append(m)
        em = _example_m(m)
        entry = m.plan.entry_for(em if em is not None else 1)
        buckets = {rng: e.kernel for rng, e in m.plan.buckets()}
        ctx.layers.append(LayerReport(
            name=m.name, in_features=m.K, out_features=m.N, group_size=m.group_size, format=m.fmt,
            kernel=entry.kernel, kernels=buckets, rejected=dict(m.plan.rejected), exact=m.exact,
            graph=ctx.graph_index, node=m.matmul.name, configs={rng: e.label() for rng, e in m.plan.buckets()}))
        log.info("rewrote %s: %s [%d -> %d] g%d on %s: %s", m.name, m.fmt, m.K, m.N, m.group_size, ctx.target,
                 m.plan.describe())
    ctx.matches = kept
    return gm
