"""One quantised linear from its checkpoint tensors: checked, converted once, placed on the device.

AutoAWQ GEMM weights keep their layout (:class:`~awq_compile.models.AwqLinear`).  GPTQ v1/v2 and
compressed-tensors weights become the standard K-packed layout with raw zeros
(:class:`~awq_compile.models.GptqLinear`): v1 zeros gain their +1 here, compressed-tensors tensors are
transposed.  Each check names the tensor and the expected dtype/shape; nothing is assigned before
all tensors of the layer passed.  Under tensor parallelism the same checks run on a rank's slices.
"""

from __future__ import annotations

import torch
from torch import nn

from ..formats import get_format
from ..formats import awq as awq_bits
from ..formats.compressed_tensors import check_pack_quantized, pack_quantized_to_standard
from ..models.awq_linear import AwqLinear
from ..models.gptq_linear import GptqLinear
from .checkpoint import Checkpoint
from .quant_config import CheckpointError, LinearScheme
from .sharding import LinearShard, ShardReader

__all__ = ["new_module", "load_module", "tensor_names"]

_SUFFIXES = {
    "awq": ("qweight", "qzeros", "scales", "bias"),
    "gptq_v1": ("qweight", "qzeros", "scales", "g_idx", "bias"),
    "gptq_v2": ("qweight", "qzeros", "scales", "g_idx", "bias"),
    "pack-quantized": ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "bias"),
}
QUANT_MARKERS = ("qweight", "weight_packed")


def tensor_names(name: str, scheme: LinearScheme) -> list[str]:
    return [f"{name}.{s}" for s in _SUFFIXES[scheme.layout]]


def new_module(linear: nn.Linear, scheme: LinearScheme) -> nn.Module:
    """An empty (meta) quantised module in place of ``linear``; its tensors come from :func:`load_module`."""
    K, N, bias = linear.in_features, linear.out_features, linear.bias is not None
    G = K if scheme.group_size == -1 else scheme.group_size
    if K % G:
        raise CheckpointError(f"group_size {G} does not divide in_features={K}")
    if scheme.layout == "awq":
        return AwqLinear(K, N, G, bias=bias, device="meta")
    return GptqLinear(K, N, G, bias=bias, symmetric=scheme.symmetric, device="meta")


def _float(t: torch.Tensor, name: str, what: str) -> torch.Tensor:
    if not t.is_floating_point():
        raise CheckpointError(f"{name}: expected a float {what}, found {t.dtype}")
    return t


def _scales_dtype(stored: torch.dtype, dtype: torch.dtype) -> torch.dtype:
    # keep the stored dtype unless the conversion is exact (to float32)
    return torch.float32 if dtype == torch.float32 else stored


