"""The weight layout as a per-layer plan decision (issue 11 build item 2): sm90's tables ask for kplanes.

What is checked: the decision (eligible, or standard with the reason), selection never taking a kernel
that cannot read the layer's layout, the plan text, the weight cache holding exactly one copy in that
layout (in place too, merged projections too), the fallback and backward paths reading kplanes, the
device re-plan rule preparing the re-made plan's layout, the slot workspace kept apart from the split-K
one, and torch.compile(backend="awq") end to end on a layer that gets kplanes -- planned for cuda:sm90 and
executed by Triton's interpreter on CPU (the device the op meets is made to report cuda:sm90).
"""

import logging

import pytest
import torch
from torch import nn

import awq_compile
import awq_compile.runtime.op  # noqa: F401  registers torch.ops.awq_compile
from awq_compile.formats import Packed, convert, quantize, to_awq
from awq_compile.formats.kplanes import to_kplanes
from awq_compile.formats.standard import dequantize_standard
from awq_compile.kernels.problem import Problem
from awq_compile.kernels.registry import KERNELS, Plan, PlanEntry, select
from awq_compile.kernels.spec import TableError
from awq_compile.models import AwqLinear
from awq_compile.runtime import dispatch
from awq_compile.runtime.weights import WeightCache
from awq_compile.target import Target
from _util import rel_err

SM90 = Target.parse("cuda:sm90")
op = torch.ops.awq_compile.w4a16_linear


def _awq(K, N, G, seed=0):
    torch.manual_seed(seed)
    u = quantize(torch.randn(K, N) * 0.1, G)
    q, qz, s = to_awq(u)
    return u, q, qz, s.to(torch.float16)


# ------------------------------------------------------------------------------------------- decision
@pytest.mark.parametrize("version", ["3.6", "default"])
def test_sm90_tables_ask_for_kplanes_where_the_shape_has_it(version):
    plan = select(Problem(4096, 14336, 128, True, "float16"), SM90, triton_version=version)
    assert plan.layout == "kplanes" and plan.layout_note == f"kplanes (sm90.json[{version}])"
    for G, why in ((64, "group size 64 is not a multiple of 128"), (32, "group size 32 is not a multiple of 128")):
        p = select(Problem(4096, 4096, G, True, "float16"), SM90, triton_version=version)
        assert p.layout == "standard" and why in p.layout_note and "asks for kplanes" in p.layout_note
        assert all("standard" in KERNELS[e.kernel].layouts for e in p.entries)
    # targets whose tables declare nothing, and a caller fixing the layout
    for t in ("cuda:sm80", "hip:gfx942", "cpu"):
        p = select(Problem(4096, 4096, 128, True, "bfloat16"), Target.parse(t))
        assert p.layout == "standard" and p.layout_note == ""
    fixed = select(Problem(4096, 14336, 128, True, "float16"), SM90, layout="standard")
    assert fixed.layout == "standard" and fixed.layout_note == "standard (requested)"


SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192), (4096, 1024), (4096, 6144), (4096, 28672),
          (256, 128))


@pytest.mark.parametrize("version", ["3.6", "default"])
def test_every_bucket_of_a_kplanes_plan_runs_a_triton_kernel_that_reads_kplanes(version):
    """No bucket falls to the dequant fallback because its table entries cannot read the layout."""
    for K, N in SHAPES:
        for dt in ("float16", "bfloat16"):
            plan = select(Problem(K, N, 128, True, dt), SM90, triton_version=version)
            assert plan.layout == "kplanes"
            for e in plan.entries:
                assert "kplanes" in KERNELS[e.kernel].layouts and KERNELS[e.kernel].uses_triton, (K, N, e)
            if K >= 4096 and N >= 4096:
                # M 2..32: the register-operand GEMM's persistent grid on every shape of the class
                for m in (4, 16, 32):
                    e = plan.entry_for(m)
                    assert e.kernel == "triton_gemm_rs" and e.config.PER_SM > 0, (K, N, m, e)
                assert plan.entry_for(64).kernel in ("triton_stripe", "triton_gemm_rs")


