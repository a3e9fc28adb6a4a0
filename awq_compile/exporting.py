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
    paths: dict = dataclasses.field(default_factory=dict)   # layer -> "triton_op: M 1..4: ..." or
                                             # "custom_op (calls into Python at run time): <why>"

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


def _m_range(ep, x_node) -> tuple[int, int | None]:
    """(lowest, highest or None) M = product of x's leading sizes over the program's shape range."""
    val = x_node.meta.get("val")
    expr = 1
    for d in val.shape[:-1]:
        expr = expr * d
    if not isinstance(expr, torch.SymInt):
        return int(expr), int(expr)
    from torch.utils._sympy.value_ranges import bound_sympy

    vr = bound_sympy(expr.node.expr, ep.range_constraints)

    def as_int(v):
        try:
            return int(v)
        except (TypeError, ValueError, AttributeError, OverflowError):
            return None

    return as_int(vr.lower) or 0, as_int(vr.upper)


def _branches(plan, lo: int, hi: int | None, target) -> tuple:
    """The plan's entries whose M buckets meet [lo, hi], as one-entry plans (ascending M)."""
    from .passes.rewrite_triton_op import Branch
    from .runtime.triton_op import single_entry_plan

    out, start = [], 1
    for e in plan.entries:
        end = e.m_max
        meets = (end is None or end >= lo) and (hi is None or start <= hi)
        if meets:
            out.append(Branch(end, single_entry_plan(e, target)))
        start = (end or 0) + 1
    if out:   # the last branch serves every larger M
        out[-1] = dataclasses.replace(out[-1], m_max=None)
    return tuple(out)


def _input_specs(ep) -> dict:
    return {getattr(spec.arg, "name", None): spec for spec in ep.graph_signature.input_specs}


def _triton_path_refusal(ep, analysis, index, specs, shared_users) -> str | None:
    """None if layer ``index`` can take the triton_op path, else why not."""
    m = analysis.layers[index].match
    for role, node in (("qweight", m.qweight), ("qzeros", m.qzeros), ("scales", m.scales)):
        if node is None:
            continue
        if node.op != "placeholder" or node.name not in specs or node.graph is not ep.graph_module.graph:
            return f"its {role} is not a parameter, buffer or constant of the program"
        if role != "scales" and not shared_users(node):
            return (f"its {role} is also read outside the dequantisation; repacking it in place would change "
                    "that reader")
    if analysis.target.triton_support() is not None:
        return analysis.target.triton_support()
    return None


def _replace_constant(ep, node, value: torch.Tensor, suffix: str) -> str:
    """Point placeholder ``node`` at ``value`` under a new name (``<target>_<suffix>``), dropping the
    source tensor from the program: no second copy, and no old name that now means another layout."""
    from torch.export.graph_signature import InputKind, InputSpec

    specs = ep.graph_signature.input_specs
    i = next(i for i, s in enumerate(specs) if getattr(s.arg, "name", None) == node.name)
    spec = specs[i]
    new_target = f"{spec.target}_{suffix}"
    others = [s for j, s in enumerate(specs) if j != i and s.target == spec.target]
    if spec.kind == InputKind.CONSTANT_TENSOR or spec.target not in ep.state_dict:
        if not others:
            ep.constants.pop(spec.target, None)
        ep.constants[new_target] = value
    else:
        if not others:
            del ep.state_dict[spec.target]
        ep.state_dict[new_target] = (torch.nn.Parameter(value, requires_grad=False)
                                     if spec.kind == InputKind.PARAMETER else value)
    specs[i] = InputSpec(kind=spec.kind, arg=spec.arg, target=new_target, persistent=spec.persistent)
    fake = node.meta["val"]
    node.meta["val"] = fake.fake_mode.from_tensor(value, static_shapes=True)
    return new_target


