"""``awq_compile.export(model, args)``: the deployment path -- ``torch.export``, our rewrite, AOTInductor.

::

    path = awq_compile.export(model, (x,), package_path="model.pt2")
    # later, in the serving process:
    import awq_compile                      # registers torch.ops.awq_compile.w4a16_linear
    runner = torch._inductor.aoti_load_package(path)
    y = runner(x)

Steps: ``torch.export.export`` (a ``with torch.no_grad():`` dequant is recorded inside
``wrap_with_set_grad_enabled``), ``run_decompositions()`` to the ATen inference IR (which inlines those
regions), then our analysis on the exported graph -- parameters, buffers and lifted constants are the
weights, named by their qualified names -- and the rewrite + dead-code transformations in place, and
finally ``torch._inductor.aoti_compile_and_package``.

The op reaches the package as a custom op: AOTInductor's generated code calls it through the
dispatcher (its proxy executor), so the serving process must have imported ``awq_compile``; the op then
runs exactly as under ``torch.compile`` (weights repacked on the first call and cached, the kernel
chosen per call for the concrete shape, the CPU path or our Triton kernels on a GPU, launched from
Python).  Compiling our Triton kernels *into* the package (a ``torch.library.triton_op``) is not done:
the kernel launch code is being restructured (issue 10); see docs/architecture.md, "Export".
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch

from .options import Options
from .report import Report

__all__ = ["export", "rewrite_exported", "ExportResult"]

log = logging.getLogger("awq_compile")


@dataclasses.dataclass
class ExportResult:
    program: "torch.export.ExportedProgram"   # the rewritten program (our op in place of the dequant)
    package_path: str | None                 # the AOTInductor package (None with package=False)
    report: Report                           # what was rewritten and what was left alone, and why
    seconds: dict                            # wall time per step: export, rewrite, aoti

    def __fspath__(self) -> str:
        if self.package_path is None:
            raise TypeError("exported with package=False: no package file")
        return self.package_path


def _example_inputs(ep) -> tuple[list, dict]:
    """The exported graph's placeholders' values, in order, and placeholder name -> qualified name of
    the weights (parameters, buffers, lifted constants)."""
    from torch.export.graph_signature import InputKind

    args, kwargs = ep.example_inputs
    user = list(torch.utils._pytree.tree_leaves((args, kwargs)))
    values, weights = [], {}
    for spec in ep.graph_signature.input_specs:
        name = getattr(spec.arg, "name", None)
        if spec.kind == InputKind.USER_INPUT:
            values.append(user.pop(0))
            continue
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            value = ep.state_dict[spec.target] if spec.target in ep.state_dict else ep.constants[spec.target]
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            value = ep.constants[spec.target]
        else:
            value = None
        values.append(value)
        if name is not None and isinstance(value, torch.Tensor):
            weights[name] = spec.target if spec.kind != InputKind.CONSTANT_TENSOR else ""
    return values, weights


def rewrite_exported(ep, options: dict | None = None) -> tuple["torch.export.ExportedProgram", Report]:
    """Apply the rewrite to an ExportedProgram's graph, in place; returns it and the report."""
    from .backend import analyze_graph
    from .explaining import report_of
    from .passes import run_passes
    from .passes.eliminate_dead_code import eliminate_dead_code
    from .passes.rewrite_awq_linears import rewrite_awq_linears

    gm = ep.graph_module
    values, weights = _example_inputs(ep)
    analysis = analyze_graph(gm, values, Options.resolve(options), static_names=weights)
    # no prepack: the weights this process would repack are not the serving process's
    run_passes(gm, analysis, passes=(rewrite_awq_linears, eliminate_dead_code))
    return ep, report_of(Report(), analysis)


_TORCH = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])


def export(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, *, package_path: str | None = None,
           options: dict | None = None, dynamic_shapes=None, package: bool = True,
           inductor_configs: dict | None = None) -> ExportResult:
    """Export ``model`` with AWQ linears rewritten to our op and package it with AOTInductor.

    ``options`` are the backend's (``target``, ``kernel``, ``disabled_kernels``, ``strict``...);
    ``dynamic_shapes`` goes to ``torch.export.export`` (e.g. ``{"x": {0: torch.export.Dim("M")}}`` so the
    package serves every M).  With ``package=False`` only the rewritten ExportedProgram is returned.
    """
    if package and _TORCH < (2, 13):
        raise RuntimeError(
            f"awq_compile.export: torch {torch.__version__}: loading an AOTInductor package that calls our op "
            "crashed the process (segmentation fault in aoti_load_package, torch 2.11, 2026-12-01); packaging "
            "needs torch >= 2.13. Use package=False for the rewritten ExportedProgram")
    seconds = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        ep = torch.export.export(model, tuple(args), kwargs, dynamic_shapes=dynamic_shapes)
        ep = ep.run_decompositions()
    seconds["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ep, report = rewrite_exported(ep, options)
    seconds["rewrite"] = time.perf_counter() - t0
    log.info("export: %d AWQ layer(s) rewritten, %d matmul(s) left alone", len(report.layers), len(report.skipped))
    path = None
    if package:
        t0 = time.perf_counter()
        path = torch._inductor.aoti_compile_and_package(ep, package_path=package_path,
                                                        inductor_configs=inductor_configs)
        seconds["aoti"] = time.perf_counter() - t0
    return ExportResult(program=ep, package_path=path, report=report, seconds=seconds)