def test_selection_skips_a_kernel_that_cannot_read_the_layout():
    # the stripe kernel is offered for kplanes weights only: a standard-layout plan of the same shape
    # passes over its table entries to the ones that were there before it
    p = Problem(4096, 14336, 128, True, "float16")
    std = select(p, SM90, layout="standard", triton_version="3.6")
    assert "triton_stripe" not in std.kernels
    assert dict(std.rejected)["triton_stripe"] == "reads the kplanes layout, not the layer's standard"
    assert std.entry_for(16).kernel == "triton_gemm_planes" and std.entry_for(64).kernel == "triton_gemm"
    # and a layer without a kplanes form never gets it
    g64 = select(Problem(4096, 14336, 64, True, "float16"), SM90, triton_version="3.6")
    assert g64.layout == "standard" and "triton_stripe" not in g64.kernels


def test_plan_text_carries_the_layout():
    plan = select(Problem(4096, 14336, 128, True, "float16"), SM90, triton_version="3.6")
    text = plan.encode()
    assert text.startswith("@target=cuda:sm90;@layout=kplanes;")
    back = Plan.decode(text)
    assert back.layout == "kplanes" and back.entries == plan.entries
    assert plan.describe() == (
        "weights kplanes; M 1..1: triton_gemv 1x256x128 sk32 fma_decode w2 st1; "
        "M 2..4: triton_gemm_rs 8x128x128 per_sm3 w4 st3; M 5..16: triton_gemm_rs 16x128x128 per_sm3 w4 st3; "
        "M 17..32: triton_gemm_rs 32x128x128 per_sm2 unrolled w4 st3; "
        "M 33..64: triton_gemm_rs 64x64x128 w4 st4; M 65..128: triton_gemm_rs 128x128x128 unrolled w8 st4; "
        "M 129..256: triton_gemm_rs 256x128x128 unrolled w8 st3; M 257..inf: triton_dequant_mm 64x32 w4 st1")
    # a standard plan's text is what it was before the layout existed
    assert "@layout" not in select(Problem(4096, 4096, 64, True, "float16"), SM90).encode()
    with pytest.raises(TableError, match="cpu_int4pack reads the standard layout, not kplanes"):
        Plan.decode("@layout=kplanes;*:cpu_int4pack")
    with pytest.raises(TableError, match="triton_stripe reads the kplanes layout, not standard"):
        Plan.decode("@target=cuda:sm90;*:triton_stripe:BLOCK_M=16,BLOCK_N=128")


# ------------------------------------------------------------------------------------------- weight cache
def test_the_cache_holds_one_copy_in_the_plan_layout():
    u, q, qz, s = _awq(256, 64, 128, seed=1)
    cache = WeightCache()
    std = convert(Packed("awq", q, qz, s, 128), "standard")
    kp = cache.get("awq", q, qz, s, layer="l", layout="kplanes")
    assert kp.layout == "kplanes" and torch.equal(kp.qweight, to_kplanes(std.qweight))
    assert cache.get("awq", q, qz, s, layer="l", layout="kplanes") is kp and cache.repacks == 1 and len(cache) == 1
    assert cache.nbytes() == std.qweight.numel() * 4 + std.qzeros.numel() * 4      # as many bytes as standard
    with pytest.raises(ValueError, match="prepared in the kplanes layout"):
        kp.standard(q, s, qz)
    # the backward asks for whatever the forward prepared: the same entry, no second copy
    assert cache.get("awq", q, qz, s, layer="l", layout=None) is kp and len(cache) == 1


def test_reuse_weight_memory_rewrites_in_place_into_kplanes():
    u, q, qz, s = _awq(256, 64, 128, seed=2)
    want = to_kplanes(convert(Packed("awq", q, qz, s, 128), "standard").qweight)
    cache = WeightCache()
    p = cache.get("awq", q, qz, s, layer="l", reuse=True, layout="kplanes")
    assert p.in_place and p.layout == "kplanes" and cache.nbytes() == 0
    w = p.packed(q, s, qz)
    assert w.qweight.data_ptr() == q.data_ptr() and torch.equal(w.qweight, want)
    assert cache.get("awq", q, qz, s, layer="l", layout=None).layout == "kplanes"
    with pytest.raises(RuntimeError, match="rewritten in place into the kplanes layout"):
        cache.get("awq", q, qz, s, layer="l", layout="standard")


