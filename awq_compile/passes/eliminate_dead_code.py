"""Pass 6: drop the dequantisation nodes nothing uses any more (side-effecting nodes stay).

FX's own purity test treats every ``call_method`` as pure, so an in-place ``out.add_(bias)`` whose
result is unused would be deleted with the dequant; in-place methods and functions (a trailing ``_``
by PyTorch's naming rule) are kept explicitly.
"""

from __future__ import annotations

import operator

import torch

from .context import PassContext


_OPERATOR_IN_PLACE = {operator.iand, operator.ior, operator.ixor, operator.iadd, operator.isub, operator.imul,
                      operator.itruediv, operator.ifloordiv, operator.irshift, operator.ilshift, operator.setitem}


def _in_place_name(name: str) -> bool:
    return name.endswith("_") and not name.endswith("__")


def _impure(node: torch.fx.Node) -> bool:
    if node.is_impure():
        return True
    if node.op == "call_method":
        return _in_place_name(str(node.target))
    if node.op == "call_function":
        t = node.target
        if t in _OPERATOR_IN_PLACE:
            return True
        if getattr(t, "__module__", None) in ("_operator", "operator"):  # operator.and_ is not in place
            return False
        return _in_place_name(getattr(t, "__name__", ""))
    return False


def eliminate_dead_code(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    if ctx.options.analysis_only:
        return gm
    gm.graph.eliminate_dead_code(is_impure_node=_impure)
    gm.graph.lint()
    gm.recompile()
    return gm
