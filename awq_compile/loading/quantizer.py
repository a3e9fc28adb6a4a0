"""Write AutoAWQ-GEMM checkpoints from a float transformers model: round-to-nearest or activation-aware.

``method="rtn"``: every linear but ``lm_head`` is quantised min/max per group of ``group_size`` input
channels (asymmetric, 4-bit), packed in AutoAWQ's GEMM layout.

``method="awq"``: the activation-aware scale search of the AWQ paper before rounding.  Calibration
text runs through the float model once; for every set of linears that read the same input (q/k/v after
the attention norm, gate/up after the MLP norm, down after up) a per-input-channel scale
``s = mean|x|^a`` (normalised) is searched over a grid of exponents ``a`` in [0, 1], minimising the
error of ``x @ Q(W * s)^T / s`` against ``x @ W^T`` on the calibration activations; ``W * s`` is
quantised and ``1/s`` folded into the op before (the norm's weight, or ``up_proj``'s rows for
``down_proj``), so the model computes the same function with weights that round better.  ``o_proj``
is scaled only where its input comes straight from ``v_proj`` (as many KV heads as heads).

The output directory is what AutoAWQ writes: ``config.json`` with ``quantization_config``
(``quant_method: awq``, ``version: gemm``), ``model.safetensors`` (sharded with an index past
``max_shard_bytes``), the tokenizer and generation config when given.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import torch
from torch import nn

from ..formats import quantize as rtn_quantize, to_awq

__all__ = ["quantize_model", "QuantizeReport", "DEFAULT_CALIBRATION"]

log = logging.getLogger("awq_compile.loading")

DEFAULT_CALIBRATION = (
    "The history of science is the study of how people came to understand the natural world. Early "
    "astronomers watched the sky and recorded the motion of the planets, and their tables let sailors find "
    "their way across the sea. Physicians learned how the heart moves blood through the body, and chemists "
    "separated air into the gases that make it up. In the kitchen, bread rises because yeast turns sugar "
    "into gas; a cook who knows this can bake in the mountains as well as by the sea. Paris is the capital "
    "of France, Rome the capital of Italy, and Tokyo the capital of Japan. A good answer is short, correct "
    "and polite. Question: what is two plus three? Answer: five. Question: which is larger, a mouse or an "
    "elephant? Answer: an elephant. Programs are written in languages such as Python, which reads almost "
    "like English: for each item in the list, print the item. Rivers carry water from the mountains to the "
    "ocean, and the ocean returns it to the sky as rain. Music, painting and poetry tell stories that facts "
    "alone cannot. When you are unsure, say so, and then explain how you would find out."
)


@dataclasses.dataclass
class QuantizeReport:
    method: str
    group_size: int
    layers: int
    exponents: dict[str, float] = dataclasses.field(default_factory=dict)   # AWQ: chosen exponent per group
    out_dir: str = ""


def _linears(model) -> dict[str, nn.Linear]:
    out = model.get_output_embeddings()
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not out}


@torch.no_grad()
def _capture_inputs(model, ids: torch.Tensor, names: list[str], max_rows: int) -> dict[str, torch.Tensor]:
    """The float32 input rows [T, K] each named linear sees when the model reads ``ids``."""
    store: dict[str, torch.Tensor] = {}
    hooks = []

    class _Done(Exception):
        pass

    for n in names:
        mod = model.get_submodule(n)

        def hook(m, args, n=n):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            store[n] = x[:max_rows].cpu()
            if len(store) == len(names):
                raise _Done  # the rest of the model is not needed

        hooks.append(mod.register_forward_pre_hook(hook))
    try:
        model(ids)
    except _Done:
        pass
    finally:
        for h in hooks:
            h.remove()
    return store


def _qdq(w_nk: torch.Tensor, G: int) -> torch.Tensor:
    """Round-trip through 4-bit asymmetric min/max rounding (float32 [N, K]), as :func:`rtn_quantize` rounds."""
    N, K = w_nk.shape
    w = w_nk.reshape(N, K // G, G)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    z = torch.round(-lo / scale).clamp(0, 15)
    q = torch.round(w / scale + z).clamp(0, 15)
    return ((q - z) * scale).reshape(N, K)


def _search(x: torch.Tensor, weights: list[torch.Tensor], G: int, grid: int) -> tuple[torch.Tensor, float]:
    """Best per-input-channel scale for linears sharing input ``x`` [T, K]; returns (s [K], exponent)."""
    x_mean = x.abs().mean(0).clamp(min=1e-6)
    ref = [x @ w.t() for w in weights]
    best = (None, None, float("inf"))
    for i in range(grid + 1):
        a = i / grid
        s = x_mean.pow(a)
        s = s / (s.max() * s.min()).sqrt()
        err = 0.0
        for w, r in zip(weights, ref):
            wq = _qdq(w * s, G) / s
            err += float(((x @ wq.t()) - r).pow(2).mean())
        if err < best[2]:
            best = (s, a, err)
    return best[0], best[1]


def _awq_scale(model, calib_ids: torch.Tensor, G: int, grid: int, max_rows: int) -> dict[str, float]:
    """Search and fold AWQ scales into a Llama-like decoder in place; returns the exponent per group."""
    chosen = {}
    layers = None
    for attr in ("model.layers", "transformer.h", "model.decoder.layers"):
        try:
            layers = model.get_submodule(attr)
            prefix = attr
            break
        except AttributeError:
            continue
    if layers is None:
        raise ValueError("activation-aware search: no decoder layer list (model.layers) found; use method='rtn'")
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    for li, layer in enumerate(layers):
        base = f"{prefix}.{li}"
        attn, mlp = layer.self_attn, layer.mlp
        plans = [
            ("attn_in", layer.input_layernorm, None, [attn.q_proj, attn.k_proj, attn.v_proj]),
            ("mlp_in", layer.post_attention_layernorm, None, [mlp.gate_proj, mlp.up_proj]),
            ("down", None, mlp.up_proj, [mlp.down_proj]),
        ]
        if heads == kv_heads:
            plans.append(("o", None, attn.v_proj, [attn.o_proj]))
        names = {id(m): n for n, m in model.named_modules()}
        # re-capture per layer: earlier folds change nothing in this layer's inputs' function, only weights
        targets = [names[id(ls[0])] for _, _, _, ls in plans]
        xs = _capture_inputs(model, calib_ids, targets, max_rows)
        for (tag, norm, prev, lins), tname in zip(plans, targets):
            x = xs[tname]
            s, a = _search(x, [m.weight.float() for m in lins], G, grid)
            chosen[f"{base}.{tag}"] = a
            for m in lins:
                m.weight.mul_(s.to(m.weight.dtype)[None, :])
            if norm is not None:
                norm.weight.div_(s.to(norm.weight.dtype))
            else:
                prev.weight.div_(s.to(prev.weight.dtype)[:, None])
                if prev.bias is not None:
                    prev.bias.div_(s.to(prev.bias.dtype))
    return chosen


@torch.no_grad()
def quantize_model(model, out_dir: str, *, group_size: int = 128, method: str = "rtn", calibration: str | None = None,
                   tokenizer=None, grid: int = 20, max_rows: int = 512, max_shard_bytes: int = 2 << 30,
                   dtype: torch.dtype = torch.float16) -> QuantizeReport:
    """Quantise ``model`` (a float transformers causal LM, modified in place for ``method="awq"``) to ``out_dir``."""
    from safetensors.torch import save_file

    if method not in ("rtn", "awq"):
        raise ValueError(f"method={method!r}; expected 'rtn' or 'awq'")
    model.eval()
    report = QuantizeReport(method, group_size, 0, out_dir=out_dir)
    if method == "awq":
        if tokenizer is None:
            raise ValueError("method='awq' needs a tokenizer for the calibration text")
        text = calibration or DEFAULT_CALIBRATION
        ids = tokenizer(text, return_tensors="pt").input_ids[:, :max_rows].to(next(model.parameters()).device)
        report.exponents = _awq_scale(model, ids, group_size, grid, max_rows)

    lins = _linears(model)
    for n, m in lins.items():
        if m.in_features % group_size or m.out_features % 8:
            raise ValueError(f"layer {n}: in_features={m.in_features} is not a multiple of group size {group_size} "
                             f"(or out_features={m.out_features} of 8); choose another --group-size")
    tensors: dict[str, torch.Tensor] = {}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out_emb = model.get_output_embeddings()
    out_name = next((n for n, m in model.named_modules() if m is out_emb), None)
    for name, t in model.state_dict().items():
        layer, _, attr = name.rpartition(".")
        if layer in lins:
            if attr == "weight":
                u = rtn_quantize(t.detach().float().t(), group_size)
                qweight, qzeros, scales = to_awq(u)
                tensors[f"{layer}.qweight"] = qweight
                tensors[f"{layer}.qzeros"] = qzeros
                tensors[f"{layer}.scales"] = scales.to(torch.float16)
                report.layers += 1
            else:
                tensors[name] = t.detach().to(torch.float16)
        elif tied and out_name is not None and name == f"{out_name}.weight":
            continue
        else:
            tensors[name] = t.detach().to(dtype) if t.is_floating_point() else t.detach()
    os.makedirs(out_dir, exist_ok=True)
    _save_shards(tensors, out_dir, max_shard_bytes, save_file)
    cfg = model.config.to_dict()
    cfg["dtype"] = str(dtype).replace("torch.", "")
    cfg.pop("torch_dtype", None)
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
                                  "version": "gemm", "modules_to_not_convert": None}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, default=str)
    with open(os.path.join(out_dir, "quant_config.json"), "w") as f:   # AutoAWQ's own spelling
        json.dump({"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM"}, f, indent=2)
    gc = getattr(model, "generation_config", None)
    if gc is not None:
        gc.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return report


def _save_shards(tensors: dict, out_dir: str, max_bytes: int, save_file) -> None:
    keys = sorted(tensors)
    sizes = {k: tensors[k].numel() * tensors[k].element_size() for k in keys}
    if sum(sizes.values()) <= max_bytes:
        save_file({k: tensors[k].contiguous() for k in keys}, os.path.join(out_dir, "model.safetensors"),
                  metadata={"format": "pt"})
        return
    shards, cur, size = [], [], 0
    for k in keys:
        if cur and size + sizes[k] > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(k)
        size += sizes[k]
    shards.append(cur)
    weight_map = {}
    for i, part in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, os.path.join(out_dir, fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}, f, indent=2)


@torch.no_grad()
def compare_models(reference, model, ids: torch.Tensor) -> dict[str, float]:
    """Perplexity of both on ``ids`` [1, T] and how often their greedy next tokens agree."""
    ref = reference(ids).logits.float()
    out = model(ids).logits.float()
    target = ids[:, 1:]

    def ppl(logits):
        return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                       target.reshape(-1)).exp())

    agree = float((ref.argmax(-1) == out.argmax(-1)).float().mean())
    return {"ppl_reference": ppl(ref), "ppl": ppl(out), "next_token_agreement": agree}


def load_float_model(path: str, dtype: torch.dtype = torch.float32):
    """A float transformers causal LM and its tokenizer from a checkpoint folder or a ``.gguf`` file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {}
    if path.endswith(".gguf"):
        kw["gguf_file"] = os.path.basename(path)
        path = os.path.dirname(path) or "."
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
    except Exception as e:  # a checkpoint without a tokenizer still quantises with method="rtn"
        log.warning("no tokenizer at %s (%s)", path, e)
        tok = None
    return model.eval(), tok
