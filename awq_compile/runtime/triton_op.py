"""``torch.ops.awq_compile.w4a16_linear_triton``: our Triton kernels as a ``torch.library.triton_op``.

::

    y = w4a16_linear_triton(x, qweight, qzeros, scales, bias, layer, group_size, plan)

The op the export's GPU-target rewrite puts in an ExportedProgram (:mod:`awq_compile.exporting`), so
that AOTInductor compiles the kernel into the package and the package never calls back into Python:

* ``qweight`` / ``qzeros`` / ``scales`` are already in the *standard* layout (the export repacks the
  program's constants once, :func:`awq_compile.formats.convert`); there is no weight cache here.
* ``plan`` is an encoded :class:`~awq_compile.kernels.registry.Plan` with **one** entry (one kernel and
  config for every M this call can see) and its target.  Choosing between M buckets is the graph's job
  (the export puts a ``torch.cond`` on M in front of one such call per bucket): a Python branch on a
  symbolic M here would add a guard, which ``torch.export`` turns into an error or a specialisation.
* The body is traceable: shape checks on static sizes, ``torch`` ops, and the launch of
  :func:`awq_compile.kernels.spec.plan_launch`'s :class:`~awq_compile.kernels.spec.LaunchPlan` through
  :func:`awq_compile.kernels.triton.launch.launch` with the jit function wrapped by
  ``torch.library.wrap_triton`` -- the launch arguments come from the kernels' specs, as for the
  ``torch.compile`` path.  Split-K workspace and tickets are ``torch.zeros`` per call (the persistent
  workspace of the eager launcher is process state a package cannot hold).
* ``torch_dequant`` entries (activations the Triton kernels do not take, e.g. float32) run as torch ops:
  dequantise the standard layout, then matmul -- still no Python at run time.

Eagerly (real tensors) the same body runs: Triton launches directly, or under ``TRITON_INTERPRET=1``
on CPU tensors.  Shape propagation (export, fake tensors) uses a fake implementation of its own; Inductor
(``aoti_compile_and_package``, ``torch.compile``) decomposes the op into the body, so the kernels appear
as ``triton_kernel_wrapper_functional`` nodes it compiles -- on a GPU build: under Triton's interpreter
``wrap_triton`` hands back the interpreted kernel, which cannot be traced.  Registration happens when
this module is first imported (the export does).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch

from ..formats.standard import dequantize_standard
from ..kernels.problem import Problem
from ..kernels.registry import Plan, PlanEntry
from ..kernels.spec import LaunchOptions, plan_launch
from ..kernels.specs import get_spec
from ..target import Target, interpreter_active
from .op import check_inputs

__all__ = ["w4a16_linear_triton", "single_entry_plan", "LAUNCH_KEYWORDS"]

# launch options torch's user-kernel tracing takes as keywords of a plain @triton.jit launch
LAUNCH_KEYWORDS = ("num_warps", "num_stages")


def single_entry_plan(entry: PlanEntry, target: Target) -> str:
    """The ``plan`` argument of the op: ``entry`` for every M, on ``target``."""
    return Plan((dataclasses.replace(entry, m_max=None),), target=target).encode()


@functools.lru_cache(maxsize=None)
def _interpreting() -> bool:
    return interpreter_active()


@functools.lru_cache(maxsize=256)
def _single_config(fn, options: tuple):
    """``fn`` under a one-config ``triton.autotune`` carrying launch options that are not plain launch
    keywords (ROCm's ``waves_per_eu`` / ``matrix_instr_nonkdim`` / ``kpack``, CUDA's ``maxnreg``): the
    form in which torch's user-kernel tracing and Inductor pass compiler options on."""
    import triton

    opts = dict(options)
    kw = {k: opts.pop(k) for k in LAUNCH_KEYWORDS if k in opts}
    if "maxnreg" in opts:
        kw["maxnreg"] = opts.pop("maxnreg")
    return triton.autotune(configs=[triton.Config(opts, **kw)], key=[])(fn)


