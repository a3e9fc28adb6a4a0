"""On a GPU (skipped without one): a plan made for another target family is re-planned for the device
with one warning naming the layer, and its results are right."""

import logging

import pytest
import torch

import awq_compile.runtime.op  # noqa: F401
from awq_compile.formats import quantize, to_awq
from awq_compile.kernels.problem import Problem
from awq_compile.kernels.registry import select
from awq_compile.runtime import dispatch
from awq_compile.target import Target, detect
from _util import rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU")


def test_a_plan_for_another_family_is_replanned_for_the_gpu(caplog):
    here = detect(torch.device("cuda"))
    other = Target.parse("hip:gfx942" if here.backend == "cuda" else "cuda:sm90")
    K, N, G = 4096, 4096, 128
    u = quantize(torch.randn(K, N), G)
    q, qz, s = (t.cuda() for t in to_awq(u))
    s = s.half()
    text = select(Problem(K, N, G, True, "float16"), other).encode()
    w64 = u.dequantize(torch.float64).cuda()
    dispatch._WARNED.clear()
    with caplog.at_level(logging.WARNING, logger="awq_compile"):
        for M in (1, 16, 300):
            x = torch.randn(M, K, dtype=torch.float16, device="cuda")
            y = torch.ops.awq_compile.w4a16_linear(x, q, qz, s, None, [], "gpu.rule", "awq", G, text, "")
            assert rel_err(y, x.double() @ w64) < 2e-3
    msgs = [r.getMessage() for r in caplog.records if "gpu.rule" in r.getMessage()]
    assert len(msgs) == 1 and f"made for {other}" in msgs[0] and f"re-planned for {here}" in msgs[0]
