"""Does the user's dequant pass a gradient to ``scales``, and is it the one our op computes?

The op computes ``dL/ds`` for ``W = (q - z) * s`` whenever its ``scales`` argument requires grad.  The
user's code may instead run the dequant under ``torch.no_grad()`` or read ``scales.detach()`` (frozen
weights: eager gives scales no gradient), or compute something whose gradient is another one.  So the
subgraph is replayed with the graph's own grad mode at every node (Dynamo records ``no_grad`` regions as
``torch._C._set_grad_enabled`` calls) on probe tensors whose scales require grad:

* no gradient reaches the scales: the op gets ``scales.detach()`` (``AwqMatch.detach_scales``);
* a gradient does: its vector-Jacobian product with a random cotangent must equal ours, else the layer
  is left alone with the reason.
"""

from __future__ import annotations

import torch
from torch.fx.node import map_arg

from ..formats.sources import SourceFormat
from ._verify import probe_tensors

__all__ = ["scales_gradient"]


def _grad_modes(graph: torch.fx.Graph) -> dict:
    """Grad mode in effect at every node, starting from the mode the graph is being compiled under."""
    mode, modes = torch.is_grad_enabled(), {}
    for n in graph.nodes:
        modes[n] = mode
        if n.op == "call_function" and n.target is torch._C._set_grad_enabled and n.args:
            mode = bool(n.args[0])
    return modes


def _replay(sub, values: dict, replace: dict, modes: dict) -> torch.Tensor:
    env = {leaf: values[leaf] for leaf in sub.leaves}
    env.update(replace)
    env = {k: v.clone() if isinstance(v, torch.Tensor) and k not in replace else v for k, v in env.items()}
    for n in sub.nodes:
        args, kwargs = map_arg((n.args, n.kwargs), lambda a: env[a])
        with torch.set_grad_enabled(modes.get(n, False)):
            if n.op == "call_function":
                env[n] = n.target(*args, **kwargs)
            else:
                self_obj, *rest = args
                env[n] = getattr(self_obj, n.target)(*rest, **kwargs)
    return env[sub.output if sub.output is not None else sub.nodes[-1]]


def scales_gradient(sub, fmt: SourceFormat, qweight, qzeros, scales, values: dict, orientation: str,
                    group_size: int) -> tuple[bool, str | None]:
    """(the user's dequant gives ``scales`` a gradient, why the layer must be left alone or None).

    Only asked when the example scales require grad; ``(False, None)`` otherwise.
    """
    s_val = values[scales]
    if not (isinstance(s_val, torch.Tensor) and s_val.requires_grad):
        return False, None
    qw, qz, s = probe_tensors(fmt, values[qweight], values.get(qzeros) if qzeros is not None else None, s_val)
    s = s.detach().requires_grad_(True)
    replace = {qweight: qw, scales: s}
    if qzeros is not None:
        replace[qzeros] = qz
    try:
        W = _replay(sub, values, replace, _grad_modes(next(iter(sub.nodes)).graph))
    except Exception as e:  # noqa: BLE001
        return False, (f"replaying the dequantisation with scales that require grad failed ({type(e).__name__}: "
                       f"{e}), so the gradient of the scales cannot be checked")
    if orientation == "nk":
        W = W.t()
    if not W.requires_grad:
        return False, None
    g = torch.randn(W.shape, generator=torch.Generator().manual_seed(0x6AD)).to(W.device, torch.float32)
    (got,) = torch.autograd.grad(W, s, g.to(W.dtype))
    u = fmt.to_unpacked(qw, qz, s.detach())
    K, N = W.shape
    zeros = 8.0 if u.zeros is None else u.zeros.to(torch.float32).repeat_interleave(group_size, 0)
    ours = ((u.codes.to(torch.float32) - zeros) * g).view(K // group_size, group_size, N).sum(1)
    err = float((got.to(torch.float32) - ours).norm() / ours.norm().clamp(min=1e-30))
    tol = {torch.float32: 1e-4, torch.float64: 1e-8}.get(W.dtype, 2e-2)
    if not err <= tol:
        return False, (f"the scales require grad and the dequantisation's gradient with respect to them is not "
                       f"that of (q - z) * s (relative difference {err:.3g} on a probe); the layer runs as "
                       "written so that training sees the gradient the code defines")
    return True, None
