"""Host (CPU) cost of one call of our op, next to the launches it is made of.

``python -m benchmarks.host_overhead [--shape 4096x4096] [--ms 1,16,256,2048] [--calls 400] [--profile 1,2048]``

Where a model runs without CUDA graphs (a prefill under Inductor's default mode, eager decode), the GPU
waits for the host whenever the host takes longer to issue a layer's launches than the GPU takes to run
them, so the op's Python is part of the time a user sees.  Per (M, column): the 20th percentile of
``--calls`` host-side timings of one call (``time.perf_counter`` around the call only; the stream is synchronised
every 32 calls, outside the timing, so the launch queue never fills and blocks the host):

* ``op``       -- ``torch.ops.awq_compile.w4a16_linear`` (what the compiled graph calls), AWQ tensors;
* ``launch``   -- :func:`awq_compile.kernels.triton.launch.launch` of the plan's prebuilt launch plan on the
  prepared weight (the op minus its checks, plan and cache lookups);
* ``triton``   -- the jit function's own launch (``fn[grid](*args, **kwargs)``) with prebuilt arguments;
* ``direct``   -- the same arguments through a :class:`~awq_compile.kernels.triton.compiled.KernelLauncher` (the
  kernel Triton compiled, launched without Triton's binding and cache lookup; what ``launch`` uses);
* ``mm``       -- ``torch.mm`` of x with a dense [K, N] weight (a floor for one launch through torch).

``--profile`` prints a cProfile of the op's calls at those M (top functions by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time

import torch

import awq_compile.runtime.op  # noqa: F401  (registers torch.ops.awq_compile.w4a16_linear)
from awq_compile.kernels.problem import Problem
from awq_compile.kernels.registry import select
from awq_compile.kernels.spec import LaunchOptions, Operands
from awq_compile.kernels.triton.compiled import KernelLauncher
from awq_compile.kernels.triton.launch import launch, planned
from awq_compile.runtime.weights import weight_cache
from awq_compile.target import detect

from .common import random_awq

G = 128


def host_us(call, calls: int) -> float:
    """Host µs of ``call()``: the 20th percentile of ``calls`` timings (the GPU synchronised every 32 calls,
    outside the timed region) -- the device's host is shared, and a low quantile is what the code costs
    when nothing else takes the core (the median moved by up to 30% between processes)."""
    for _ in range(8):
        call()
    torch.cuda.synchronize()
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if i % 32 == 31:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return statistics.quantiles(times, n=5)[0] * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="4096x4096")
    ap.add_argument("--ms", default="1,16,256,2048")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--profile", default="1,2048")
    args = ap.parse_args(argv)
    K, N = (int(v) for v in args.shape.split("x"))
    ms = [int(m) for m in args.ms.split(",")]
    prof_ms = {int(m) for m in args.profile.split(",") if m}
    target = detect(torch.device("cuda"))
    q, z, s = random_awq(K, N, G)
    plan = select(Problem(K, N, G, True, "float16"), target)
    enc = plan.encode()
    op = torch.ops.awq_compile.w4a16_linear
    dense = torch.randn(K, N, dtype=torch.float16, device="cuda")
    print(f"# {K}x{N} fp16 g{G} on {target}, torch {torch.__version__}; plan: {plan.describe()}")
    print("     M  kernel          op µs  launch µs  triton µs  direct µs   mm µs")
    for M in ms:
        x = torch.randn(M, K, dtype=torch.float16, device="cuda")
        op(x, q, z, s, None, [], "bench", "awq", G, enc, "")          # prepares the weight
        prepared = weight_cache().get("awq", q, z, s, layout=plan.layout)
        w = prepared.packed(q, s, z)
        entry = plan.entry_for(M)
        row = {"op": host_us(lambda: op(x, q, z, s, None, [], "bench", "awq", G, enc, ""), args.calls)}
        if entry.config is not None:
            problem = Problem(K, N, G, True, "float16", m=M, layout=w.layout)
            lp = planned(entry.kernel, entry.config, entry.launch or LaunchOptions(), problem, target, False)
            out = torch.empty(M, N, dtype=torch.float16, device="cuda")
            row["launch"] = host_us(lambda: launch(lp, x, w.qweight, w.qzeros, w.scales, None, out), args.calls)
            if not (lp.x_regroup or lp.x_kplanes or lp.dense_weight):
                ops = Operands(x, w.qweight, w.qzeros, w.scales, None, out)
                if lp.workspace is not None:
                    from awq_compile.kernels.triton.launch import workspace
                    ops.workspace, ops.tickets = workspace(x.device, *lp.workspace, lp.workspace_kind)
                a, kw, fn, grid = lp.arguments(ops), lp.kwargs, lp.fn, lp.grid
                row["triton"] = host_us(lambda: fn[grid](*a, **kw), args.calls)
                direct = KernelLauncher(fn, grid, kw)
                row["direct"] = host_us(lambda: direct(*a), args.calls)
                if not direct.direct:
                    print(f"# M={M}: the compiled-kernel launch was not taken ({direct.full} launches through Triton)")
        row["mm"] = host_us(lambda: torch.mm(x, dense), args.calls)
        cells = "  ".join(f"{row[c]:9.1f}" if c in row else "      n/a" for c in ("op", "launch", "triton", "direct", "mm"))
        print(f"{M:6d}  {entry.kernel:14s} {cells}", flush=True)
        if M in prof_ms:
            pr = cProfile.Profile()
            pr.enable()
            for i in range(200):
                op(x, q, z, s, None, [], "bench", "awq", G, enc, "")
                if i % 32 == 31:
                    torch.cuda.synchronize()
            pr.disable()
            torch.cuda.synchronize()
            buf = io.StringIO()
            pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(25)
            print(f"## cProfile, 200 op calls at M={M} (own time)\n" + buf.getvalue(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