def test_merged_projections_hold_one_kplanes_copy_of_the_concatenation():
    parts = [_awq(256, n, 128, seed=10 + i) for i, n in enumerate((64, 32, 32))]
    cache = WeightCache()
    m = cache.get_merged("awq", [(q, qz, s) for _, q, qz, s in parts], layer="qkv", layout="kplanes")
    stds = [convert(Packed("awq", q, qz, s, 128), "standard") for _, q, qz, s in parts]
    assert m.prepared.layout == "kplanes" and len(cache) == 1
    assert torch.equal(m.prepared.qweight, to_kplanes(torch.cat([w.qweight for w in stds], 1)))
    x = torch.randn(5, 256, dtype=torch.float16)
    y = dispatch.run_entry(PlanEntry(None, "torch_dequant"), x, m.prepared, m.prepared.qweight, m.prepared.qzeros,
                           m.scales, None, target=Target("cpu"))
    ref = torch.cat([x.double() @ u.dequantize(torch.float64) for u, *_ in parts], 1)
    assert rel_err(y, ref) < 2e-3
    assert cache.get_merged("awq", [(q, qz, s) for _, q, qz, s in parts], layout=None) is m


def test_fallback_and_backward_read_a_kplanes_weight():
    """A plan text without a target runs where its kernels can: torch_dequant on CPU, on kplanes weights --
    the dequant fallback and the backward read the layout the cache holds (no second, standard copy)."""
    u, q, qz, s = _awq(256, 64, 128, seed=3)
    cache = awq_compile.runtime.weights.weight_cache()
    before = len(cache)
    x = torch.randn(4, 256, dtype=torch.float32, requires_grad=True)
    y = op(x, q, qz, s, None, [], "fallback", "awq", 128, "@layout=kplanes;*:torch_dequant", "")
    w64 = u.dequantize(torch.float64)
    assert rel_err(y, x.double() @ w64) < 1e-3
    g = torch.randn_like(y)
    y.backward(g)
    assert rel_err(x.grad, g.double() @ w64.t()) < 1e-3
    assert len(cache) == before + 1
    assert cache.get("awq", q, qz, s, layout=None).layout == "kplanes"


def test_a_kplanes_plan_on_another_device_family_is_replanned_and_prepares_standard(caplog):
    """The device rule: an sm90 plan (kplanes) meeting CPU tensors is made again for cpu, whose plan reads
    the standard layout -- the weight is prepared for the plan that runs, never read in the wrong order."""
    dispatch._WARNED.clear()
    u, q, qz, s = _awq(256, 64, 128, seed=4)
    text = select(Problem(256, 64, 128, True, "bfloat16"), SM90).encode()
    assert "@layout=kplanes" in text
    cache = awq_compile.runtime.weights.weight_cache()
    with caplog.at_level(logging.WARNING, logger="awq_compile"):
        for m in (1, 9, 300):
            x = torch.randn(m, 256, dtype=torch.bfloat16)
            y = op(x, q, qz, s, None, [], "replanned", "awq", 128, text, "")
            assert rel_err(y, x.double() @ u.dequantize(torch.float64)) < 1e-2
    msgs = [r.getMessage() for r in caplog.records if "replanned" in r.getMessage()]
    assert len(msgs) == 1 and "re-planned for cpu" in msgs[0]
    assert cache.get("awq", q, qz, s, layout=None).layout == "standard"


# ------------------------------------------------------------------------------------------- workspaces
def test_slot_workspace_is_kept_apart_from_the_split_k_one():
    """The stripe kernel leaves garbage in its slots; a split-K kernel run after it on the same device must
    still find its zero-kept workspace zeroed (a shared buffer would add the garbage to its sums)."""
    from awq_compile.kernels.specs import get_spec
    from awq_compile.kernels.triton.launch import _workspace, run
    from awq_compile.target import interpreter_active

    torch.manual_seed(5)
    u = quantize(torch.randn(384, 72) * 0.1, 128)
    from awq_compile.formats import from_unpacked
    std = from_unpacked(u)
    x = torch.randn(3, 384, dtype=torch.float16)
    ref = x.double() @ u.dequantize(torch.float64)
    for kid, cfg, layout, q in (
            ("triton_stripe", dict(BLOCK_M=16, BLOCK_N=32, STAGES=2, PER_SM=1), "kplanes", to_kplanes(std.qweight)),
            ("triton_gemm", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SPLIT_K=3), "standard", std.qweight)):
        config, opts = get_spec(kid).parse(cfg, kid, backend=None, table=False)
        out = torch.full((3, 72), float("nan"), dtype=torch.float16)
        run(kid, config, opts, x, q, std.qzeros, std.scales.half(), None, out, 128, SM90,
            interpret=interpreter_active(), layout=layout)
        assert rel_err(out, ref) < 3e-3, kid
    bufs = _workspace()._bufs
    slots, atomic = bufs[("cpu", None, "slots")][0], bufs[("cpu", None, "atomic")][0]
    assert slots.data_ptr() != atomic.data_ptr() and not atomic.any()


