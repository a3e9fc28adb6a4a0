"""``torch.ops.awq_compile.w4a16_linear_triton`` (the export's triton_op) run eagerly: under the Triton
interpreter on CPU (tests/conftest.py), for every kernel family the export may pick, against float64."""

import pytest
import torch

from _util import kernel_case, rel_err
from awq_compile.kernels.registry import PlanEntry
from awq_compile.kernels.specs import get_spec
from awq_compile.runtime.triton_op import single_entry_plan, w4a16_linear_triton
from awq_compile.target import Target

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

CASES = [
    ("triton_gemv", dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=16, SPLIT_K=1)),
    ("triton_gemv", dict(BLOCK_M=2, BLOCK_N=32, BLOCK_K=16, SPLIT_K=2)),          # split-K
    ("triton_gemv_stream", dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=16, SPLIT_K=4)),   # split-K
    ("triton_gemm", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, SPLIT_K=1)),
    ("triton_gemm", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=2)),         # split-K
    ("triton_gemm_planes", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, SPLIT_K=1, XPERM=1)),
    ("triton_dequant_mm", dict(BLOCK_N=32, BLOCK_K=16)),
    ("triton_gemm_wide", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, TRANS=1)),
    ("triton_gemm_wide", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=2)),     # split-K (tile tickets)
]


def _plan(kid, values, target="cuda:sm90"):
    t = Target.parse(target)
    cfg, launch = get_spec(kid).parse({**values, "num_warps": 4, "num_stages": 2}, "test", backend=t.backend)
    return single_entry_plan(PlanEntry(None, kid, cfg, launch), t)


@pytest.mark.parametrize("kid,values", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
@pytest.mark.parametrize("M", [1, 5, 19])
def test_triton_op_matches_float64(kid, values, M):
    K = 256 if kid == "triton_gemm_planes" else 64
    seed = hash((kid, tuple(values.items()), M)) % 10_000
    for zeros, bias in ((True, True), (False, False)):
        x, q, z, s, b, ref = kernel_case(M, K, 64, 128 if K == 256 else 32, torch.float16, zeros, bias, seed, DEVICE)
        y = w4a16_linear_triton(x, q, z, s, b, "layer", 128 if K == 256 else 32, _plan(kid, values))
        assert y.shape == (M, 64) and y.dtype == torch.float16
        assert rel_err(y, ref) < 2e-3, (kid, values, M, zeros)


def test_triton_op_keeps_leading_dimensions_and_repeats_split_k():
    # split-K workspace is zeroed per call: a second call on other data is not polluted by the first
    plan = _plan("triton_gemm", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, SPLIT_K=4))
    for seed in (1, 2):
        x, q, z, s, b, ref = kernel_case(6, 64, 32, 32, torch.float16, True, True, seed, DEVICE)
        y = w4a16_linear_triton(x.view(2, 3, 64), q, z, s, b, "layer", 32, plan)
        assert y.shape == (2, 3, 32)
        assert rel_err(y.reshape(6, 32), ref) < 2e-3


def test_triton_op_torch_dequant_entry_for_float32():
    x, q, z, s, b, ref = kernel_case(3, 64, 32, 32, torch.float32, True, True, 3, DEVICE)
    plan = single_entry_plan(PlanEntry(None, "torch_dequant"), Target.parse("cuda:sm90"))
    assert rel_err(w4a16_linear_triton(x, q, z, s, b, "layer", 32, plan), ref) < 1e-5


def test_triton_op_refuses_a_bucketed_plan_and_bad_shapes():
    x, q, z, s, b, _ = kernel_case(3, 64, 32, 32, torch.float16, True, True, 4, DEVICE)
    one = _plan("triton_gemv", dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=16))
    two = one.replace("*:", "4:", 1) + ";" + one.split(";", 1)[1]
    with pytest.raises(ValueError, match="one-entry plan"):
        w4a16_linear_triton(x, q, z, s, b, "layer", 32, two)
    with pytest.raises(ValueError, match="layer 'layer'.*in_features"):
        w4a16_linear_triton(x[:, :32], q, z, s, b, "layer", 32, one)
