"""GPU checks of the matched spellings (skipped without CUDA/ROCm): CUDA graphs (``mode="reduce-overhead"``)
across batch sizes, shared graphs under CUDA graphs, and real-sized spellings through Inductor.

Run on the device machine: ``python -m pytest tests/test_gpu_patterns.py -q``.
"""

import os
import sys

import pytest
import torch

import awq_compile
from awq_compile.backend import awq_backend

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "passes"))
from _spellings import SpelledLinear, Spelling, normalized, reference  # noqa: E402
from _util import rel_err  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU")

M_VALUES = (1, 7, 64, 300)


def gpu_layer(K, N, G, seed=0, dtype=torch.float16, **kw):
    sp = normalized(Spelling(**kw))
    bias = torch.randn(N, generator=torch.Generator().manual_seed(seed)) if sp.bias != "none" else None
    return SpelledLinear(sp, K, N, G, dtype=dtype, bias=bias, seed=seed).cuda()


def check(out, mod, x, tol):
    assert torch.isfinite(out).all()
    err = rel_err(out.cpu(), reference(mod, x.cpu()))
    assert err < tol, err


class Counting:
    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs, **kw):
        self.graphs += 1
        return awq_backend(gm, example_inputs, **kw)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("kw", [dict(bias="add"), dict(fmt="gptq_v2", g_idx="trivial", matmul="linear"),
                                dict(fmt="awq_sym", x3d="3d", bias="iadd")])
def test_reduce_overhead_cuda_graphs_are_correct_for_every_m(dynamic, kw):
    mod = gpu_layer(1024, 1000, 128, seed=1, **kw)
    compiled = torch.compile(mod, backend="awq", mode="reduce-overhead", dynamic=dynamic)
    with torch.no_grad():
        for _ in range(3):  # warm-up, record, replay
            for M in M_VALUES:
                x = torch.randn(M, 1024, dtype=torch.float16, device="cuda")
                out = compiled(x).clone()  # replays overwrite the graph's output buffer
                check(out, mod, x, 2e-3)


def test_reduce_overhead_with_a_second_instance_sharing_the_graph():
    a, b = gpu_layer(512, 256, 64, seed=2), gpu_layer(512, 256, 64, seed=3)
    ca = torch.compile(a, backend="awq", mode="reduce-overhead")
    cb = torch.compile(b, backend="awq", mode="reduce-overhead")
    with torch.no_grad():
        for _ in range(3):
            for M in M_VALUES:
                x = torch.randn(M, 512, dtype=torch.float16, device="cuda")
                ya, yb = ca(x).clone(), cb(x).clone()
                check(ya, a, x, 2e-3)
                check(yb, b, x, 2e-3)


@pytest.mark.parametrize("kw, dtype", [
    (dict(), torch.float16),
    (dict(shift="op", codes="int64", mask="twice", reorder="index_select", group="unflatten"), torch.float16),
    (dict(fmt="gptq_v1", g_idx="trivial", combine="mul_sub"), torch.float16),
    (dict(recast_scales=True, bias="add_"), torch.bfloat16),
    (dict(matmul="at_t", cast=True, no_grad=True), torch.float16),
])
def test_spellings_through_inductor_on_the_gpu(kw, dtype):
    mod = gpu_layer(2048, 1000, 128, seed=4, **kw)
    backend = Counting()
    compiled = torch.compile(mod, backend=backend, dynamic=True)
    x_dtype = dtype if mod.sp.recast_scales else torch.float32 if mod.sp.cast else torch.float16
    with torch.no_grad():
        for M in M_VALUES:
            x = torch.randn(M, 2048, device="cuda").to(x_dtype)
            check(compiled(x), mod, x, 1e-2 if torch.bfloat16 in (dtype, x_dtype) else 2e-3)
    assert backend.graphs <= 2  # M=1 may get its own graph (Dynamo's 0/1 specialisation)
    report = awq_compile.explain(mod, torch.randn(4, 2048, device="cuda").to(x_dtype))
    assert len(report.layers) == 1 and report.layers[0].format == mod.sp.fmt
