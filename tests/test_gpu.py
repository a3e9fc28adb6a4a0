"""GPU end to end (skipped without CUDA/ROCm): real Triton kernels, the backend through Inductor.

Run on the device machine: ``python -m pytest tests/test_gpu.py -q``.
"""

import copy

import pytest
import torch
from torch import nn

import awq_compile
import awq_compile.runtime.op  # noqa: F401
from awq_compile.formats import quantize, to_awq
from awq_compile.kernels.problem import Problem
from awq_compile.kernels.registry import select
from awq_compile.models import AwqLinear, LlamaConfig, build_demo_model
from awq_compile.target import detect
from _util import rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("K, N, G", [(4096, 4096, 128), (1024, 1000, 32), (512, 2048, 512)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_every_plan_bucket_on_the_gpu(dtype, K, N, G, with_bias):
    u = quantize(torch.randn(K, N), G)
    q, qz, s = (t.cuda() for t in to_awq(u))
    s = s.to(dtype)
    target = detect(torch.device("cuda"))
    plan = select(Problem(K, N, G, True, str(dtype)[6:]), target)
    w64 = u.dequantize(torch.float64).cuda()
    bias = torch.randn(N, dtype=dtype, device="cuda") if with_bias else None
    for M in (1, 2, 3, 4, 7, 16, 33, 64, 300, 1100):
        x = torch.randn(M, K, dtype=dtype, device="cuda")
        ref = x.double() @ w64 + (bias.double() if with_bias else 0)
        for _ in range(2):  # twice: split-K workspaces must be left clean
            y = torch.ops.awq_compile.w4a16_linear(x, q, qz, s, bias, [], "gpu", "awq", G, plan.encode(), "")
            assert torch.isfinite(y).all()
            err = rel_err(y, ref)
            assert err < (1e-2 if dtype == torch.bfloat16 else 2e-3), (M, plan.entry_for(M), err)


def test_demo_model_on_gpu_through_inductor():
    c = LlamaConfig()
    model = build_demo_model(c, device="cuda", seed=4)
    tokens = torch.randint(0, c.vocab_size, (2, 16), device="cuda")
    report = awq_compile.explain(model, tokens)
    assert len(report.layers) == 7 * c.layers
    assert {k for lay in report.layers for k in lay.kernels.values()} <= {
        "triton_gemv", "triton_gemv_stream", "triton_gemm", "triton_gemm_planes", "triton_gemm_wide", "triton_dequant_mm",
        "triton_stripe"}
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="awq")(tokens)
        ref = copy.deepcopy(model).double()(tokens)
    assert rel_err(out, ref) <= 1e-2


def test_two_instances_on_gpu():
    def make(seed):
        torch.manual_seed(seed)
        return AwqLinear.from_float(nn.Linear(512, 256), 128).cuda().eval()

    a, b = make(1), make(2)
    x = torch.randn(5, 512, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        ya = torch.compile(a, backend="awq")(x)
        yb = torch.compile(b, backend="awq")(x)
        assert rel_err(ya, copy.deepcopy(a).double()(x)) < 2e-3
        assert rel_err(yb, copy.deepcopy(b).double()(x)) < 2e-3
