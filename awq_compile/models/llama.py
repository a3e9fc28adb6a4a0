"""A small Llama-style decoder whose linears are :class:`AwqLinear` (the demo's default model).

Same structure as Llama (RMSNorm, rotary attention with grouped KV heads, SwiGLU MLP), random weights
quantised by our own packer.  ``lm_head`` stays a plain fp16 ``nn.Linear``: the backend must leave it
alone and say why.  The same class at real sizes (``LlamaConfig.llama3_8b()``) serves the benchmarks.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .awq_linear import AwqLinear


@dataclasses.dataclass
class LlamaConfig:
    vocab_size: int = 512
    hidden: int = 256
    intermediate: int = 768
    layers: int = 2
    heads: int = 8
    kv_heads: int = 4
    group_size: int = 64
    rope_theta: float = 10000.0
    eps: float = 1e-5

    @classmethod
    def llama3_8b(cls, layers: int = 4) -> "LlamaConfig":
        return cls(vocab_size=128256, hidden=4096, intermediate=14336, layers=layers, heads=32, kv_heads=8,
                   group_size=128, rope_theta=500000.0)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight.float()).to(x.dtype)


def _rope(x, positions, theta):
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    ang = positions[:, None].float() * inv[None, :]
    cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
    x1, x2 = x.float()[..., : d // 2], x.float()[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Block(nn.Module):
    def __init__(self, c: LlamaConfig, linear):
        super().__init__()
        self.c = c
        hd = c.hidden // c.heads
        self.input_norm = RMSNorm(c.hidden, c.eps)
        self.q_proj = linear(c.hidden, c.heads * hd)
        self.k_proj = linear(c.hidden, c.kv_heads * hd)
        self.v_proj = linear(c.hidden, c.kv_heads * hd)
        self.o_proj = linear(c.heads * hd, c.hidden)
        self.post_norm = RMSNorm(c.hidden, c.eps)
        self.gate_proj = linear(c.hidden, c.intermediate)
        self.up_proj = linear(c.hidden, c.intermediate)
        self.down_proj = linear(c.intermediate, c.hidden)

    def forward(self, x, positions):
        c = self.c
        B, T, _ = x.shape
        hd = c.hidden // c.heads
        h = self.input_norm(x)
        q = _rope(self.q_proj(h).view(B, T, c.heads, hd), positions, c.rope_theta)
        k = _rope(self.k_proj(h).view(B, T, c.kv_heads, hd), positions, c.rope_theta)
        v = self.v_proj(h).view(B, T, c.kv_heads, hd)
        rep = c.heads // c.kv_heads
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=T > 1)
        x = x + self.o_proj(attn.transpose(1, 2).reshape(B, T, c.heads * hd))
        h = self.post_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class TinyLlama(nn.Module):
    def __init__(self, c: LlamaConfig, linear):
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.hidden)
        self.layers = nn.ModuleList([Block(c, linear) for _ in range(c.layers)])
        self.norm = RMSNorm(c.hidden, c.eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab_size, bias=False)

    def forward(self, tokens):
        T = tokens.shape[1]
        positions = torch.arange(T, device=tokens.device)
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, positions)
        return self.lm_head(self.norm(x))


def build_demo_model(config: LlamaConfig | None = None, *, device="cpu", dtype=torch.float16, seed: int = 0,
                     quantized: bool = True) -> TinyLlama:
    """Random float weights, each linear quantised to AWQ with our packer (``quantized=False``: plain fp16)."""
    c = config or LlamaConfig()
    g = torch.Generator().manual_seed(seed)

    def linear(k, n):
        lin = nn.Linear(k, n, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n, k, generator=g) / math.sqrt(k))
        return AwqLinear.from_float(lin, c.group_size, dtype) if quantized else lin.to(dtype)

    with torch.device("cpu"):
        model = TinyLlama(c, linear)
    with torch.no_grad():
        model.embed.weight.copy_(torch.randn(model.embed.weight.shape, generator=g))
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=g) / math.sqrt(c.hidden))
    return model.to(device=device, dtype=dtype).eval()
