"""The explain report: ``awq_compile.explain(model, *args)``: what the backend would find and choose, without changing the model.

The report lists every AWQ layer found (module path, shape, group size, layout, the kernel chosen per
M bucket and why the others were not) and every candidate matmul left alone, with the reason.  It runs
the model once through Dynamo with the backend in analysis mode: the passes find, verify and select as
in a real compile, but nothing is rewritten or repacked and the graph runs as captured.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["explain", "Report", "LayerReport", "SkipReport"]


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


@dataclasses.dataclass
class SkipReport:
    name: str
    node: str
    reason: str
    graph: int = 0


@dataclasses.dataclass
class Report:
    target: Any = None
    layers: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
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


def explain(model, *args, target=None, options: dict | None = None, **kwargs) -> Report:
    """Run ``model(*args, **kwargs)`` once under Dynamo with the backend in analysis mode.

    ``target`` (e.g. ``"hip:gfx942"``) asks what would be chosen for that hardware; by default the
    target is detected from the weights' device, as in a real compile.  The model is not modified.
    """
    import torch

    from .backend import awq_backend

    report = Report()
    opts = dict(options or {})
    opts.update(analysis_only=True, inductor=False, report_sink=report)
    if target is not None:
        opts["target"] = target

    def backend(gm, example_inputs):
        return awq_backend(gm, example_inputs, options=opts)

    # A fresh backend callable recompiles the model's frames; lift the recompile limit so repeated
    # explains of one model never fall back to eager (which would report nothing).
    with torch._dynamo.config.patch(recompile_limit=10_000, accumulated_recompile_limit=100_000), \
            torch.no_grad():
        torch.compile(model, backend=backend)(*args, **kwargs)
    return report
