"""``awq_compile.explain(model, *args)``: what the backend would find and choose, without changing the model.

The model runs once under Dynamo with a backend that runs the analysis alone
(:func:`awq_compile.passes.analyze`: find, verify, plan, exactly as a real compile does) and returns the
graph as captured: nothing is rewritten or repacked.  The records are gathered into a
:class:`~awq_compile.report.Report`.
"""

from __future__ import annotations

from .report import Report

__all__ = ["explain", "report_of"]


def report_of(report: Report, analysis) -> Report:
    """Add one graph's analysis to ``report``."""
    report.target = analysis.target
    report.graphs += 1
    report.layers.extend(analysis.reports)
    report.skipped.extend(analysis.skipped)
    report.merged.extend(analysis.merge_reports)
    return report


def explain(model, *args, target=None, options: dict | None = None, **kwargs) -> Report:
    """Run ``model(*args, **kwargs)`` once under Dynamo with the analysis alone.

    ``target`` (e.g. ``"hip:gfx942"``) asks what would be chosen for that hardware; by default the
    target is detected from the weights' device, as in a real compile.  The model is not modified.
    """
    import torch

    from .backend import analyze_graph
    from .options import Options
    from . import _torch_logs

    _torch_logs.register()
    report = Report()
    opts = dict(options or {})
    if target is not None:
        opts["target"] = target
    resolved = Options.resolve(opts)

    def backend(gm, example_inputs):
        report_of(report, analyze_graph(gm, example_inputs, resolved))
        return gm.forward

    # A fresh backend callable recompiles the model's frames; lift the recompile limit so repeated
    # explains of one model never fall back to eager (which would report nothing).
    with torch._dynamo.config.patch(recompile_limit=10_000, accumulated_recompile_limit=100_000), \
            torch.no_grad():
        torch.compile(model, backend=backend)(*args, **kwargs)
    return report
