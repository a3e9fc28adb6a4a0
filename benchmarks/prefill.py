"""Prefill throughput of a Llama-3-8B-shaped decoder: ``backend="awq"`` vs the fp16 model under Inductor.

``python -m benchmarks.prefill [--layers 4] [--tokens 2048] [--batch 1] [--repeats 10]``

The models are :mod:`benchmarks.decode`'s (real layer sizes, random weights, the AWQ model's linears are
AutoAWQ-style modules dequantising in forward, the fp16 model holds the same quantised weights
dequantised).  One prefill = the whole prompt (``tokens`` positions per sequence, causal attention over a
static KV cache of exactly that length) through every layer, so every linear runs at M = batch x tokens
(2048 by default: the large-M GEMM path).  Both are compiled with Inductor's default mode (a prefill is
one long launch sequence; CUDA graphs buy little there).  Reports tokens/s (batch x tokens / median time
of ``repeats`` prefills) and the two models' agreement.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from .decode import HIDDEN, _ensure_backend, build


def prefill_time_s(model, x, pos, repeats: int, warm: int = 3) -> tuple[float, torch.Tensor]:
    """Median seconds of one prefill (CUDA events), and its output."""
    with torch.no_grad():
        for _ in range(warm):
            y = model(x, pos)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            y = model(x, pos)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1000.0)
    return statistics.median(times), y.float().clone()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    _ensure_backend()
    awq, fp16 = build(args.layers, args.batch, ctx=args.tokens)
    torch.manual_seed(1)
    x = torch.randn(args.batch, args.tokens, HIDDEN, device="cuda", dtype=torch.float16) * 0.1
    pos = torch.arange(args.tokens, device="cuda")
    results = {}
    for label, model, kwargs in (("fp16 Inductor", fp16, {}), ("awq", awq, {"backend": "awq"})):
        torch._dynamo.reset()
        compiled = torch.compile(model, **kwargs)
        results[label] = prefill_time_s(compiled, x, pos, args.repeats)
        del compiled
    with torch.no_grad():
        ref = fp16(x, pos).float()          # eager fp16 on the same quantised weights
    n = args.batch * args.tokens
    print(f"\n{args.layers} Llama-3-8B layers, prefill of {args.batch} x {args.tokens} tokens (M = {n})")
    print("model           ms/prefill   tokens/s   rel.diff vs eager fp16")
    for label, (t, y) in results.items():
        err = ((y - ref).norm() / ref.norm()).item()
        print(f"{label:15s} {t * 1e3:10.2f} {n / t:10.0f}   {err:.1e}")
    t16, ta = results["fp16 Inductor"][0], results["awq"][0]
    print(f"awq / fp16 tokens/s: {t16 / ta:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
