"""Shared pieces of the benchmarks: random AWQ weights, float64 references, CUDA-graph timing."""

from __future__ import annotations

import math
import statistics

import torch

from awq_compile.formats import get_format
from awq_compile.models.awq_linear import dequantize_awq

AWQ = get_format("awq")


def random_awq(K: int, N: int, G: int, dtype=torch.float16, device="cuda", seed: int = 0):
    """Random AWQ GEMM tensors (every nibble value occurs; scales like a real checkpoint's)."""
    g = torch.Generator(device=device).manual_seed(seed)
    qweight = torch.randint(-2**31, 2**31 - 1, (K, N // 8), dtype=torch.int32, device=device, generator=g)
    qzeros = torch.randint(-2**31, 2**31 - 1, (K // G, N // 8), dtype=torch.int32, device=device, generator=g)
    scales = (torch.rand(K // G, N, device=device, generator=g) * 0.01 + 0.002).to(dtype)
    return qweight, qzeros, scales


def dequant64(qweight, qzeros, scales):
    return AWQ.to_unpacked(qweight, qzeros, scales).dequantize(torch.float64)


def rel_err(y, ref) -> float:
    y = y.double()
    if not torch.isfinite(y).all():
        return float("nan")
    return ((y - ref).norm() / ref.norm()).item()


def copies_for(bytes_per_copy: int, total: int = 256 << 20, lo: int = 2, hi: int = 64) -> int:
    """How many weight copies make the rotated set well above L2 (50 MB on the H100)."""
    return max(lo, min(hi, math.ceil(total / max(bytes_per_copy, 1))))


def graph_time_us(calls, replays: int = 20, warm: int = 2) -> float:
    """Median µs per call of ``calls`` (a list of R closures, each on its own weights) replayed in one graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warm):
            for c in calls:
                c()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000.0 / len(calls))
    del g
    return statistics.median(times)


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy, counting bytes read plus bytes written (GB/s)."""
    a = torch.empty(nbytes // 2, dtype=torch.float16, device="cuda").uniform_()
    b = torch.empty_like(a)
    t = graph_time_us([lambda: b.copy_(a)], replays=20)
    return 2 * a.numel() * 2 / (t * 1e-6) / 1e9


def gemm_ceiling_tflops(n: int = 8192) -> float:
    a = torch.randn(n, n, dtype=torch.float16, device="cuda")
    b = torch.randn(n, n, dtype=torch.float16, device="cuda")
    t = graph_time_us([lambda: a @ b], replays=10)
    return 2 * n ** 3 / (t * 1e-6) / 1e12


def torch_awq_linear(x, qweight, qzeros, scales, group_size: int):
    """The pure-PyTorch AWQ dequant + matmul (AutoAWQ's fallback spelling) that Inductor compiles."""
    return torch.matmul(x, dequantize_awq(qweight, qzeros, scales, group_size))


def median(xs):
    return statistics.median(xs)
