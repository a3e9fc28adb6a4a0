"""Independent checkpoint writers for the loader tests.

Tiny transformers models (Llama, Qwen2 with q/k/v bias) get random weights; every linear but lm_head is
quantised min/max per group here, and written in one of the formats by packers written from the layout
facts (docs/formats.md) with numpy bit arithmetic, one nibble at a time -- not awq_compile's packers.
compressed-tensors checkpoints are written by the compressed-tensors library itself (``write_ct``).
:func:`reference_model` is the same model in float64 with every quantised weight dequantised from the
codes, the ground truth the loaded model is compared with.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch import nn

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]   # nibble i of an AWQ word holds column 8j + AWQ_ORDER[i]


def tiny_config(kind: str = "llama", layers: int = 2, hidden: int = 64, tie: bool = False):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=96, hidden_size=hidden, intermediate_size=2 * hidden + 64, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if kind == "llama":
        return LlamaConfig(**common)
    if kind == "qwen2":
        return Qwen2Config(**common)  # Qwen2: q/k/v carry a bias
    raise ValueError(kind)


def float_model(config, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.6 / p.shape[-1] ** 0.5 if p.dim() == 2 else 0.02))
    return model.eval()


def quantised_linears(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")]


def quantise(w_nk: torch.Tensor, G: int, symmetric: bool):
    """float [N, K] -> (codes [K, N] 0..15, zeros [K/G, N] 0..15, scales [K/G, N] fp16), min/max per group."""
    w = w_nk.t().double()
    K, N = w.shape
    wg = w.reshape(K // G, G, N)
    if symmetric:
        scale = (wg.abs().amax(1) / 7).clamp(min=1e-6)
        zero = torch.full_like(scale, 8.0)
    else:
        lo, hi = wg.amin(1).clamp(max=0), wg.amax(1).clamp(min=0)
        scale = ((hi - lo) / 15).clamp(min=1e-6)
        zero = torch.round(-lo / scale).clamp(0, 15)
    scale16 = scale.half()
    codes = torch.round(wg / scale16.double()[:, None] + zero[:, None]).clamp(0, 15).reshape(K, N)
    return codes.to(torch.uint8), zero.to(torch.uint8), scale16


def _to_i32(words: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(words.astype(np.uint32).view(np.int32).copy())


def pack_awq_rows(codes: torch.Tensor) -> torch.Tensor:
    """[R, N] codes -> AWQ int32 [R, N/8]: nibble i <- column 8j + AWQ_ORDER[i]."""
    c = codes.numpy().astype(np.uint64)
    R, N = c.shape
    out = np.zeros((R, N // 8), dtype=np.uint64)
    for j in range(N // 8):
        for i in range(8):
            out[:, j] |= c[:, 8 * j + AWQ_ORDER[i]] << np.uint64(4 * i)
    return _to_i32(out)


def pack_seq_cols(codes: torch.Tensor) -> torch.Tensor:
    """[R, N] -> int32 [R, N/8], column 8j+i in nibble i."""
    c = codes.numpy().astype(np.uint64)
    R, N = c.shape
    out = np.zeros((R, N // 8), dtype=np.uint64)
    for j in range(N // 8):
        for i in range(8):
            out[:, j] |= c[:, 8 * j + i] << np.uint64(4 * i)
    return _to_i32(out)


def pack_seq_rows(codes: torch.Tensor) -> torch.Tensor:
    """[K, N] -> int32 [K/8, N], row 8k+i in nibble i (GPTQ qweight)."""
    return pack_seq_cols(codes.t().contiguous()).t().contiguous()


def _save(out_dir, config, tensors: dict, qcfg: dict | None, *, shards: int = 1, quant_config_json=None):
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    cfg = config.to_dict()
    if qcfg is not None:
        cfg["quantization_config"] = qcfg
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    if quant_config_json is not None:
        with open(os.path.join(out_dir, "quant_config.json"), "w") as f:
            json.dump(quant_config_json, f)
    keys = sorted(tensors)
    if shards == 1:
        save_file({k: tensors[k].contiguous() for k in keys}, os.path.join(out_dir, "model.safetensors"))
        return
    weight_map = {}
    per = -(-len(keys) // shards)
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[s * per:(s + 1) * per]
        save_file({k: tensors[k].contiguous() for k in part}, os.path.join(out_dir, fname))
        weight_map.update({k: fname for k in part})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def write_checkpoint(out_dir, model, fmt: str, G: int, *, symmetric: bool = False, shards: int = 1,
                     store_dtype=torch.float16, scales_dtype=torch.float16, autoawq_json: bool = False):
    """Write ``model`` quantised as ``fmt`` ("awq", "gptq_v1", "gptq_v2"); returns {layer: (codes, zeros, scales)}."""
    q = {}
    tensors = {}
    quant = set(quantised_linears(model))
    for name, p in model.state_dict().items():
        layer = name.rpartition(".")[0]
        if layer in quant and name.endswith(".weight"):
            codes, zeros, scales = quantise(p, G, symmetric)
            sc = scales.to(scales_dtype)
            q[layer] = (codes, zeros, sc)
            if fmt == "awq":
                tensors[f"{layer}.qweight"] = pack_awq_rows(codes)
                tensors[f"{layer}.qzeros"] = pack_awq_rows(zeros)
                tensors[f"{layer}.scales"] = sc
            else:
                tensors[f"{layer}.qweight"] = pack_seq_rows(codes)
                z = zeros.to(torch.int16) - (1 if fmt == "gptq_v1" else 0)
                tensors[f"{layer}.qzeros"] = pack_seq_cols((z & 15).to(torch.uint8))
                tensors[f"{layer}.scales"] = sc
                tensors[f"{layer}.g_idx"] = torch.arange(p.shape[1], dtype=torch.int32) // G
        elif layer in quant and name.endswith(".bias"):
            tensors[name] = p.to(store_dtype)
        elif name.endswith("lm_head.weight") and model.config.tie_word_embeddings:
            continue
        else:
            tensors[name] = p.to(store_dtype)
    if fmt == "awq":
        qcfg = {"quant_method": "awq", "bits": 4, "group_size": G, "zero_point": True, "version": "gemm",
                "modules_to_not_convert": None}
    else:
        qcfg = {"quant_method": "gptq", "bits": 4, "group_size": G, "sym": symmetric, "desc_act": False,
                "checkpoint_format": "gptq_v2" if fmt == "gptq_v2" else "gptq"}
    qj = None
    if autoawq_json:
        qj = {"w_bit": 4, "q_group_size": G, "zero_point": True, "version": "GEMM"}
        qcfg = None
    _save(out_dir, model.config, tensors, qcfg, shards=shards, quant_config_json=qj)
    return q


def write_ct(out_dir, model, G: int | None, *, symmetric: bool):
    """compressed-tensors pack-quantized via the library's own quantisation config and compressor.

    ``G=None``: the channel strategy.  Scales and zero points come from compressed-tensors'
    ``calculate_qparams`` on each group's min/max.  Returns {layer: dequantised float64 [N, K] weight}.
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    args = QuantizationArgs(num_bits=4, type="int", symmetric=symmetric,
                            strategy="group" if G else "channel", group_size=G)
    qconf = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
                               ignore=["lm_head"])
    model = model.to(torch.float16)
    apply_quantization_config(model, qconf)
    deq = {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            if not hasattr(mod, "weight_scale"):
                continue
            w = mod.weight.float()
            N, K = w.shape
            g = G or K
            wg = w.reshape(N, K // g, g)
            scale, zp = calculate_qparams(wg.amin(-1), wg.amax(-1), args)
            mod.weight_scale.data.copy_(scale.reshape(mod.weight_scale.shape))
            if hasattr(mod, "weight_zero_point"):
                mod.weight_zero_point.data.copy_(zp.reshape(mod.weight_zero_point.shape))
            zpt = getattr(mod, "weight_zero_point", None)
            codes = quantize(x=mod.weight, scale=mod.weight_scale, zero_point=zpt, args=args, dtype=torch.int8)
            s64 = mod.weight_scale.double().repeat_interleave(g, dim=1)
            z64 = 0 if zpt is None else zpt.double().repeat_interleave(g, dim=1)
            deq[name] = (codes.double() - z64) * s64
    comp = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    comp.compress_model(model)
    model.save_pretrained(out_dir)
    comp.update_config(out_dir)
    return deq


def reference_model(config, model, q: dict | None = None, deq: dict | None = None, store_dtype=torch.float16):
    """float64 copy of ``model`` whose quantised weights are the dequantised codes (stored dtypes honoured)."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    sd = {k: v.to(store_dtype).double() for k, v in model.state_dict().items()}
    for layer, (codes, zeros, scales) in (q or {}).items():
        K, N = codes.shape
        G = K // scales.shape[0]
        w = (codes.double() - zeros.double().repeat_interleave(G, 0)) * scales.double().repeat_interleave(G, 0)
        sd[f"{layer}.weight"] = w.t().contiguous()
    for layer, w in (deq or {}).items():
        sd[f"{layer}.weight"] = w
    ref.load_state_dict(sd, strict=False)
    if config.tie_word_embeddings:
        ref.tie_weights()
    return ref