def _prepack(ep, analysis, indices) -> dict:
    """Convert each triton-path layer's qweight / qzeros to the standard layout in the program's constants
    (:func:`awq_compile.formats.convert`, once per source tensor); returns {source node: new name}."""
    from .formats.convert import convert
    from .formats.packed import Packed

    values, _ = _example_inputs(ep)
    by_node = dict(zip((n for n in ep.graph_module.graph.nodes if n.op == "placeholder"), values))
    done: dict = {}
    for i in indices:
        m = analysis.layers[i].match
        if m.qweight in done:
            continue
        src = Packed(m.fmt, by_node[m.qweight], None if m.qzeros is None else by_node[m.qzeros],
                     by_node[m.scales], m.group_size)
        with torch.no_grad():
            std = convert(src, "standard")
        for node, old, new in ((m.qweight, src.qweight, std.qweight), (m.qzeros, src.qzeros, std.qzeros)):
            if node is None or new is None:
                continue
            if new is old:       # a K-packed source that is already the standard layout: shared as it is
                done[node] = ""
                continue
            done[node] = _replace_constant(ep, node, new.contiguous(), "awq_standard")
        if m.qzeros is not None and std.qzeros is None:
            raise ValueError(f"layer '{m.name}': {m.fmt} zeros vanished in the standard layout")
    return done


def rewrite_exported(ep, options: dict | None = None) -> tuple["torch.export.ExportedProgram", Report]:
    """Apply the rewrite to an ExportedProgram's graph, in place; returns it and the report.

    GPU targets (``cuda:*``, ``hip:*``): the weights are repacked into the program's constants and each
    layer becomes ``w4a16_linear_triton`` calls (one per M bucket the program's M range meets, behind a
    ``torch.cond`` on M); a layer that cannot (:func:`_triton_path_refusal`) keeps the opaque op, with its
    reason in :attr:`ExportResult.paths` and a warning.  CPU: the opaque op for every layer."""
    ep, report, _ = _rewrite(ep, options)
    return ep, report


def _rewrite(ep, options):
    from .backend import analyze_graph
    from .explaining import report_of
    from .passes import run_passes
    from .passes.eliminate_dead_code import _asserts_metadata_of, eliminate_dead_code
    from .passes.rewrite_awq_linears import rewrite_awq_linears
    from .passes.rewrite_triton_op import rewrite_triton_op

    gm = ep.graph_module
    values, weights = _example_inputs(ep)
    analysis = analyze_graph(gm, values, Options.resolve(options), static_names=weights)
    target = analysis.target
    paths: dict = {}
    triton: dict = {}
    if target.backend in ("cuda", "hip"):
        specs = _input_specs(ep)
        dequant = {n for lay in analysis.layers for n in lay.match.weight_nodes}

        def shared_users(node):
            return all(u in dequant or _asserts_metadata_of(u, node) for u in node.users)

        refused = {}
        for i in range(len(analysis.layers)):
            why = _triton_path_refusal(ep, analysis, i, specs, shared_users)
            if why is not None:
                refused[i] = why
        # a weight tensor read by a layer that keeps the opaque op (tied weights) stays in its source layout
        held = {n for i in refused for n in _weight_nodes(analysis.layers[i].match)}
        for i, lay in enumerate(analysis.layers):
            if i not in refused and held & set(_weight_nodes(lay.match)):
                refused[i] = "it shares its weights with a layer that keeps the opaque custom op"
        for i, lay in enumerate(analysis.layers):
            if i in refused:
                paths[lay.match.name] = f"custom_op (calls into Python at run time): {refused[i]}"
                log.warning("awq_compile.export: layer '%s' keeps the opaque custom op: %s", lay.match.name,
                            refused[i])
                continue
            lo, hi = _m_range(ep, lay.match.x)
            triton[i] = _branches(lay.plan, lo, hi, target)
            paths[lay.match.name] = "triton_op: " + _describe(triton[i], lo, hi)
        _prepack(ep, analysis, sorted(triton))
    else:
        for lay in analysis.layers:
            paths[lay.match.name] = f"custom_op (calls into Python at run time): target {target} runs the CPU path"
    keep = [i for i in range(len(analysis.layers)) if i not in triton]

    replaced: dict = {}     # matmul erased by the triton_op rewrite -> its replacement (a later layer's input)

    def opaque(gm_, a):
        if not keep:
            return gm_
        layers = []
        for i in keep:
            m = a.layers[i].match
            m = dataclasses.replace(m, x=replaced.get(m.x, m.x), bias=replaced.get(m.bias, m.bias))
            layers.append(dataclasses.replace(a.layers[i], match=m))
        return rewrite_awq_linears(gm_, dataclasses.replace(a, layers=tuple(layers)))

    opaque.__name__ = "rewrite_awq_linears"

    def triton_op(gm_, a):
        return rewrite_triton_op(gm_, a, triton, replaced=replaced) if triton else gm_

    triton_op.__name__ = "rewrite_triton_op"
    # no prepack for the opaque op: the weights this process would repack are not the serving process's
    run_passes(gm, analysis, passes=(triton_op, opaque, eliminate_dead_code))
    return ep, report_of(Report(), analysis), paths