def _wrap(plan):
    from torch.library import wrap_triton

    extra = {k for k in plan.options if k not in LAUNCH_KEYWORDS}
    if not extra:
        return wrap_triton(plan.fn), plan.kwargs
    return wrap_triton(_single_config(plan.fn, tuple(sorted(plan.options.items())))), dict(plan.constexprs)


def _zeroed(device):
    def get(numel, tiles):
        return (torch.zeros(numel, dtype=torch.float32, device=device),
                torch.zeros(tiles, dtype=torch.int32, device=device))
    return get


@torch.library.triton_op("awq_compile::w4a16_linear_triton", mutates_args=())
def w4a16_linear_triton(x: torch.Tensor, qweight: torch.Tensor, qzeros: Optional[torch.Tensor],
                        scales: torch.Tensor, bias: Optional[torch.Tensor], layer: str, group_size: int,
                        plan: str) -> torch.Tensor:
    # the standard layout has the shapes of gptq_v2 (K-packed codes, raw zeros packed along N) / gptq_sym:
    # the op's checks for those formats are the checks of the standard layout; K, N are static sizes
    K, N = check_inputs(x, qweight, qzeros, scales, bias, layer, "gptq_v2" if qzeros is not None else "gptq_sym",
                        group_size)
    decoded = Plan.decode(plan)
    if len(decoded.entries) != 1 or decoded.target is None:
        raise ValueError(f"awq_compile: layer '{layer or '?'}': w4a16_linear_triton takes a one-entry plan with "
                         f"a target, got {plan!r}")
    if decoded.layout != "standard":
        raise ValueError(f"awq_compile: layer '{layer or '?'}': w4a16_linear_triton reads the standard layout (the "
                         f"export's constants), not {decoded.layout}: {plan!r}")
    entry = decoded.entries[0]
    x2d = x.reshape(-1, K)
    M = x2d.shape[0]
    if isinstance(M, int) and M == 0:     # a plain int only: never a guard on a symbolic M
        return x.new_empty((*x.shape[:-1], N))
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    if entry.config is None:
        if entry.kernel != "torch_dequant":
            raise ValueError(f"awq_compile: layer '{layer or '?'}': {entry.kernel} has no traceable form")
        if x.device.type == "cpu":   # as the runtime's CPU path: fp32 matmul (fastest and most accurate there)
            w = dequantize_standard(qweight, qzeros, scales, group_size, torch.float32)
            out = (x2d.to(torch.float32) @ w).to(x.dtype)
        else:
            out = x2d @ dequantize_standard(qweight, qzeros, scales, group_size, x.dtype)
        out = out if bias is None else out + bias
    else:
        problem = Problem(K, N, group_size, qzeros is not None, str(x.dtype).removeprefix("torch."),
                          has_bias=bias is not None, m=M)
        launch_plan = plan_launch(get_spec(entry.kernel), entry.config, entry.launch or LaunchOptions(), problem,
                                  decoded.target, interpret=_interpreting())
        from ..kernels.triton.launch import launch

        out = torch.empty((M, N), dtype=x.dtype, device=x.device)
        out = launch(launch_plan, x2d.contiguous(), qweight, qzeros, scales, bias, out,
                     workspace=_zeroed(x.device), wrap=_wrap)
    return out.reshape(*x.shape[:-1], N)


@w4a16_linear_triton.register_fake
def _(x, qweight, qzeros, scales, bias, layer, group_size, plan):
    # shapes only: the body's launch is for real tensors and for Inductor's functional tracing (under Triton's
    # interpreter wrap_triton returns the interpreted kernel itself, which cannot run on fake tensors)
    K, N = check_inputs(x, qweight, qzeros, scales, bias, layer, "gptq_v2" if qzeros is not None else "gptq_sym",
                        group_size)
    return x.new_empty((*x.shape[:-1], N))
