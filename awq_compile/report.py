"""The explain report's plain records: what the analysis found per layer, what it left alone, and why.

The report lists every AWQ layer found (module path, shape, group size, layout, the kernel chosen per
M bucket and why the others were not) and every candidate matmul left alone, with the reason.  The
passes build these records; the driver that runs a model to collect them is :mod:`awq_compile.explaining`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Report", "LayerReport", "SkipReport", "MergeReport"]


@dataclasses.dataclass
class LayerReport:
    name: str
    in_features: int
    out_features: int
    group_size: int
    format: str
    kernel: str                      # kernel for the M seen while explaining
    kernels: dict                    # "M lo..hi" -> kernel id, the whole plan
    rejected: dict                   # kernel id -> reason it is not used
    exact: bool = True               # bit-exact verification (else equal within rounding)
    graph: int = 0
    node: str = ""
    configs: dict = dataclasses.field(default_factory=dict)   # "M lo..hi" -> kernel with its config
    layout: str = "standard"         # the packed layout the weight is prepared in (Plan.layout)
    layout_note: str = ""            # how it was decided (why standard where the table asked for kplanes)


@dataclasses.dataclass
class SkipReport:
    name: str
    node: str
    reason: str
    graph: int = 0


@dataclasses.dataclass
class MergeReport:
    """Layers that read one input and run as one launch over their concatenated N."""

    name: str                        # "layers.0.self_attn.q_proj+k_proj+v_proj"
    parts: tuple                     # the member layers' names, in order
    in_features: int
    out_features: int                # the sum of the parts' N
    kernel: str                      # kernel for the M seen while explaining
    kernels: dict                    # "M lo..hi" -> kernel id, the whole plan of the merged problem
    graph: int = 0
    layout: str = "standard"


@dataclasses.dataclass
class Report:
    target: Any = None
    layers: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    merged: list = dataclasses.field(default_factory=list)
    graphs: int = 0

    def __str__(self) -> str:
        lines = [f"awq_compile explain -- target {self.target}, {self.graphs} graph(s), "
                 f"{len(self.layers)} AWQ layer(s), {len(self.skipped)} matmul(s) left alone"]
        if self.layers:
            rows = [("layer", "K", "N", "G", "format", "kernel", "plan (M: kernel config)")]
            for lay in self.layers:
                plan = ", ".join(f"{m}: {lay.configs.get(m, k)}" for m, k in lay.kernels.items())
                rows.append((lay.name, str(lay.in_features), str(lay.out_features), str(lay.group_size),
                             lay.format + ("" if lay.exact else "~"), lay.kernel, plan))
            lines += _table(rows)
            rejected = {}
            for lay in self.layers:
                for k, why in lay.rejected.items():
                    rejected.setdefault((k, why), []).append(lay.name)
            if rejected:
                lines.append("not chosen:")
                for (k, why), names in rejected.items():
                    who = names[0] if len(names) == 1 else f"{len(names)} layers"
                    lines.append(f"  {k} ({who}): {why}")
            notes = {}
            for lay in self.layers:
                if lay.layout_note:
                    notes.setdefault(lay.layout_note, []).append(lay.name)
            if notes:
                # only where a table asked for a layout other than standard: one line per decision
                lines.append("weight layout (one packed copy per layer):")
                for why, names in notes.items():
                    who = names[0] if len(names) == 1 else f"{len(names)} layers"
                    lines.append(f"  {who}: {why}")
            if self.merged:
                lines.append("merged (one launch each, outputs split as views):")
                for g in self.merged:
                    plan = ", ".join(f"{m}: {k}" for m, k in g.kernels.items())
                    weights = "" if g.layout == "standard" else f" ({g.layout} weights)"
                    lines.append(f"  {g.name} [{g.in_features} -> {g.out_features}]{weights}: {g.kernel}; plan {plan}")
            if any(not lay.exact for lay in self.layers):
                lines.append("~ verified equal within floating-point rounding (the graph rounds differently)")
        if self.skipped:
            lines.append("left alone:")
            for s in self.skipped:
                lines.append(f"  {s.name} [{s.node}]: {s.reason}")
        return "\n".join(lines)

    __repr__ = __str__


def _table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    return out
