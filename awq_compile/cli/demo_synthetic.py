"""``python -m awq_compile demo --synthetic``: compile the embedded random-weight Llama-style AWQ model and compare with eager."""

from __future__ import annotations

import argparse
import time

import torch


def _time(fn, iters: int, sync) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m awq_compile demo --synthetic", description=__doc__)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--target", default=None, help="override the detected target, e.g. hip:gfx942")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args(argv)

    import awq_compile
    from awq_compile.models import LlamaConfig, build_demo_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = LlamaConfig()
    print(f"awq_compile demo: Llama-style decoder, {config.layers} layers, hidden {config.hidden}, "
          f"AWQ 4-bit g{config.group_size}, fp16, on {device}")
    model = build_demo_model(config, device=device)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=device,
                           generator=torch.Generator(device=device).manual_seed(1))
    options = {"target": args.target} if args.target else None

    print(awq_compile.explain(model, tokens, target=args.target))

    compiled = torch.compile(model, backend="awq", options=options)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = compiled(tokens)
        sync()
        compile_s = time.perf_counter() - t0
        ref = model(tokens)
        ref64 = ref.double()
        err = (out.double() - ref64).abs().max().item()
        rel = ((out.double() - ref64).norm() / ref64.norm()).item()
        eager_s = _time(lambda: model(tokens), args.iters, sync)
        compiled_s = _time(lambda: compiled(tokens), args.iters, sync)
    print(f"\ncompile (first call): {compile_s:.1f} s")
    print(f"max |compiled - eager| = {err:.4g}, relative error {rel:.3g}")
    print(f"eager {eager_s * 1e3:.2f} ms/forward, compiled {compiled_s * 1e3:.2f} ms/forward "
          f"({eager_s / compiled_s:.2f}x)")
    ok = rel <= 1e-2
    print("OK" if ok else "MISMATCH: compiled output differs from eager beyond fp16 rounding")
    return 0 if ok else 1
