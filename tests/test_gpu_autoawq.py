"""AutoAWQ's own ``WQLinear_GEMM`` under ``backend="awq"`` on a GPU (issue 9 item 0).

With triton installed its forward launches AutoAWQ's Triton GEMM into a buffer it allocated; Dynamo
records the launch as ``triton_kernel_wrapper_mutation``.  Our pipeline once deleted it (all-zero output).
Skipped without a GPU or without the ``awq`` package (AutoAWQ is not a dependency of the project)::

    python -m pytest tests/test_gpu_autoawq.py -q
"""

import pytest
import torch

from awq_compile.formats import quantize, to_awq
from _util import rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU")
gemm = pytest.importorskip("awq.modules.linear.gemm", reason="needs AutoAWQ (pip install autoawq)")


def _layer(K, N, G, bias):
    layer = gemm.WQLinear_GEMM(4, G, K, N, bias, "cuda")
    u = quantize(torch.randn(K, N), G)
    q, qz, s = to_awq(u)
    layer.qweight.copy_(q)
    layer.qzeros.copy_(qz)
    layer.scales.copy_(s.to(torch.float16))
    if bias:
        layer.bias.copy_(torch.randn(N, dtype=torch.float16))
    return layer.cuda(), u


@pytest.mark.parametrize("options", [{}, {"inductor": False}], ids=["inductor", "fx"])
@pytest.mark.parametrize("bias", [False, True])
def test_autoawq_wqlinear_gemm_compiled_matches_eager(options, bias):
    torch.manual_seed(0)
    layer, u = _layer(1024, 512, 128, bias)
    compiled = torch.compile(layer, backend="awq", options=options)
    w64 = u.dequantize(torch.float64).cuda()
    for M in (1, 16, 256):
        x = torch.randn(M, 1024, dtype=torch.float16, device="cuda")
        with torch.no_grad():
            eager = layer(x)
            out = compiled(x)
        ref = x.double() @ w64 + (layer.bias.double() if bias else 0)
        assert out.abs().max() > 0, f"M={M}: all-zero output"
        assert rel_err(eager, ref) < 2e-2, f"M={M}: AutoAWQ's own eager result is off; layout assumption wrong"
        assert rel_err(out, eager) < 1e-2, f"M={M}: compiled differs from eager"


def test_autoawq_explain_names_the_triton_gemm():
    import awq_compile

    layer, _ = _layer(1024, 512, 128, False)
    with torch.no_grad():
        report = awq_compile.explain(layer, torch.randn(4, 1024, dtype=torch.float16, device="cuda"))
    assert not report.layers
    assert any("load_pretrained" in s.reason for s in report.skipped), str(report)
