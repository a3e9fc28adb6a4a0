"""W4A16 GEMM benchmark: our op as the backend calls it vs fp16 cuBLAS, torch's int4 tinygemm and Inductor.

``python -m benchmarks.gemm [--shapes 4096x14336,...] [--ms 1,16,...] [--json out.json]``

For every K x N (g128, fp16) and M, each column is timed inside one CUDA graph that calls the operation
on R different weight copies (R chosen so the copies total >= 256 MB, well beyond the 50 MB L2), and the
median over graph replays is divided by R.  Columns:

* ``ours``     -- ``torch.ops.awq_compile.w4a16_linear`` on AWQ-format tensors, with the plan
                  ``registry.select`` makes for the detected target (what the backend bakes into graphs);
* ``cublas``   -- fp16 ``x @ W`` on the dequantised weight (torch.matmul -> cuBLAS);
* ``tinygemm`` -- ``torch._weight_int4pack_mm`` (bf16 activations, its own packing made by
                  ``torch._convert_weight_to_int4pack``);
* ``inductor`` -- ``torch.compile`` (default mode) of the pure-PyTorch AWQ dequant + matmul.

Also printed: measured device copy bandwidth (read + write) and the fp16 GEMM ceiling (8192^3).  Every
column's relative error is against a float64 reference of the same quantised weights.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import torch

import awq_compile.runtime.op  # noqa: F401  (registers torch.ops.awq_compile.w4a16_linear)
from awq_compile.kernels.problem import Problem
from awq_compile.kernels.registry import select
from awq_compile.target import detect

from .common import (AWQ, copies_for, copy_bandwidth_gbs, dequant64, gemm_ceiling_tflops, graph_time_us,
                     random_awq, rel_err, torch_awq_linear)

SHAPES = ((4096, 14336), (14336, 4096), (8192, 8192))
MS = (1, 16, 64, 256, 1024, 4096)
G = 128


def _tinygemm_pack(qweight, qzeros, scales, inner_k_tiles: int = 8):
    """(packed, scales_and_zeros) for torch._weight_int4pack_mm from AWQ tensors (bf16)."""
    u = AWQ.to_unpacked(qweight, qzeros, scales)
    codes = u.codes.t().contiguous()                        # [N, K] uint8
    b = (codes[:, 0::2] << 4) | codes[:, 1::2]              # [N, K/2], even k in the high nibble
    packed = torch._convert_weight_to_int4pack(b.contiguous(), inner_k_tiles)
    s = scales.to(torch.float32)
    z = u.zeros.to(torch.float32)
    # tinygemm: w = (q - 8) * scale + zero
    sz = torch.stack([s, (8.0 - z) * s], dim=-1).to(torch.bfloat16).contiguous()   # [K/G, N, 2]
    return packed, sz


def bench_shape(K, N, ms, columns, log=print):
    rows = []
    R = copies_for(K * N // 2)
    srcs = [random_awq(K, N, G, seed=r) for r in range(R)]
    w64 = dequant64(*srcs[0])
    target = detect(torch.device("cuda"))
    plan = select(Problem(K, N, G, True, "float16"), target)
    enc = plan.encode()
    log(f"# {K}x{N}: R={R} AWQ copies ({R * K * N / 2 / 1e6:.0f} MB of codes); plan on {target}: {plan.describe()}")
    w_bytes = K * N // 2 + (K // G) * N * 2 + (K // G) * N // 2       # codes + fp16 scales + packed zeros
    fp16 = None
    if "cublas" in columns:
        R16 = copies_for(K * N * 2)
        fp16 = [AWQ.to_unpacked(*srcs[r % R]).dequantize(torch.float16) for r in range(R16)]
    tiny = None
    if "tinygemm" in columns:
        tiny = [_tinygemm_pack(*s) for s in srcs]
        w64_bf = AWQ.to_unpacked(srcs[0][0], srcs[0][1], srcs[0][2].to(torch.bfloat16)).dequantize(torch.float64)
    compiled = torch.compile(torch_awq_linear) if "inductor" in columns else None
    for M in ms:
        x = torch.randn(M, K, dtype=torch.float16, device="cuda")
        ref = x.double() @ w64
        row = dict(K=K, N=N, M=M, R=R, plan_kernel=plan.entry_for(M).kernel,
                   plan_config=plan.entry_for(M).config_dict)
        flops = 2.0 * M * K * N

        def record(name, calls, check, nbytes, ref_=ref):
            try:
                err = rel_err(check(), ref_)
                us = graph_time_us(calls)
            except Exception as e:  # keep going: a peer failing is a result too
                log(f"  {name} failed at M={M}: {type(e).__name__}: {str(e)[:300]}")
                row[name] = None
                return
            row[name] = dict(us=us, err=err, gbs=nbytes / (us * 1e-6) / 1e9, tflops=flops / (us * 1e-6) / 1e12)

        if "ours" in columns:
            op = torch.ops.awq_compile.w4a16_linear
            calls = [(lambda s=s: op(x, s[0], s[1], s[2], None, [], "bench", "awq", G, enc, "")) for s in srcs]
            record("ours", calls, calls[0], w_bytes)
        if fp16 is not None:
            calls = [(lambda w=w: x @ w) for w in fp16]
            record("cublas", calls, calls[0], K * N * 2)
        if tiny is not None:
            xb = x.to(torch.bfloat16)
            calls = [(lambda t=t: torch._weight_int4pack_mm(xb, t[0], G, t[1])) for t in tiny]
            record("tinygemm", calls, calls[0], K * N // 2 + (K // G) * N * 4, ref_=xb.double() @ w64_bf)
        if compiled is not None:
            calls = [(lambda s=s: compiled(x, s[0], s[1], s[2], G)) for s in srcs]
            record("inductor", calls, calls[0], w_bytes)
        rows.append(row)
        cells = [f"{c}=" + ("fail" if row.get(c) is None else f"{row[c]['us']:.1f}us/err {row[c]['err']:.1e}")
                 for c in columns]
        log(f"  M={M:5d} [{row['plan_kernel']}] " + "  ".join(cells))
    del srcs, fp16, tiny, w64
    torch.cuda.empty_cache()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES))
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--columns", default="ours,cublas,tinygemm,inductor")
    ap.add_argument("--json", default=None, help="write every figure here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.gemm needs a GPU", file=sys.stderr)
        return 2
    torch._dynamo.config.cache_size_limit = 64
    columns = args.columns.split(",")
    dev = torch.cuda.get_device_properties(0)
    import triton
    meta = dict(date=datetime.date.today().isoformat(), device=dev.name, sms=dev.multi_processor_count,
                torch=torch.__version__, triton=triton.__version__, target=str(detect(torch.device("cuda"))))
    meta["copy_gbs"] = copy_bandwidth_gbs()
    meta["fp16_gemm_tflops"] = gemm_ceiling_tflops()
    print(f"# {meta}", flush=True)
    rows = []
    for spec in args.shapes.split(","):
        K, N = (int(v) for v in spec.split("x"))
        rows += bench_shape(K, N, [int(m) for m in args.ms.split(",")], columns,
                            log=lambda *a: print(*a, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    # summary table: µs per column, then ours vs cuBLAS and ours' share of copy bandwidth
    print(f"\ncopy {meta['copy_gbs']:.0f} GB/s, fp16 GEMM {meta['fp16_gemm_tflops']:.0f} TFLOP/s, {meta['device']}")
    print("shape       M      " + "".join(f"{c:>10s}" for c in columns) + "   ours/cuBLAS  ours GB/s (%copy)  kernel")
    for r in rows:
        cells = "".join(f"{(r[c]['us'] if r.get(c) else float('nan')):10.1f}" for c in columns)
        o, c = r.get("ours"), r.get("cublas")
        ratio = o["us"] / c["us"] if o and c else float("nan")
        gbs = o["gbs"] if o else float("nan")
        print(f"{r['K']}x{r['N']:<6} {r['M']:5d} {cells}   {ratio:10.2f}  {gbs:8.0f} ({100 * gbs / meta['copy_gbs']:3.0f}%)"
              f"  {r['plan_kernel']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