def _weight_nodes(m) -> list:
    return [n for n in (m.qweight, m.qzeros) if n is not None]


def _describe(branches, lo: int, hi: int | None) -> str:
    """``M 1..4: triton_gemv 1x256x32 sk32 w2 st1; M 5..4096: ...`` for the branches of one layer over
    the program's M range [lo, hi]."""
    from .kernels.registry import Plan

    parts, start = [], max(lo, 1)
    for b in branches:
        label = Plan.decode(b.plan).entries[0].label()
        end = b.m_max if b.m_max is not None else hi
        parts.append(f"M {start}..{'inf' if end is None else end}: {label}")
        start = (b.m_max or 0) + 1
    return "; ".join(parts)


_TORCH = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])


def export(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, *, package_path: str | None = None,
           options: dict | None = None, dynamic_shapes=None, package: bool = True,
           inductor_configs: dict | None = None) -> ExportResult:
    """Export ``model`` with AWQ linears rewritten to our op and package it with AOTInductor.

    ``options`` are the backend's (``target``, ``kernel``, ``disabled_kernels``, ``strict``...);
    ``dynamic_shapes`` goes to ``torch.export.export`` (e.g. ``{"x": {0: torch.export.Dim("M")}}`` so the
    package serves every M).  With ``package=False`` only the rewritten ExportedProgram is returned.
    """
    seconds = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        ep = torch.export.export(model, tuple(args), kwargs, dynamic_shapes=dynamic_shapes)
        ep = ep.run_decompositions()
    seconds["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        ep, report, paths = _rewrite(ep, options)
    seconds["rewrite"] = time.perf_counter() - t0
    log.info("export: %d AWQ layer(s) rewritten, %d matmul(s) left alone", len(report.layers), len(report.skipped))
    opaque = [name for name, path in paths.items() if path.startswith("custom_op")]
    if package and opaque and _TORCH < (2, 13):
        raise RuntimeError(
            f"awq_compile.export: torch {torch.__version__}: {len(opaque)} layer(s) keep the opaque custom op "
            f"({', '.join(opaque[:4])}{'...' if len(opaque) > 4 else ''}: {paths[opaque[0]]}); loading an "
            "AOTInductor package that calls it through the proxy executor crashed the process (segmentation "
            "fault in aoti_load_package, torch 2.11, 2026-12-01); packaging such a program needs torch >= 2.13. "
            "Use package=False for the rewritten ExportedProgram, or a GPU target (the triton_op path)")
    path = None
    if package:
        t0 = time.perf_counter()
        path = torch._inductor.aoti_compile_and_package(ep, package_path=package_path,
                                                        inductor_configs=inductor_configs)
        seconds["aoti"] = time.perf_counter() - t0
    return ExportResult(program=ep, package_path=path, report=report, seconds=seconds, paths=paths)
