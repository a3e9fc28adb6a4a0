"""The device sweeps' CPU-checkable parts (benchmarks/sweep.py, gemv_sweep.py, wide_sweep.py): the --layout
option, the weights of every layout against the AWQ dequantisation, the spec's refusals, the spelling of the
shipped plan's entries, and one sweep launch per layout under the interpreter (the layout reaches the kernel)."""

import pytest
import torch

from awq_compile.formats.standard import dequantize_packed
from awq_compile.kernels.problem import Problem
from awq_compile.kernels.registry import select
from awq_compile.target import Target
from benchmarks import gemv_sweep, wide_sweep
from benchmarks.common import AWQ
from benchmarks.sweep import compile_ms, layouts_of, plan_items, shape_weights

SM90 = Target.parse("cuda:sm90")


@pytest.mark.parametrize("mod", [gemv_sweep, wide_sweep])
def test_layout_option_parses_and_defaults_to_standard(mod):
    ap = mod.parser()
    assert layouts_of(ap.parse_args([]).layout) == ("standard",)
    assert layouts_of(ap.parse_args(["--layout", "kplanes"]).layout) == ("kplanes",)
    assert layouts_of(ap.parse_args(["--layout", "both"]).layout) == ("standard", "kplanes")
    with pytest.raises(SystemExit):
        ap.parse_args(["--layout", "kpairs"])


def test_weights_in_every_layout_equal_the_awq_dequantisation():
    torch.manual_seed(0)
    W = shape_weights(384, 64, 128, torch.float16, ("standard", "kplanes"), device="cpu", copies=2)
    assert set(W.packed) == {"standard", "kplanes"} and len(W.srcs) == 2 == len(W.packed["kplanes"])
    for lay, ws in W.packed.items():
        for src, w in zip(W.srcs, ws):
            assert w.layout == lay
            ref = AWQ.to_unpacked(*src).dequantize(torch.float64)
            assert torch.equal(dequantize_packed(w, torch.float64), ref), lay
    assert torch.equal(W.w64, AWQ.to_unpacked(*W.srcs[0]).dequantize(torch.float64))
    # the two layouts hold the same words in another order, not the same tensor
    assert not torch.equal(W.packed["kplanes"][0].qweight, W.packed["standard"][0].qweight)
    assert len(W.dense) == 2 and W.dense[0].dtype == torch.float16


def test_refused_configs_are_listed_per_layout_shape_and_m():
    specs = ["stripe:128x128:m16:w4:st3:ps2", "gemv:128x128:w1:sk112:fma", "gemv:256x32:w2:sk32"]
    items, refused = plan_items(gemv_sweep.resolve, lambda K, N, M, lay: specs, shapes=[(4096, 4096), (14336, 4096)],
                                ms=[1, 3], dtype="float16", layouts=("standard", "kplanes"), G=128, target=SM90)
    assert refused[("stripe:128x128:m16:w4:st3:ps2", "standard", 4096, 4096, 3)].startswith("reads the kplanes")
    assert refused[("gemv:128x128:w1:sk112:fma", "kplanes", 4096, 4096, 1)] == "SPLIT_K=112 exceeds the 32 groups"
    assert ("gemv:128x128:w1:sk112:fma", "kplanes", 14336, 4096, 1) not in refused
    assert ("stripe:128x128:m16:w4:st3:ps2", "float16", "kplanes", 3) in items
    assert not any(s == "gemv:256x32:w2:sk32" for s, *_ in refused)
    assert all(m in (1, 3) for *_, m in items)


def test_compile_ms_follow_tritons_integer_specialisation():
    assert compile_ms([1, 2, 3, 4]) == {1: 1, 2: 2, 3: 2, 4: 2}
    assert compile_ms([64, 256, 1024, 4096, 5]) == {64: 64, 256: 64, 1024: 64, 4096: 64, 5: 5}


def test_spellings_parse_and_name_the_shipped_plans_entries():
    with pytest.raises(Exception, match="STAGES"):
        gemv_sweep.resolve("gemv:256x32:w2:st3")            # a key the GEMV does not have is an error
    for M in (1, 2, 4):
        for spec in gemv_sweep.specs_for("kp", M):
            gemv_sweep.resolve(spec)
    for K, N in gemv_sweep.SHAPES + gemv_sweep.DECODE_SHAPES:
        for lay in (None, "standard"):
            plan = select(Problem(K, N, 128, True, "float16"), SM90, layout=lay, triton_version="3.6")
            for M in (1, 2, 3, 4):
                e = plan.entry_for(M)
                spell = gemv_sweep.spec_of(e.kernel, e.config, e.launch)
                assert spell and gemv_sweep.resolve(spell) == (e.kernel, e.config, e.launch), (K, N, M, e.label())
    assert gemv_sweep.shapes_of("goal,decode,4096x4096") == list(dict.fromkeys(gemv_sweep.SHAPES
                                                                               + gemv_sweep.DECODE_SHAPES))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter check; the device runs the sweep itself")
@pytest.mark.parametrize("layout", ["standard", "kplanes"])
def test_a_sweep_launch_reads_the_weight_in_its_layout(layout):
    torch.manual_seed(1)
    W = shape_weights(256, 64, 128, torch.float16, (layout,), device="cpu", copies=1, dense=False)
    x = torch.randn(2, 256, dtype=torch.float16)
    out = torch.full((2, 64), float("nan"), dtype=torch.float16)
    gemv_sweep._run_cfg("gemv:32x32:w1:sk2:fma", x, W.packed[layout][0], out, SM90)
    ref = x.double() @ W.w64
    assert ((out.double() - ref).norm() / ref.norm()).item() < 3e-3
