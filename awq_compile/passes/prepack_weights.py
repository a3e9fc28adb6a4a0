"""Transformation 3: repack the example weights now, at compile time, so the first call pays nothing.

Reads the analysis only (the source tensors and the verified digests); the graph is returned as it is.
Later instances that share the compiled graph are repacked on their first call (the op's cache).
Each unit is prepared in the layout of the plan its op will run for those tensors' device (the op's own
``plan_for_call``, which also reserves the plan's workspaces outside any CUDA-graph capture).
With ``reuse_weight_memory`` the example weights are rewritten in place into the standard layout
(no second copy; the user's buffers then hold standard-layout bits, so their eager forward is no
longer valid -- which is why it is opt-in).  Instances first seen at run time get a separate copy.

:func:`weight_units` says what each launch of the rewritten graph reads -- one layer's tensors, or a
merged group's parts -- so this pass and the backend's CUDA-graph weight check prepare the same thing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from ..runtime.weights import WeightCache, weight_cache
from .records import Analysis, log
from .select_kernels import problem_of

__all__ = ["WeightUnit", "weight_units", "prepack_weights"]


@dataclasses.dataclass(frozen=True)
class WeightUnit:
    """The weight tensors (as graph nodes) one launch reads, and how the cache prepares them."""

    name: str
    fmt: str
    parts: tuple          # per part: (qweight, qzeros, scales) nodes
    aux: tuple = ()
    aux_digest: str = ""
    merged: bool = False
    request: str = ""                 # the op's plan argument (runtime.planning.PlanRequest, encoded)
    problem: Any = None               # the op's Problem for the example (kernels.problem.Problem)

    def nodes(self) -> list:
        return [n for p in self.parts for n in p if n is not None] + list(self.aux)

    def prepare(self, cache: WeightCache, value_of: Callable, reuse: bool) -> None:
        def v(n):
            return None if n is None else value_of(n)

        layout = "standard"
        if self.request and self.problem is not None:
            from ..runtime.op import plan_for_call

            q0 = v(self.parts[0][0])
            layout = plan_for_call(self.request, self.name, q0.device.type, q0.device.index, self.problem).layout
        if self.merged:
            cache.get_merged(self.fmt, [tuple(v(n) for n in p) for p in self.parts], layer=self.name, layout=layout)
        else:
            q, z, s = self.parts[0]
            cache.get(self.fmt, v(q), v(z), v(s), [v(a) for a in self.aux], aux_digest=self.aux_digest,
                      layer=self.name, reuse=reuse, layout=layout)


def weight_units(analysis: Analysis) -> list[WeightUnit]:
    grouped = {i for g in analysis.groups for i in g.members}
    units = []
    for i, layer in enumerate(analysis.layers):
        if i not in grouped:
            m = layer.match
            units.append(WeightUnit(m.name, m.fmt, ((m.qweight, m.qzeros, m.scales),), tuple(m.aux),
                                    m.aux_digest, request=layer.request, problem=problem_of(m)))
    for g in analysis.groups:
        ms = [analysis.layers[i].match for i in g.members]
        units.append(WeightUnit(g.name, ms[0].fmt, tuple((m.qweight, m.qzeros, m.scales) for m in ms),
                                merged=True, request=analysis.layers[g.members[0]].request,
                                problem=dataclasses.replace(problem_of(ms[0]), N=g.N)))
    return units


def prepack_weights(gm: torch.fx.GraphModule, analysis: Analysis) -> torch.fx.GraphModule:
    if not analysis.options.prepack or not analysis.layers:
        return gm
    cache = weight_cache()
    values = analysis.bindings.values
    units = weight_units(analysis)
    for unit in units:
        unit.prepare(cache, values.__getitem__, analysis.options.reuse_weight_memory)
    log.debug("prepacked %d layer(s) in %d launch(es); cache holds %d entries", len(analysis.layers), len(units),
              len(cache))
    return gm
