"""Decode throughput of a Llama-3-8B-shaped decoder: ``backend="awq"`` vs the fp16 model under Inductor.

``python -m benchmarks.decode [--layers 4] [--batches 1,16] [--steps 64] [--mode reduce-overhead|default] [--rounds R]``

Both models have the real layer sizes (hidden 4096, intermediate 14336, 32 heads, 8 KV heads, head dim
128) and random weights; the AWQ model's linears are AutoAWQ-style modules (qweight/qzeros/scales
buffers, pure-PyTorch dequant + matmul in forward), the fp16 model holds the same quantised weights
dequantised into ``nn.Linear``.  One decode step = one token per sequence through every layer with a
static KV cache (context 1024); both are compiled with ``mode="reduce-overhead"`` (CUDA graphs; ``--mode
default``: Inductor's default mode, no CUDA graphs, so the host issues every launch of every step).
Reports tokens/s (batch x steps / time) and the two models' agreement.  Both models are compiled and warmed up
first; then ``--rounds`` timed rounds alternate between them and each side's median round counts -- in the default
mode the host is the bottleneck, and on a shared host its speed moved by 2x between processes and minutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F
from torch import nn

from awq_compile.models.awq_linear import AwqLinear

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, CTX = 4096, 14336, 32, 8, 128, 1024   # CTX: decode's static KV cache


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        v = x.float()
        return (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * self.weight


def rope(x, pos):
    # x [B, H, T, D]; pos: int tensor [T]
    d = x.shape[-1]
    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    ang = pos.float()[:, None] * inv[None, :]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Layer(nn.Module):
    def __init__(self, linear, batch, ctx=CTX):
        super().__init__()
        self.q, self.k, self.v = linear(HIDDEN, HEADS * HEAD_DIM), linear(HIDDEN, KV_HEADS * HEAD_DIM), linear(HIDDEN, KV_HEADS * HEAD_DIM)
        self.o = linear(HEADS * HEAD_DIM, HIDDEN)
        self.gate, self.up, self.down = linear(HIDDEN, INTER), linear(HIDDEN, INTER), linear(INTER, HIDDEN)
        self.n1, self.n2 = RMSNorm(HIDDEN), RMSNorm(HIDDEN)
        self.register_buffer("kc", torch.zeros(batch, KV_HEADS, ctx, HEAD_DIM))
        self.register_buffer("vc", torch.zeros(batch, KV_HEADS, ctx, HEAD_DIM))

    def forward(self, x, pos):
        # x [B, T, hidden], pos [T]: T = 1 for a decode step, the prompt length for a prefill
        B, T = x.shape[0], x.shape[1]
        h = self.n1(x)
        q = rope(self.q(h).view(B, T, HEADS, HEAD_DIM).transpose(1, 2), pos)
        k = rope(self.k(h).view(B, T, KV_HEADS, HEAD_DIM).transpose(1, 2), pos)
        v = self.v(h).view(B, T, KV_HEADS, HEAD_DIM).transpose(1, 2)
        self.kc.index_copy_(2, pos, k)
        self.vc.index_copy_(2, pos, v)
        mask = (torch.arange(self.kc.shape[2], device=x.device)[None, :] <= pos[:, None])[None, None]   # [1, 1, T, CTX]
        kk = self.kc.repeat_interleave(HEADS // KV_HEADS, dim=1)
        vv = self.vc.repeat_interleave(HEADS // KV_HEADS, dim=1)
        a = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, HEADS * HEAD_DIM))
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Decoder(nn.Module):
    def __init__(self, layers, linear, batch, ctx=CTX):
        super().__init__()
        self.layers = nn.ModuleList(Layer(linear, batch, ctx) for _ in range(layers))
        self.norm = RMSNorm(HIDDEN)

    def forward(self, x, pos):
        for layer in self.layers:
            x = layer(x, pos)
        return self.norm(x)


def build(layers, batch, seed=0, ctx=CTX):
    """(awq model, fp16 model) with the same quantised weights, on the GPU in fp16; ``ctx`` KV positions."""
    torch.manual_seed(seed)
    awq = Decoder(layers, lambda k, n: AwqLinear(k, n, 128, device="cuda"), batch, ctx).cuda().half()
    for m in awq.modules():
        if isinstance(m, AwqLinear):
            K, N = m.in_features, m.out_features
            m.qweight.copy_(torch.randint(-2**31, 2**31 - 1, (K, N // 8), dtype=torch.int32, device="cuda"))
            m.qzeros.copy_(torch.randint(-2**31, 2**31 - 1, (K // 128, N // 8), dtype=torch.int32, device="cuda"))
            m.scales.copy_((torch.rand(K // 128, N, device="cuda") * 0.004 + 0.001).half())
    fp16 = Decoder(layers, lambda k, n: nn.Linear(k, n, bias=False), batch, ctx).cuda().half()
    from .common import AWQ
    with torch.no_grad():
        for (name, m), m16 in zip(((n, m) for n, m in awq.named_modules() if isinstance(m, AwqLinear)),
                                  (m for m in fp16.modules() if isinstance(m, nn.Linear))):
            m16.weight.copy_(AWQ.to_unpacked(m.qweight, m.qzeros, m.scales).dequantize(torch.float16).t())
    return awq, fp16


def _own_step(model):
    """``model(x, pos)`` in a function with a code object of its own: Dynamo keeps compiled graphs per code object,
    so the two compiled models can alternate (``--rounds``) without either's guards being tried on the other's
    calls and without recompiling."""
    def step(x, pos):
        return model(x, pos)
    code = step.__code__.replace(co_name=f"decode_step_{id(model):x}")
    return types.FunctionType(code, step.__globals__, code.co_name, None, step.__closure__)


def warm_up(step, model, batch, warm=8):
    """Clear ``model``'s KV cache and run ``warm`` steps of ``step`` (compiles); returns the step input -- the same
    for both models (their last outputs are compared: a fresh x per model made that column compare two unrelated
    tensors, sqrt(2))."""
    g = torch.Generator(device="cuda").manual_seed(batch)
    x = torch.randn(batch, 1, HIDDEN, device="cuda", dtype=torch.float16, generator=g) * 0.1
    for b in model.buffers():
        if b.dim() == 4:
            b.zero_()
    with torch.no_grad():
        for i in range(warm):
            step(x, torch.tensor([i], device="cuda"))
    torch.cuda.synchronize()
    return x


def timed_steps(step, x, steps, first=8):
    """(seconds, last output) of ``steps`` decode steps at positions ``first`` ..."""
    poss = [torch.tensor([first + i], device="cuda") for i in range(steps)]
    with torch.no_grad():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for p in poss:
            y = step(x, p)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    return dt, y.float().clone()


def _ensure_backend():
    """``backend="awq"`` comes from the package's entry point; register it by hand when not installed."""
    from torch._dynamo import list_backends, register_backend

    if "awq" not in list_backends(exclude_tags=()):
        from awq_compile.backend import awq_backend
        register_backend(awq_backend, name="awq")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--options", default="", help="backend options, k=v,k=v")
    ap.add_argument("--mode", default="reduce-overhead", choices=("reduce-overhead", "default"),
                    help="Inductor mode of both models: CUDA graphs, or none (every step's launches issued by the "
                         "host: the op's host cost per call shows)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="timed rounds of --steps steps, alternating the models (default: 1 with CUDA graphs, whose "
                         "steps do not wait for the host; 5 in the default mode, where they do)")
    args = ap.parse_args(argv)
    mode = None if args.mode == "default" else args.mode
    rounds = args.rounds if args.rounds is not None else (1 if mode else 5)
    if rounds < 1:
        ap.error("--rounds must be at least 1")
    opts = dict(kv.split("=") for kv in args.options.split(",") if kv)
    _ensure_backend()
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        awq, fp16 = build(args.layers, batch)
        torch._dynamo.reset()
        f16 = torch.compile(_own_step(fp16), mode=mode)
        # torch.compile refuses mode= together with options=: the backend takes the mode among its options
        fa = torch.compile(_own_step(awq), backend="awq", options={**opts, **({"mode": mode} if mode else {})})
        x16, xa = warm_up(f16, fp16, batch), warm_up(fa, awq, batch)
        # rounds alternate the two models, so a change in the host's load (a shared machine) falls on both
        t16, ta = [], []
        for _ in range(rounds):
            dt, y16 = timed_steps(f16, x16, args.steps)
            t16.append(batch * args.steps / dt)
            dt, ya = timed_steps(fa, xa, args.steps)
            ta.append(batch * args.steps / dt)
        tps16, tpsa = statistics.median(t16), statistics.median(ta)
        ratios = sorted(a / b for a, b in zip(ta, t16))
        err = ((ya - y16).norm() / y16.norm()).item()
        # one more step of each from a clean cache, eager, to show which side departs from the reference
        with torch.no_grad():
            x = torch.randn(batch, 1, HIDDEN, device="cuda", dtype=torch.float16) * 0.1
            outs = []
            for m, f in ((fp16, fp16), (awq, awq), (fp16, f16), (awq, fa)):
                for b in m.buffers():
                    if b.dim() == 4:
                        b.zero_()
                outs.append(f(x, torch.tensor([0], device="cuda")).float().clone())
            ref = outs[0]
            print("  first step vs eager fp16: eager awq %.1e, compiled fp16 %.1e, compiled awq %.1e" % tuple(
                ((o - ref).norm() / ref.norm()).item() for o in outs[1:]), flush=True)
        rows.append((batch, tps16, tpsa, err, ratios))
        spread = f" (rounds {ratios[0]:.2f}-{ratios[-1]:.2f}x)" if rounds > 1 else ""
        print(f"batch {batch}: fp16 Inductor {tps16:.0f} tok/s, awq {tpsa:.0f} tok/s ({tpsa / tps16:.2f}x{spread}), "
              f"rel. diff {err:.1e}", flush=True)
        del awq, fp16, f16, fa
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    print(f"\n{args.layers} Llama-3-8B layers, " + ("CUDA graphs (reduce-overhead)" if mode else
                                                  "Inductor's default mode (no CUDA graphs)"))
    if rounds > 1:
        print(f"tokens/s: the median of {rounds} alternating rounds of {args.steps} steps; rounds: the per-round speed-ups")
    print("batch  fp16 tok/s  awq tok/s  speed-up  rel.diff  rounds")
    for b, a16, aq, e, r in rows:
        print(f"{b:5d} {a16:11.0f} {aq:10.0f} {aq / a16:8.2f}x  {e:.1e}  {r[0]:.2f}-{r[-1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
