"""``awq_compile.export(model, args)``: the deployment path -- ``torch.export``, our rewrite, AOTInductor.

::

    result = awq_compile.export(model, (x,), package_path="model.pt2",
                                dynamic_shapes={"x": {0: torch.export.Dim("M", min=1, max=4096)}})
    print(result.paths)                     # per layer: what the package runs for which M
    # later, in the serving process -- torch alone, no awq_compile needed:
    runner = torch._inductor.aoti_load_package("model.pt2")
    y = runner(x)

Steps: ``torch.export.export`` (a ``with torch.no_grad():`` dequant is recorded inside
``wrap_with_set_grad_enabled``), ``run_decompositions()`` to the ATen inference IR (which inlines those
regions), our analysis on the exported graph -- parameters, buffers and lifted constants are the
weights, named by their qualified names -- then, per layer, by the plan for the target (options
``target``, ``kernel``, ``disabled_kernels``; default: the inputs' device):

* the weights are repacked once, now (:func:`awq_compile.formats.convert`), into new constants of the
  program (``<module>.qweight_awq_standard``, ``..._awq_int4pack``); the source qweight / qzeros and the
  dequant's own constants are dropped when nothing else reads them, so the package holds one copy;
* GPU targets (``cuda:*``, ``hip:*``): ``torch.ops.awq_compile.w4a16_linear_triton``
  (:mod:`awq_compile.runtime.triton_op`), a ``torch.library.triton_op`` whose body launches our Triton
  kernels through ``wrap_triton``: AOTInductor compiles them into the package;
* CPU: bf16 becomes ``aten._weight_int4pack_mm_for_cpu`` on weights repacked for it, other dtypes the
  ``torch_dequant`` entry of the same triton_op (torch ops only);
* the dequant nodes go (dead-code transformation), and ``aoti_compile_and_package`` builds the package.

Dynamic M: the plan is M-bucketed, but a branch on a symbolic M inside the op would put a guard on M,
which ``torch.export`` refuses.  The rewrite reads the program's M range (the ``Dim``'s bounds; a static
M is one value) and keeps only the plan entries whose buckets meet it: one entry is a single call; more
are one call each behind nested ``torch.cond(M <= m_max, ...)``, which AOTInductor compiles into a
run-time branch -- so a package for ``Dim("M", 1, 4096)`` runs the GEMV at decode sizes and the GEMMs at
prefill sizes, at the cost of compiling every kernel its range needs (bound the ``Dim`` to what you
serve).

A layer that cannot be compiled in (its weights are not constants of the top-level graph) keeps the
opaque ``w4a16_linear`` custom op, which AOTInductor calls back into Python through its proxy executor:
the serving process must then import awq_compile, ``result.paths`` says ``custom_op ...`` with the
reason, and a warning is logged.  On torch 2.11 (H200, 2026-12-01) loading and running a package
segfaulted both when it held the opaque op and for a GPU package with every kernel compiled in, so on
torch < 2.13 packaging is refused for those two (``_old_torch_refusal``); CPU packages of plain ATen are not.
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


def _refusal(ep, m) -> str | None:
    """None if layer ``m`` can be compiled into the package (its weights are constants of the program's
    top-level graph, which the export can repack), else why not."""
    specs = _input_specs(ep)
    for role, node in (("qweight", m.qweight), ("qzeros", m.qzeros), ("scales", m.scales)):
        if node is None:
            continue
        if node.op != "placeholder" or node.name not in specs or node.graph is not ep.graph_module.graph:
            return f"its {role} is not a parameter, buffer or constant of the program's top-level graph"
    return None


def _add_constant(ep, target: str, value: torch.Tensor) -> torch.fx.Node:
    """A new lifted constant of the program (placeholder before the user inputs, ``ep.constants[target]``)."""
    import re

    from torch._guards import detect_fake_mode
    from torch.export.graph_signature import InputKind, InputSpec, TensorArgument

    graph = ep.graph_module.graph
    specs = ep.graph_signature.input_specs
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    at = next((i for i, s in enumerate(specs) if s.kind == InputKind.USER_INPUT), len(specs))
    name = "c_" + re.sub(r"\W", "_", target)
    if at < len(placeholders):
        with graph.inserting_before(placeholders[at]):
            node = graph.placeholder(name)
    else:
        with graph.inserting_after(placeholders[-1]):
            node = graph.placeholder(name)
    fake_mode = detect_fake_mode([n.meta.get("val") for n in placeholders])
    node.meta["val"] = fake_mode.from_tensor(value, static_shapes=True)
    specs.insert(at, InputSpec(kind=InputKind.CONSTANT_TENSOR, arg=TensorArgument(name=node.name), target=target,
                               persistent=None))
    ep.constants[target] = value
    return node


def _drop_unused(ep, nodes) -> list:
    """Remove the placeholders among ``nodes`` that nothing reads any more (the source weights the repacked
    constants replace, the dequant's lifted constants) with their tensors: no second copy in the package.
    A source tensor something else still reads stays.  Returns the removed targets."""
    from torch.export.graph_signature import InputKind

    specs = ep.graph_signature.input_specs
    removed = []
    for node in nodes:
        if node.op != "placeholder" or node.users:
            continue
        i = next((i for i, s in enumerate(specs) if getattr(s.arg, "name", None) == node.name), None)
        if i is None or specs[i].kind == InputKind.USER_INPUT:
            continue
        spec = specs.pop(i)
        node.graph.erase_node(node)
        if not any(s.target == spec.target for s in specs):
            ep.state_dict.pop(spec.target, None)
            ep.constants.pop(spec.target, None)
        removed.append(spec.target)
    return removed


def _packed_constants(ep, m, value_of, layout: str, cache: dict) -> tuple:
    """(qweight, qzeros, scales) nodes of layer ``m``'s weights in ``layout`` (``standard``, or
    ``cpu_int4pack``: packed weight, None, scales-and-zeros), added to the program as constants once per
    source tensor by :func:`awq_compile.formats.convert` (the one conversion route)."""
    from .formats.convert import convert
    from .formats.packed import Packed

    dtype = m.act_dtype if layout == "cpu_int4pack" else None
    key = (m.qweight, m.qzeros, m.scales, layout, dtype)
    if key in cache:
        return cache[key]
    src = Packed(m.fmt, value_of(m.qweight), None if m.qzeros is None else value_of(m.qzeros), value_of(m.scales),
                 m.group_size)
    with torch.no_grad():
        w = convert(src, layout, dtype=dtype)
    source_name = _input_specs(ep)[m.qweight.name].target
    base = source_name.rsplit(".", 1)[0] if "." in source_name else m.name
    suffix = "awq_standard" if layout == "standard" else "awq_int4pack"

    def node_for(role, new, old, node):
        if new is None:
            return None
        if new is old and node is not None:      # usable as it is (scales; an already-standard qweight)
            return node
        return _add_constant(ep, f"{base}.{role}_{suffix}", new.contiguous())

    nodes = (node_for("qweight", w.qweight, src.qweight, m.qweight),
             node_for("qzeros", w.qzeros, src.qzeros, m.qzeros),
             node_for("scales" if layout == "standard" else "scales_and_zeros", w.scales, src.scales, m.scales))
    cache[key] = nodes
    return nodes


def rewrite_exported(ep, options: dict | None = None) -> tuple["torch.export.ExportedProgram", Report]:
    """Apply the rewrite to an ExportedProgram's graph, in place; returns it and the report.

    Each layer's weights are repacked into new constants of the program (the source tensors are dropped
    when nothing else reads them) and the layer becomes, by the plan for the target:
    ``w4a16_linear_triton`` calls -- one per plan entry whose M bucket meets the program's M range, behind
    a ``torch.cond`` on M (Triton kernels on GPU targets; the dequant + matmul entry, plain torch ops,
    where the plan says ``torch_dequant``) -- or, on the CPU in bf16, ``aten._weight_int4pack_mm_for_cpu``.
    A layer that cannot (:func:`_refusal`) keeps the opaque op, with its reason in
    :attr:`ExportResult.paths` and a warning."""
    ep, report, _, _ = _rewrite(ep, options)
    return ep, report


def _rewrite(ep, options):
    from .backend import analyze_graph
    from .explaining import report_of
    from .kernels.registry import PlanEntry
    from .passes import run_passes
    from .passes.eliminate_dead_code import eliminate_dead_code
    from .passes.rewrite_awq_linears import rewrite_awq_linears
    from .passes.rewrite_triton_op import LayerCall, rewrite_triton_op

    gm = ep.graph_module
    values, weights = _example_inputs(ep)
    analysis = analyze_graph(gm, values, Options.resolve(options), static_names=weights)
    target = analysis.target
    value_of = dict(zip((n for n in gm.graph.nodes if n.op == "placeholder"), values)).__getitem__
    paths: dict = {}
    calls: dict = {}
    cache: dict = {}
    for i, lay in enumerate(analysis.layers):
        m = lay.match
        why = _refusal(ep, m)
        if why is not None:
            paths[m.name] = f"custom_op (calls into Python at run time): {why}"
            log.warning("awq_compile.export: layer '%s' keeps the opaque custom op: %s", m.name, why)
            continue
        lo, hi = _m_range(ep, m.x)
        kernels = {e.kernel for e in lay.plan.entries}
        if kernels == {"cpu_int4pack"} and _plain_2d(m.x):
            calls[i] = LayerCall(_packed_constants(ep, m, value_of, "cpu_int4pack", cache), int4pack=True)
            paths[m.name] = (f"aten: M {max(lo, 1)}..{'inf' if hi is None else hi}: cpu_int4pack "
                             "(aten._weight_int4pack_mm_for_cpu)")
            continue
        plan, note = lay.plan, ""
        if plan.layout != "standard":
            # the package holds one packed copy per layer, in the standard layout the triton_op reads: plan
            # for that layout (a kplanes plan's entries would read the constants wrongly)
            from .kernels.registry import select
            from .passes.select_kernels import problem_of

            plan = select(problem_of(m), target, force=plan.force, disabled=plan.disabled, layout="standard")
            note = f" (standard layout: the table asks for {lay.plan.layout}, which the export does not carry)"
        if "cpu_int4pack" in kernels:   # the dequant path takes any x; torch's int4 matmul a row-major [M, K]
            plan = dataclasses.replace(plan, entries=(PlanEntry(None, "torch_dequant"),))
            note = " (cpu_int4pack needs a row-major 2-D input, which this layer's is not)"
        branches = _branches(plan, lo, hi, target)
        calls[i] = LayerCall(_packed_constants(ep, m, value_of, "standard", cache), branches)
        paths[m.name] = "triton_op: " + _describe(branches, lo, hi) + note
    keep = [i for i in range(len(analysis.layers)) if i not in calls]
    replaced: dict = {}     # matmul erased by the first rewrite -> its replacement (a later layer's input)

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

    def compiled(gm_, a):
        return rewrite_triton_op(gm_, a, calls, replaced=replaced) if calls else gm_

    compiled.__name__ = "rewrite_triton_op"
    leaves = [n for lay in analysis.layers for w in lay.match.weight_nodes for n in w.all_input_nodes
              if n.op == "placeholder"]
    # no prepack for the opaque op: the weights this process would repack are not the serving process's
    run_passes(gm, analysis, passes=(compiled, opaque, eliminate_dead_code))
    _drop_unused(ep, list(dict.fromkeys(leaves)))
    gm.recompile()
    return ep, report_of(Report(), analysis), paths, target


def _plain_2d(x) -> bool:
    """x is a row-major [M, K] tensor with a static K (what torch's CPU int4 matmul reads)."""
    val = x.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() != 2:
        return False
    stride = val.stride()
    return isinstance(val.shape[1], int) and stride[1] == 1 and stride[0] == val.shape[1]


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


def _old_torch_refusal(paths: dict, target) -> str | None:
    """Why packaging is refused on this torch, or None.  Measured on the H200 (torch 2.11.0+cu130,
    2026-12-01): ``aoti_load_package`` segfaulted for our GPU packages (triton_op path, no proxy-executor
    call in their C++, tests/test_gpu_export.py) *and* for control packages built from plain
    ``nn.Linear`` models without awq_compile (64x64 and 4096x4096, loaded with and without
    ``torch.cuda.init()`` first): on that build no AOTInductor GPU package loads, so a GPU package made
    there cannot be proven and is refused.  A program keeping the opaque op calls our Python through the
    proxy executor, which was only seen on that build's crashing loader: refused too.  CPU packages of plain
    ATen are not refused (proven on torch 2.13 only)."""
    if _TORCH >= (2, 13):
        return None
    opaque = [name for name, path in paths.items() if path.startswith("custom_op")]
    if opaque:
        return (f"{len(opaque)} layer(s) keep the opaque custom op ({', '.join(opaque[:4])}"
                f"{'...' if len(opaque) > 4 else ''}: {paths[opaque[0]]}); loading an AOTInductor package that "
                "calls it through the proxy executor was never seen to load on torch < 2.13 (on torch 2.11 every "
                "AOTInductor GPU package segfaulted at load, 2026-12-01); packaging such a program needs torch >= 2.13")
    if target is not None and target.is_gpu:
        return (f"a {target} package: on torch 2.11 (H200, cu130, 2026-12-01) loading any AOTInductor GPU "
                "package crashed the process with a segmentation fault -- ours and a plain nn.Linear package "
                "built without awq_compile alike -- so GPU packaging needs torch >= 2.13")
    return None


def export(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, *, package_path: str | None = None,
           options: dict | None = None, dynamic_shapes=None, package: bool = True,
           inductor_configs: dict | None = None) -> ExportResult:
    """Export ``model`` with its AWQ linears compiled in (see the module docstring) and package it with
    AOTInductor.

    ``options`` are the backend's (``target``, ``kernel``, ``disabled_kernels``, ``strict``...);
    ``dynamic_shapes`` goes to ``torch.export.export`` (e.g. ``{"x": {0: torch.export.Dim("M", min=1,
    max=4096)}}`` so the package serves that M range).  With ``package=False`` only the rewritten
    ExportedProgram is returned (it runs eagerly: ``result.program.module()``).
    """
    seconds = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        ep = torch.export.export(model, tuple(args), kwargs, dynamic_shapes=dynamic_shapes)
        ep = ep.run_decompositions()
    seconds["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        ep, report, paths, target = _rewrite(ep, options)
    seconds["rewrite"] = time.perf_counter() - t0
    log.info("export: %d AWQ layer(s) rewritten, %d matmul(s) left alone", len(report.layers), len(report.skipped))
    why = _old_torch_refusal(paths, target) if package else None
    if why:
        raise RuntimeError(f"awq_compile.export: torch {torch.__version__}: {why}. Use package=False for the "
                           "rewritten ExportedProgram (it runs eagerly), or package with torch >= 2.13")
    path = None
    if package:
        t0 = time.perf_counter()
        path = torch._inductor.aoti_compile_and_package(ep, package_path=package_path,
                                                        inductor_configs=inductor_configs)
        seconds["aoti"] = time.perf_counter() - t0
    return ExportResult(program=ep, package_path=path, report=report, seconds=seconds, paths=paths)
