"""Compile-time repack throughput and weight memory, on a Llama-3-8B-sized set of layers.

``python -m benchmarks.repack [--layers 8]``: AWQ q/k/v/o/gate/up/down of hidden 4096, intermediate
14336, 8 KV heads (g128, fp16 scales), repacked through the op's weight cache exactly as the backend's
prepack pass does -- once with the default (a separate standard-layout copy) and once with
``reuse=True`` (the ``reuse_weight_memory`` option: rewritten in place).  Throughput counts AWQ bytes
(qweight + qzeros + scales) per second; memory is ``torch.cuda.memory_allocated`` /
``max_memory_allocated`` over the AWQ bytes.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from awq_compile.runtime.weights import WeightCache
from .common import random_awq

LAYER = ((4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096), (4096, 14336), (4096, 14336), (14336, 4096))


def run(layers: int, reuse: bool):
    torch.cuda.empty_cache()
    srcs = [random_awq(K, N, 128, seed=i) for i in range(layers) for K, N in LAYER]
    nbytes = sum(t.numel() * t.element_size() for s in srcs for t in s)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    cache = WeightCache()
    t0 = time.perf_counter()
    for i, (q, z, s) in enumerate(srcs):
        cache.get("awq", q, z, s, layer=f"l{i}", reuse=reuse)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    held = torch.cuda.memory_allocated() - base + nbytes
    peak = torch.cuda.max_memory_allocated() - base + nbytes
    res = dict(reuse=reuse, awq_mb=nbytes / 1e6, seconds=dt, gbs=nbytes / dt / 1e9,
               held_ratio=held / nbytes, peak_ratio=peak / nbytes)
    del cache, srcs
    torch.cuda.empty_cache()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args(argv)
    run(1, False)  # warm-up: kernels, allocator
    print("mode        AWQ MB   seconds   GB/s   held/AWQ  peak/AWQ")
    for reuse in (False, True):
        r = run(args.layers, reuse)
        print(f"{'in-place' if reuse else 'copy':9s} {r['awq_mb']:8.0f} {r['seconds']:9.3f} {r['gbs']:6.2f} "
              f"{r['held_ratio']:9.3f} {r['peak_ratio']:9.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
