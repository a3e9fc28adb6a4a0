"""W4A16 GEMM benchmark: our op as the backend calls it vs fp16 cuBLAS, torch's int4 tinygemm and Inductor.

``python -m benchmarks.gemm [--shapes 4096x14336,...] [--ms 1,16,...] [--dtypes float16,bfloat16]
[--peers DIR] [--json out.json]``

For every K x N (g128, fp16) and M, each column is timed inside one CUDA graph that calls the operation
on R different weight copies (R chosen so the copies total >= 256 MB, well beyond the 50 MB L2), and the
median over graph replays is divided by R.  Columns:

* ``ours``     -- ``torch.ops.awq_compile.w4a16_linear`` on AWQ-format tensors, with the plan
                  ``registry.select`` makes for the detected target (what the backend bakes into graphs);
* ``ours_std`` -- the same op with the plan made for the ``standard`` weight layout (``select(...,
                  layout="standard")``): on a target whose table asks for ``kplanes`` (sm90), what the plan
                  would be without the layout decision -- the "before" of that change, in the same process;
* ``cublas``   -- fp16 ``x @ W`` on the dequantised weight (torch.matmul -> cuBLAS);
* ``tinygemm`` -- ``torch._weight_int4pack_mm`` (bf16 activations, its own packing made by
                  ``torch._convert_weight_to_int4pack``);
* ``inductor`` -- ``torch.compile`` (default mode) of the pure-PyTorch AWQ dequant + matmul;
* ``samebytes`` -- the same-bytes ceiling: fp16 cuBLAS ``x[:, :K/4] @ W`` on a weight [K/4, N] holding as many
                  bytes as the int4 codes (what a dense GEMM reading our byte count costs; no error column);
* ``marlin``, ``machete`` -- vLLM's compiled Marlin (``marlin_gemm``, AWQ zero points) and Machete
                  (``machete_mm``, CUTLASS wgmma) when ``--peers DIR`` (or ``$AWQ_BENCH_PEERS``) names a folder
                  holding ``vllm_peers.py`` and vLLM's ``_C_stable_libtorch.abi3.so[.xz]``; left out, with the
                  reason printed, when the folder is absent or the library does not load.  fp16 only.

Also printed: measured device copy bandwidth (read + write) and the fp16 GEMM ceiling (8192^3).  Every
column's relative error is against a float64 reference of the same quantised weights.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
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


PEER_COLUMNS = ("marlin", "machete")


def load_peers(folder: str | None, log=print):
    """vLLM's kernels through the adapter module in ``folder`` (None when absent or unloadable).

    The project never depends on them: the folder is a benchmark-time extra, carried to the device.
    """
    if not folder:
        return None
    path = os.path.join(folder, "vllm_peers.py")
    lib = next((os.path.join(folder, f) for f in ("_C_stable_libtorch.abi3.so", "_C_stable_libtorch.abi3.so.xz")
                if os.path.exists(os.path.join(folder, f))), None)
    if not os.path.exists(path) or lib is None:
        log(f"# peers: {folder} lacks vllm_peers.py or _C_stable_libtorch.abi3.so[.xz]; no Marlin/Machete columns")
        return None
    spec = importlib.util.spec_from_file_location("_awq_bench_vllm_peers", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
        ok = mod.load(lib)
    except Exception as e:  # a peer that cannot load is reported, never fatal
        log(f"# peers: loading {lib} failed: {type(e).__name__}: {str(e)[:300]}")
        return None
    if not ok:
        log(f"# peers: {lib} loaded without marlin_gemm/machete_mm; no Marlin/Machete columns")
        return None
    return mod


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


def bench_shape(K, N, ms, columns, log=print, dtype=torch.float16, peers=None):
    rows = []
    R = copies_for(K * N // 2)
    srcs = [random_awq(K, N, G, dtype=dtype, seed=r) for r in range(R)]
    w64 = dequant64(*srcs[0])
    target = detect(torch.device("cuda"))
    dname = str(dtype).replace("torch.", "")
    plan = select(Problem(K, N, G, True, dname), target)
    enc = plan.encode()
    log(f"# {K}x{N} {dname}: R={R} AWQ copies ({R * K * N / 2 / 1e6:.0f} MB of codes); plan on {target}: "
        f"{plan.describe()}")
    plan_std = select(Problem(K, N, G, True, dname), target, layout="standard")
    enc_std = plan_std.encode()
    if "ours_std" in columns:
        log(f"#   ours_std plan: {plan_std.describe()}")
    w_bytes = K * N // 2 + (K // G) * N * 2 + (K // G) * N // 2       # codes + fp16 scales + packed zeros
    fp16 = None
    if "cublas" in columns:
        R16 = copies_for(K * N * 2)
        fp16 = [AWQ.to_unpacked(*srcs[r % R]).dequantize(dtype) for r in range(R16)]
    same = None
    if "samebytes" in columns:   # a dense weight of K/4 rows: as many bytes as the int4 codes
        same = [torch.randn(K // 4, N, dtype=dtype, device="cuda") for _ in range(R)]
    peer_d = None
    if peers is not None and any(c in columns for c in PEER_COLUMNS):
        peer_d = [dict(qweight=q, qzeros=z, scales=s) for q, z, s in srcs]
    tiny = None
    if "tinygemm" in columns:
        tiny = [_tinygemm_pack(*s) for s in srcs]
        w64_bf = AWQ.to_unpacked(srcs[0][0], srcs[0][1], srcs[0][2].to(torch.bfloat16)).dequantize(torch.float64)
    compiled = torch.compile(torch_awq_linear) if "inductor" in columns else None
    for M in ms:
        x = torch.randn(M, K, dtype=dtype, device="cuda")
        ref = x.double() @ w64
        row = dict(K=K, N=N, M=M, R=R, dtype=dname, plan_kernel=plan.entry_for(M).kernel,
                   plan_config=plan.entry_for(M).config_dict, layout=plan.layout,
                   std_kernel=plan_std.entry_for(M).kernel, std_config=plan_std.entry_for(M).config_dict)
        flops = 2.0 * M * K * N

        def record(name, calls, check, nbytes, ref_=ref):
            try:
                err = rel_err(check(), ref_) if ref_ is not None else None
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
        if "ours_std" in columns:
            op = torch.ops.awq_compile.w4a16_linear
            calls = [(lambda s=s: op(x, s[0], s[1], s[2], None, [], "bench", "awq", G, enc_std, "")) for s in srcs]
            record("ours_std", calls, calls[0], w_bytes)
        if fp16 is not None:
            calls = [(lambda w=w: x @ w) for w in fp16]
            record("cublas", calls, calls[0], K * N * 2)
        if same is not None:
            xs = x[:, : K // 4].contiguous()
            calls = [(lambda w=w: xs @ w) for w in same]
            record("samebytes", calls, calls[0], K * N // 2, ref_=None)
        if peer_d is not None:
            for name, factory in (("marlin", peers.impl_awq_marlin), ("machete", peers.impl_machete)):
                if name not in columns:
                    continue
                try:
                    calls = [factory(d, K, N, G, x) for d in peer_d]
                except Exception as e:
                    log(f"  {name} failed to prepare at M={M}: {type(e).__name__}: {str(e)[:300]}")
                    calls = [None]
                if any(c is None for c in calls):
                    row[name] = None
                    continue
                record(name, calls, calls[0], w_bytes)
        if tiny is not None:
            xb = x.to(torch.bfloat16)
            calls = [(lambda t=t: torch._weight_int4pack_mm(xb, t[0], G, t[1])) for t in tiny]
            record("tinygemm", calls, calls[0], K * N // 2 + (K // G) * N * 4, ref_=xb.double() @ w64_bf)
        if compiled is not None:
            calls = [(lambda s=s: compiled(x, s[0], s[1], s[2], G)) for s in srcs]
            record("inductor", calls, calls[0], w_bytes)
        rows.append(row)
        cells = [f"{c}=" + ("n/a" if row.get(c) is None else f"{row[c]['us']:.1f}us"
                                + ("" if row[c]["err"] is None else f"/err {row[c]['err']:.1e}"))
                 for c in columns]
        log(f"  M={M:5d} [{row['plan_kernel']}] " + "  ".join(cells))
    del srcs, fp16, tiny, w64, same, peer_d
    torch.cuda.empty_cache()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES))
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--columns", default="ours,cublas,samebytes,tinygemm,inductor,marlin,machete",
                    help="marlin/machete need --peers")
    ap.add_argument("--dtypes", default="float16", help="activation dtypes, e.g. float16,bfloat16")
    ap.add_argument("--peers", default=os.environ.get("AWQ_BENCH_PEERS"),
                    help="folder with vllm_peers.py and vLLM's kernel library (default $AWQ_BENCH_PEERS)")
    ap.add_argument("--json", default=None, help="write every figure here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.gemm needs a GPU", file=sys.stderr)
        return 2
    torch._dynamo.config.cache_size_limit = 64
    columns = args.columns.split(",")
    peers = load_peers(args.peers, log=lambda *a: print(*a, flush=True)) if any(
        c in columns for c in PEER_COLUMNS) else None
    if peers is None:
        columns = [c for c in columns if c not in PEER_COLUMNS]
    dev = torch.cuda.get_device_properties(0)
    import triton
    meta = dict(date=datetime.date.today().isoformat(), device=dev.name, sms=dev.multi_processor_count,
                torch=torch.__version__, triton=triton.__version__, target=str(detect(torch.device("cuda"))))
    meta["peers"] = args.peers if peers is not None else None
    meta["copy_gbs"] = copy_bandwidth_gbs()
    meta["fp16_gemm_tflops"] = gemm_ceiling_tflops()
    print(f"# {meta}", flush=True)
    rows = []
    for dname in args.dtypes.split(","):
        for spec in args.shapes.split(","):
            K, N = (int(v) for v in spec.split("x"))
            rows += bench_shape(K, N, [int(m) for m in args.ms.split(",")], columns,
                                log=lambda *a: print(*a, flush=True), dtype=getattr(torch, dname), peers=peers)
            if args.json:       # after every shape: a run cut short keeps what it measured
                with open(args.json, "w") as f:
                    json.dump(dict(meta=meta, rows=rows), f, indent=1)
    # summary table: µs per column, then ours vs cuBLAS and ours' share of copy bandwidth
    print(f"\ncopy {meta['copy_gbs']:.0f} GB/s, fp16 GEMM {meta['fp16_gemm_tflops']:.0f} TFLOP/s, {meta['device']}")
    print("shape       dtype    M      " + "".join(f"{c:>10s}" for c in columns)
          + "   ours/cuBLAS  ours/peer  ours GB/s (%copy)  kernel")
    for r in rows:
        cells = "".join(f"{(r[c]['us'] if r.get(c) else float('nan')):10.1f}" for c in columns)
        o, c = r.get("ours"), r.get("cublas")
        ratio = o["us"] / c["us"] if o and c else float("nan")
        # the bar: the fastest of the peer kernels a user runs today (tinygemm is torch's own)
        best_peer = min((r[p]["us"] for p in PEER_COLUMNS + ("tinygemm",) if r.get(p)), default=float("nan"))
        pr = o["us"] / best_peer if o else float("nan")
        gbs = o["gbs"] if o else float("nan")
        print(f"{r['K']}x{r['N']:<6} {r['dtype']:8s} {r['M']:5d} {cells}   {ratio:10.2f}  {pr:9.2f}  {gbs:8.0f} ({100 * gbs / meta['copy_gbs']:3.0f}%)"
              f"  {r['plan_kernel']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