def test_reserve_for_plan_covers_every_m_of_the_stripe_buckets():
    from awq_compile.kernels.specs.triton_stripe import stripe_workspace
    from awq_compile.kernels.triton.launch import _workspace, reserve_for_plan

    p = Problem(4096, 8192, 128, True, "float16")     # a class the stripe kernel still leads at M 33..64
    plan = select(p, SM90, triton_version="3.6")
    reserve_for_plan(plan, p, "cpu")
    ws, tickets = _workspace()._bufs[("cpu", None, "slots")]
    stripe_ms = [m for m in range(2, 129) if plan.entry_for(m).kernel == "triton_stripe"]
    assert stripe_ms == list(range(33, 65))      # M 2..32 is the register-operand GEMM's (its atomic workspace)
    for m in stripe_ms:
        e = plan.entry_for(m)
        n, t = stripe_workspace(e.config, p.with_m(m).with_layout("kplanes"), SM90)
        assert ws.numel() >= n and tickets.numel() >= t, m


# ------------------------------------------------------------------------------------------- end to end
class TwoHeads(nn.Module):
    """Two AWQ linears reading one input (merged into one launch) and one after them."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(6)

        def awq(k, n):
            lin = nn.Linear(k, n, bias=True)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(n, k, generator=g) / k ** 0.5)
                lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
            return AwqLinear.from_float(lin, 128, dtype=torch.float16)

        self.a, self.b, self.out = awq(256, 128), awq(256, 128), awq(256, 64)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], -1))


def test_compile_for_sm90_prepares_kplanes_and_matches_float64(monkeypatch):
    """torch.compile(backend="awq") planned for cuda:sm90; the op is told the (CPU) tensors are on an sm90
    device, so the plan runs as made -- its Triton kernels in the interpreter, on kplanes weights."""
    import copy

    monkeypatch.setattr(dispatch, "device_target", lambda device_type, index: SM90)
    model = TwoHeads().eval()
    report = awq_compile.explain(model, torch.randn(3, 256, dtype=torch.float16), target="cuda:sm90")
    assert {lay.layout for lay in report.layers} == {"kplanes"}
    text = str(report)
    assert "weight layout (one packed copy per layer):\n  3 layers: kplanes (sm90.json[" in text
    assert "a+b [256 -> 256] (kplanes weights): triton_gemv;" in text
    compiled = torch.compile(model, backend="awq", options={"target": "cuda:sm90", "inductor": False})
    ref_model = copy.deepcopy(model).double()
    cache = awq_compile.runtime.weights.weight_cache()
    before = set(cache._entries)
    with torch.no_grad():
        for m in (1, 9):
            x = torch.randn(m, 256, dtype=torch.float16)
            assert rel_err(compiled(x), ref_model(x.double())) < 3e-3, m
    # exactly one prepared weight per launch (the merged a+b, and out), prepacked at compile time in the
    # layout the op's plan reads -- a standard prepack beside a kplanes run-time copy would be four (and, on
    # a GPU under reduce-overhead, an allocation inside the CUDA-graph pool)
    new = [cache._entries[k].prepared for k in set(cache._entries) - before]
    layouts = sorted(getattr(p, "layout", None) or p.prepared.layout for p in new)
    assert layouts == ["kplanes", "kplanes"], layouts
    # the model's own buffers are untouched (no in-place rewrite without reuse_weight_memory)
    assert torch.equal(model.out.qweight, TwoHeads().out.qweight)
