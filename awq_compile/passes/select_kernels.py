"""Analysis step 3: the kernel plan (M bucket -> kernel, config) for each match on the target.

Selection is :func:`awq_compile.kernels.registry.select`, a pure function of (problem, target).  The op
re-plans per call for the concrete shape (:mod:`awq_compile.runtime.planning`, cached), so the graph
carries a plan *request*; the plan computed here for the example's shape proves some kernel can run
the layer (else it is left alone, with the reasons) and is what ``explain`` and the log report.
"""

from __future__ import annotations

import torch

from ..kernels.problem import Problem
from ..kernels.registry import NoKernelError
from ..options import Options
from ..report import LayerReport
from ..runtime.planning import PlanRequest, plan_for
from ..target import Target
from .records import PlannedLayer, Skips, log


def example_m(match) -> int | None:
    """M of the example input, for the report only.  Never ``int()`` a symbolic size here: that would
    add a guard and specialise a ``dynamic=True`` graph to this one batch size."""
    val = match.x.meta.get("example_value", match.x.meta.get("val"))
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


def problem_of(m) -> Problem:
    return Problem(m.K, m.N, m.group_size, m.qzeros is not None, str(m.act_dtype).removeprefix("torch."),
                   has_bias=m.bias is not None)


def select_kernels(matches, target: Target, options: Options, graph_index: int = 0) -> tuple[tuple, tuple, tuple]:
    """(planned layers, refusals, layer reports) for ``matches``."""
    request = PlanRequest(target, options.kernel, tuple(options.disabled_kernels))
    skips = Skips(options, graph_index)
    planned, reports = [], []
    for m in matches:
        try:
            plan = plan_for(request, problem_of(m))
        except NoKernelError as e:
            reasons = "; ".join(f"{k}: {r}" for k, r in e.reasons.items())
            skips.add(m.matmul, m.name, f"no kernel can run it on {target}: {reasons}", quantized_looking=True)
            continue
        planned.append(PlannedLayer(match=m, request=request.encode(), plan=plan))
        em = example_m(m)
        entry = plan.entry_for(em if em is not None else 1)
        buckets = {rng: e.kernel for rng, e in plan.buckets()}
        reports.append(LayerReport(
            name=m.name, in_features=m.K, out_features=m.N, group_size=m.group_size, format=m.fmt,
            kernel=entry.kernel, kernels=buckets, rejected=dict(plan.rejected), exact=m.exact,
            graph=graph_index, node=m.matmul.name, configs={rng: e.label() for rng, e in plan.buckets()},
            layout=plan.layout, layout_note=plan.layout_note))
        log.info("rewrote %s: %s [%d -> %d] g%d on %s: %s", m.name, m.fmt, m.K, m.N, m.group_size, target,
                 plan.describe())
    return tuple(planned), tuple(skips.items), tuple(reports)
