"""Run our op once per M (after a warm-up) for one shape, for a hardware profiler to look at.

``ncu --clock-control none --kernel-name regex:_kernel --launch-skip-before-match 0 \\
     --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \\
     --section WarpStateStats --section LaunchStats python -m benchmarks.profile --ms 1,16,64,256``

Every M is first run once outside the profiled region (compile, workspace) and then once more between
``cudaProfilerStart``/``Stop``, so ``ncu --profile-from-start off`` sees exactly one launch set per M.
Weights are random AWQ tensors repacked the way the backend does; the plan is ``registry.select``'s for
the detected target.
"""

from __future__ import annotations

import argparse
import sys

import torch

import awq_compile.runtime.op  # noqa: F401
from awq_compile.kernels.problem import Problem
from awq_compile.kernels.registry import select
from awq_compile.target import detect

from .common import AWQ, random_awq


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4096x14336")
    ap.add_argument("--ms", default="1,16,64,256,1024")
    args = ap.parse_args(argv)
    K, N = (int(v) for v in args.shape.split("x"))
    G = 128
    qw, qz, sc = random_awq(K, N, G)
    plan = select(Problem(K, N, G, True, "float16"), detect(torch.device("cuda")))
    enc = plan.encode()
    ms = [int(m) for m in args.ms.split(",")]
    xs = {m: torch.randn(m, K, dtype=torch.float16, device="cuda") for m in ms}
    op = torch.ops.awq_compile.w4a16_linear
    call = lambda x: op(x, qw, qz, sc, None, [], "profile", "awq", G, enc, "")   # noqa: E731
    for m in ms:
        call(xs[m])
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for m in ms:
        print(f"M={m}: {plan.entry_for(m).kernel} {plan.entry_for(m).config_dict}", flush=True)
        call(xs[m])
        torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