def load_module(module: nn.Module, name: str, scheme: LinearScheme, ckpt: Checkpoint, device, dtype,
                shard: LinearShard | None = None):
    """Fill ``module`` (from :func:`new_module`) with layer ``name``'s tensors: ``(bytes read, module)``.

    The module returned is a new one when a GPTQ layer's zeros are all 8 (symmetric: no zero tensor)
    or, for a symmetric config, are not.  With a tensor-parallel ``shard`` the module has this rank's
    local sizes and every tensor is read as this rank's slice (:class:`~.sharding.ShardReader`).
    """
    K, N, G = module.in_features, module.out_features, module.group_size
    where = f"layer {name}"
    # the layer's global sizes, and where this rank's rows start (g_idx counts groups from the global row 0)
    k0, (N_all, K_all), G_all = 0, (N, K), G
    if shard is not None:
        ckpt = ShardReader(ckpt, shard, scheme.layout)
        k0, N_all, K_all, G_all = shard.k_range()[0], shard.out_features, shard.in_features, shard.group_size
    if scheme.layout == "awq":
        qweight, qzeros, scales = (ckpt.get(f"{name}.{s}") for s in ("qweight", "qzeros", "scales"))
        fmt = get_format("awq")
        why = fmt.check(qweight, qzeros, scales, K, N)
        if why:
            raise CheckpointError(f"{where}: {why} (tensors {name}.qweight / .qzeros / .scales)")
        if scales.shape[0] != K // G:
            raise CheckpointError(f"{where}: {name}.scales has {scales.shape[0]} groups, the config's group "
                                  f"size {G} gives K/G = {K // G}")
        tensors = {"qweight": qweight, "qzeros": qzeros, "scales": scales}
    elif scheme.layout in ("gptq_v1", "gptq_v2"):
        qweight, qzeros, scales = (ckpt.get(f"{name}.{s}") for s in ("qweight", "qzeros", "scales"))
        fmt = get_format(scheme.layout)
        why = fmt.check(qweight, qzeros, scales, K, N)
        if why:
            raise CheckpointError(f"{where}: {why} (tensors {name}.qweight / .qzeros / .scales)")
        if scales.shape[0] != K // G:
            raise CheckpointError(f"{where}: {name}.scales has {scales.shape[0]} groups, the config's group "
                                  f"size {G} gives K/G = {K // G}")
        g_idx = ckpt.maybe(f"{name}.g_idx")
        if g_idx is not None:
            trivial = (torch.arange(K, dtype=torch.int64) + k0) // G_all
            if tuple(g_idx.shape) != (K,) or not torch.equal(g_idx.to(torch.int64), trivial):
                raise CheckpointError(f"{where}: {name}.g_idx is an act-order permutation (desc_act); expected "
                                      f"arange(K) // group_size. Act-order GPTQ is not supported: quantise "
                                      f"with desc_act=False")
        try:
            zeros = fmt.zeros_of(qzeros)  # v1: +1 here
        except ValueError as e:
            raise CheckpointError(f"{where}: {name}.qzeros: {e}") from None
        if bool((zeros == 8).all()):
            qz = None  # symmetric: the kernels' implicit zero 8, no zero tensor to read
        else:
            qz = awq_bits.pack_n_sequential(zeros)
        if (qz is None) != module.symmetric:
            module = _resymmetrize(module, qz is None)
        tensors = {"qweight": qweight, "qzeros": qz, "scales": scales}
    elif scheme.layout == "pack-quantized":
        packed, scale = ckpt.get(f"{name}.weight_packed"), ckpt.get(f"{name}.weight_scale")
        zp, shape = ckpt.maybe(f"{name}.weight_zero_point"), ckpt.maybe(f"{name}.weight_shape")
        if shape is not None and [int(v) for v in shape.tolist()] != [N_all, K_all]:
            raise CheckpointError(f"{where}: {name}.weight_shape is {shape.tolist()}, the model's layer is "
                                  f"[{N_all}, {K_all}]")
        if shard is not None and shape is not None:
            shape = torch.tensor([N, K], dtype=shape.dtype)   # this rank's slice is [N_local, K_local]
        why = check_pack_quantized(packed, scale, zp, shape, symmetric=scheme.symmetric,
                                   group_size=None if scheme.group_size == -1 else G)
        if why:
            raise CheckpointError(f"{where}: {name}.{why}")
        std = pack_quantized_to_standard(packed, scale, None if scheme.symmetric else zp)
        tensors = {"qweight": std.qweight, "qzeros": std.qzeros, "scales": std.scales}
    else:  # pragma: no cover - LinearScheme is built by quant_config only
        raise CheckpointError(f"{where}: unknown layout {scheme.layout!r}")

    bias = ckpt.maybe(f"{name}.bias")
    if (bias is None) != (module.bias is None):
        raise CheckpointError(f"{where}: {name}.bias is {'missing' if bias is None else 'present'} but the "
                              f"model's layer {'has' if bias is None else 'has no'} bias")
    if bias is not None:
        if tuple(bias.shape) != (N,):
            raise CheckpointError(f"{where}: {name}.bias: expected shape ({N},), found {tuple(bias.shape)}")
        tensors["bias"] = _float(bias, f"{name}.bias", "bias")
    sdtype = _scales_dtype(tensors["scales"].dtype, dtype)
    nbytes = 0
    for key, t in tensors.items():
        if t is None:
            module._buffers[key] = None
            continue
        nbytes += t.numel() * t.element_size()
        if key == "scales":
            t = t.to(device=device, dtype=sdtype)
        elif key == "bias":
            t = t.to(device=device, dtype=sdtype)
        else:
            t = t.to(device=device)
        module._buffers[key] = t
    return nbytes, module


def _resymmetrize(module: GptqLinear, symmetric: bool) -> GptqLinear:
    new = GptqLinear(module.in_features, module.out_features, module.group_size, bias=module.bias is not None,
                     symmetric=symmetric, device="meta")
    return new
