"""How many kernels one call of our op launches (memset / copies / GEMM / casts), per M, on the GPU.

``python -m benchmarks.launch_count [--shape 4096x14336] [--ms 1,16,64,256] [--dtype float16]``

Each launch costs a few µs at decode sizes even inside a CUDA graph, so the op should be one kernel
where it can.  The call is profiled (torch.profiler, CUDA activity) after a warm-up; every device
kernel, memset and memcpy of one call is listed.
"""

from __future__ import annotations

import argparse

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4096x14336")
    ap.add_argument("--ms", default="1,16,64,256")
    ap.add_argument("--dtype", default="float16")
    args = ap.parse_args(argv)
    import awq_compile.runtime.op  # noqa: F401
    from awq_compile.kernels.problem import Problem
    from awq_compile.kernels.registry import select
    from awq_compile.target import detect

    from .common import random_awq

    K, N = (int(v) for v in args.shape.split("x"))
    dtype = getattr(torch, args.dtype)
    q, z, s = random_awq(K, N, 128, dtype=dtype)
    plan = select(Problem(K, N, 128, True, args.dtype), detect(torch.device("cuda")))
    enc = plan.encode()
    op = torch.ops.awq_compile.w4a16_linear
    for M in (int(m) for m in args.ms.split(",")):
        x = torch.randn(M, K, dtype=dtype, device="cuda")
        for _ in range(2):
            op(x, q, z, s, None, [], "bench", "awq", 128, enc, "")
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            op(x, q, z, s, None, [], "bench", "awq", 128, enc, "")
            torch.cuda.synchronize()
        names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        print(f"M={M:5d} [{plan.entry_for(M).kernel}] {len(names)} device ops: " + "; ".join(n[:60] for n in names),
              flush=True)


if __name__ == "__main__":
    main()
