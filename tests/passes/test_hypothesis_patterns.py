"""Property test: random combinations of dequant spellings, layouts, shapes, dtypes and bias.

For every drawn layer: the compiled result equals eager within the dtype's tolerance (and the float64
reference when the layer is a genuine 4-bit layer); the one candidate matmul ends up either rewritten
(with the right layout, K, N and G) or in ``.skipped`` with a reason; near-misses (3-/8-bit packing, a
wrong nibble order, tiled instead of grouped scales, an input-dependent weight, act-order g_idx, K not a
multiple of G) are always refused, with a reason that says so.

``AWQ_HYPOTHESIS_EXAMPLES`` sets the number of examples (default 200; derandomised, so CI is
reproducible -- set ``AWQ_HYPOTHESIS_SEED`` to explore other draws).
"""

import dataclasses
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from awq_compile.backend import awq_backend
from awq_compile.explaining import report_of
from awq_compile.report import Report
from _spellings import FORMATS, SpelledLinear, Spelling, normalized, reference
from _util import rel_err

EXAMPLES = int(os.environ.get("AWQ_HYPOTHESIS_EXAMPLES", "200"))
SEED = os.environ.get("AWQ_HYPOTHESIS_SEED")

AXES = {
    "shift": ["fn", "op"],
    "expand": ["index", "unsqueeze"],
    "codes": ["int8", "int32", "int64"],
    "mask": ["after", "before", "twice"],
    "mask_op": ["fn", "op"],
    "flatten": ["view", "reshape", "flatten"],
    "noop_slice": [False, True],
    "reorder": ["index", "buffer", "index_select", "view8"],
    "group": ["repeat_interleave", "unflatten", "view", "gather"],
    "combine": ["sub_mul", "mul_sub"],
    "matmul": ["matmul", "at", "linear", "at_t", "mm"],
    "x3d": ["flat", "3d"],
    "cast": [False, True],
    "bias": ["none", "add", "iadd", "add_", "addmm", "linear"],
    "no_grad": [False, True],
    "recast_scales": [False, True],
}
NEAR_MISSES = [{}, {"bits": 3}, {"bits": 8}, {"wrong_order": True}, {"tiled_scales": True},
               {"runtime_scale": True}, {"g_idx": "act_order"}, {"ragged": True}]


@st.composite
def cases(draw):
    fields = {axis: draw(st.sampled_from(values)) for axis, values in AXES.items()}
    fields["fmt"] = draw(st.sampled_from(FORMATS))
    if fields["fmt"].startswith("gptq"):
        fields["g_idx"] = draw(st.sampled_from(["none", "trivial"]))
    miss = draw(st.sampled_from(NEAR_MISSES)) if draw(st.integers(0, 3)) == 0 else {}
    if miss.get("g_idx") == "act_order" and not fields["fmt"].startswith("gptq"):
        miss = {}
    fields.update(miss)
    sp = normalized(Spelling(**fields))
    G = draw(st.sampled_from([32, 64, 128, "K"]))
    if G == "K":
        K = draw(st.sampled_from([64, 128, 192, 256]))
        G = K
    else:
        K = G * draw(st.integers(1, 256 // G))
    if sp.ragged:
        K = G * draw(st.integers(1, 256 // G)) + 8 * draw(st.integers(1, G // 8 - 1))
        if K > 256 + G:
            K -= G
    N = 8 * draw(st.integers(1, 32))
    scales_dtype = draw(st.sampled_from([torch.float16, torch.bfloat16]))
    if sp.recast_scales:
        x_dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
    elif sp.cast:
        x_dtype = torch.float32
    else:
        x_dtype = scales_dtype
    M = draw(st.sampled_from([1, 3, 17]))
    seed = draw(st.integers(0, 2 ** 16))
    return sp, K, N, G, scales_dtype, x_dtype, M, seed


def _tolerance(*dtypes):
    return 2e-2 if torch.bfloat16 in dtypes else 5e-3


@pytest.mark.skipif(EXAMPLES <= 0, reason="AWQ_HYPOTHESIS_EXAMPLES=0")
@settings(max_examples=EXAMPLES, deadline=None, derandomize=SEED is None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_random_spellings_are_rewritten_correctly_or_refused_with_a_reason(case):
    sp, K, N, G, scales_dtype, x_dtype, M, seed = case
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(seed)
    bias = torch.randn(N, generator=gen) if sp.bias != "none" else None
    mod = SpelledLinear(sp, K, N, G, dtype=scales_dtype, bias=bias, seed=seed)
    two_d = sp.matmul == "mm" or sp.bias == "addmm"
    x = torch.randn(*((M,) if two_d else (1, M)), K, generator=gen).to(x_dtype)
    report = Report()
    options = {"inductor": False}
    with torch.no_grad():
        eager = mod(x)
        out = torch.compile(mod, backend=lambda gm, ex: awq_backend(
            gm, ex, options=options, on_analysis=lambda a: report_of(report, a)))(x)
    tol = _tolerance(scales_dtype, x_dtype)
    assert out.shape == eager.shape and out.dtype == eager.dtype
    assert len(report.layers) + len(report.skipped) == 1, (sp, report)
    if sp.must_refuse(K, G):
        assert report.layers == [], (sp, K, N, G, report)
        assert sp.refusal() in report.skipped[0].reason, (sp, report.skipped[0].reason)
        assert torch.equal(out, eager)
        return
    assert report.skipped == [], (sp, K, N, G, report)
    lay = report.layers[0]
    assert (lay.format, lay.in_features, lay.out_features, lay.group_size) == (sp.fmt, K, N, G), (sp, lay)
    ref = reference(mod, x)
    assert rel_err(eager, ref) < tol
    assert rel_err(out, ref) < tol, (sp, K, N, G, rel_err(out, ref))
    assert rel_err(out, eager) < 2 * tol


def test_the_strategy_reaches_every_axis_value():
    """A guard against a strategy that silently stops drawing some spelling."""
    seen = {axis: set() for axis in AXES}
    refused = 0

    @settings(max_examples=300, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=cases())
    def collect(case):
        nonlocal refused
        sp, K, N, G, *_ = case
        for axis in AXES:
            seen[axis].add(getattr(sp, axis))
        refused += sp.must_refuse(K, G)

    collect()
    assert all(seen[a] == set(v) for a, v in AXES.items() if a not in ("bias",)), seen
    assert refused >= 20
