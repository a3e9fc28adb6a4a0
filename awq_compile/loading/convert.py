"""``awq_compile.convert_modules(model)``: swap other libraries' 4-bit linears for ours, sharing their tensors.

A model that AutoAWQ, GPTQModel or compressed-tensors already loaded runs those libraries' own kernels
(AutoAWQ's Triton GEMM on GPUs, a TypeError on CPU; GPTQModel's ATen int4 or graph-breaking GPTQ path;
compressed-tensors' decompression).  ``backend="awq"`` sees a user Triton kernel or an opaque op there, not
a dequantisation.  Replacing the modules before ``torch.compile`` gives it our plain-PyTorch spelling of
the same weights.  Recognised by class name and tensor layout, without importing the libraries:

=========================================  ==============================================  =============
class                                      tensors                                         becomes
=========================================  ==============================================  =============
AutoAWQ ``WQLinear_GEMM``,                 qweight [K, N/8], qzeros [K/G, N/8],            AwqLinear
GPTQModel ``AwqTorchLinear`` / ``AwqLinear*``  scales [K/G, N]                              (shared)
GPTQModel ``TorchLinear`` / ``*QuantLinear``  qweight [K/8, N], qzeros [K/G, N/8] (v2 zeros:  GptqLinear
(GPTQ, before a kernel repacked it)        GPTQModel converts v1 at load), g_idx sorted
compressed-tensors ``CompressedLinear`` or  weight_packed [N, K/8], weight_scale [N, K/G],     GptqLinear
a Linear with ``weight_packed``            weight_zero_point [N/8, K/G] (asymmetric)
=========================================  ==============================================  =============

Modules already repacked for another kernel (GPTQModel's CPU int4 ATen, Marlin, ExLlama) no longer
hold these tensors and are left as they are, with a logged reason: load the checkpoint with
:func:`awq_compile.load_pretrained` instead.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..formats import get_format
from ..formats.compressed_tensors import pack_quantized_to_standard
from ..models.awq_linear import AwqLinear
from ..models.gptq_linear import GptqLinear

__all__ = ["convert_modules"]

log = logging.getLogger("awq_compile.loading")

_AWQ_CLASSES = ("WQLinear_GEMM", "AwqTorchLinear", "AwqTorchQuantLinear")
_GPTQ_CLASSES = ("TorchLinear", "TorchQuantLinear", "QuantLinear", "TritonV2QuantLinear", "TritonV2Linear")


def _t(mod, name):
    return getattr(mod, name, None) if isinstance(getattr(mod, name, None), torch.Tensor) else None


def _bits(mod) -> int:
    return int(getattr(mod, "w_bit", getattr(mod, "bits", 4)))


def _packed(mod, fmt: str):
    """``(qweight, qzeros, scales, K, N)`` of a module holding ``fmt`` tensors, or why it cannot be taken."""
    qweight, qzeros, scales = _t(mod, "qweight"), _t(mod, "qzeros"), _t(mod, "scales")
    if qweight is None or scales is None:
        return "no qweight/scales tensors (already repacked for another kernel?)"
    if _bits(mod) != 4:
        return f"{_bits(mod)}-bit weights; only 4-bit is supported"
    K, N = mod.in_features, mod.out_features
    return get_format(fmt).check(qweight, qzeros, scales, K, N) or (qweight, qzeros, scales, K, N)


def _from_awq(mod) -> nn.Module | str:
    found = _packed(mod, "awq")
    if isinstance(found, str):
        return found
    qweight, qzeros, scales, K, N = found
    new = AwqLinear(K, N, K // scales.shape[0], bias=_t(mod, "bias") is not None, device="meta")
    new._buffers.update(qweight=qweight, qzeros=qzeros, scales=scales, bias=_t(mod, "bias"))
    return new


def _from_gptq(mod) -> nn.Module | str:
    found = _packed(mod, "gptq_v2")
    if isinstance(found, str):
        return found
    qweight, qzeros, scales, K, N = found
    G = K // scales.shape[0]
    g_idx = _t(mod, "g_idx")
    if g_idx is not None and not torch.equal(g_idx.to(torch.int64).cpu(), torch.arange(K) // G):
        return "act-order g_idx (desc_act): not supported"
    new = GptqLinear(K, N, G, bias=_t(mod, "bias") is not None, device="meta")
    new._buffers.update(qweight=qweight, qzeros=qzeros, scales=scales, bias=_t(mod, "bias"))
    return new


def _from_compressed(mod) -> nn.Module | str:
    packed, scale, zp = _t(mod, "weight_packed"), _t(mod, "weight_scale"), _t(mod, "weight_zero_point")
    scheme = getattr(mod, "quantization_scheme", None)
    weights = getattr(scheme, "weights", None)
    if weights is not None and (weights.num_bits != 4 or weights.type != "int"):
        return f"weights {weights.type}{weights.num_bits}; only int4 is supported"
    symmetric = bool(getattr(weights, "symmetric", zp is None))
    std = pack_quantized_to_standard(packed, scale, None if symmetric else zp)
    N, K = packed.shape[0], packed.shape[1] * 8
    bias = mod.bias if isinstance(getattr(mod, "bias", None), torch.Tensor) else None
    new = GptqLinear(K, N, std.group_size, bias=bias is not None, symmetric=symmetric, device="meta")
    new._buffers.update(qweight=std.qweight, qzeros=std.qzeros, scales=std.scales,
                        bias=None if bias is None else bias.detach())
    return new


def convert_modules(model: nn.Module) -> dict[str, str]:
    """Replace recognised 4-bit linears in place; returns {module name: what it became, or why it was left}."""
    done = {}
    for name, mod in list(model.named_modules()):
        cls = type(mod).__name__
        if isinstance(mod, (AwqLinear, GptqLinear)):
            continue
        if cls in _AWQ_CLASSES:
            new = _from_awq(mod)
        elif cls in _GPTQ_CLASSES and _t(mod, "qweight") is not None:
            new = _from_gptq(mod)
        elif _t(mod, "weight_packed") is not None and _t(mod, "weight_scale") is not None:
            new = _from_compressed(mod)
        else:
            continue
        if isinstance(new, str):
            log.info("convert_modules: %s (%s) left alone: %s", name, cls, new)
            done[name] = f"left alone: {new}"
            continue
        prefix, _, attr = name.rpartition(".")
        setattr(model.get_submodule(prefix) if prefix else model, attr, new)
        done[name] = type(new).__name__
    return done
