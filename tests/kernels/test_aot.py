"""Ahead-of-time compilation for targets this machine does not have, and the check-target command.

Compiles run in worker processes without TRITON_INTERPRET (this session runs Triton's interpreter on
CPU machines).  Reports are cached on disk (``AWQ_COMPILE_AOT_CACHE``, default ~/.cache/awq_compile/aot)
keyed by kernel source, Triton version, target and config, so a repeated CI run only re-checks.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from awq_compile.cli import check_target
from awq_compile.kernels import aot, configs
from awq_compile.kernels.aot import AotReport, AotRequest, compile_many, compile_report
from awq_compile.target import CI_TARGETS, Target

SMALL = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, SPLIT_K=1, num_warps=4, num_stages=1)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AWQ_COMPILE_AOT_CACHE", str(tmp_path / "aot"))
    return tmp_path / "aot"


@pytest.mark.parametrize("spec, cfg, prefix", [
    ("hip:gfx942", SMALL, "v_mfma"),
    ("hip:gfx1100", SMALL, "v_wmma"),
    ("hip:gfx1201", SMALL, "v_wmma"),
    ("cuda:sm80", SMALL, "mma.sync"),
    ("cuda:sm90", dict(SMALL, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32), "wgmma"),
])
def test_gemm_compiles_to_the_targets_matrix_instructions(spec, cfg, prefix, tmp_cache):
    rep = compile_report("triton_gemm", cfg, spec, act_dtype="bfloat16", has_zeros=True, has_bias=True)
    assert rep.ok, rep.error
    assert rep.target == spec and rep.registers > 0 and rep.spills == 0 and rep.shared > 0
    assert any(name.startswith(prefix) for name, _ in rep.matrix_instructions), rep.matrix_instructions
    assert not rep.cached


def test_gemv_uses_no_matrix_units_and_reports_amd_occupancy(tmp_cache):
    cfg = dict(BLOCK_M=1, BLOCK_N=64, BLOCK_K=32, SPLIT_K=2, num_warps=4, num_stages=2, waves_per_eu=2)
    rep = compile_report("triton_gemv", cfg, "hip:gfx90a", group_size=32)
    assert rep.ok and not rep.matrix_instructions and rep.spills == 0
    assert 0 < rep.occupancy <= 2            # waves_per_eu reached the compiler


def test_reports_are_cached_by_source_triton_and_config(tmp_cache, monkeypatch):
    first = compile_report("triton_gemm", SMALL, "hip:gfx1151")
    again = compile_report("triton_gemm", SMALL, "hip:gfx1151")
    assert again.cached and dataclasses.replace(again, cached=False, seconds=0) == \
        dataclasses.replace(first, seconds=0)
    assert list(tmp_cache.rglob("*.json"))
    other = compile_report("triton_gemm", dict(SMALL, num_warps=8), "hip:gfx1151")
    assert not other.cached
    monkeypatch.setattr(aot, "_source_hash", lambda: "edited kernel source")
    assert not compile_report("triton_gemm", SMALL, "hip:gfx1151").cached
    monkeypatch.setenv("AWQ_COMPILE_AOT_CACHE", "off")
    assert aot.cache_dir() is None
    assert not compile_report("triton_gemm", SMALL, "hip:gfx1151").cached


def test_compile_failure_is_a_report_not_an_exception(tmp_cache):
    rep = compile_report("triton_gemm", dict(SMALL, BLOCK_N=48), "hip:gfx942")   # not a power of two
    assert not rep.ok and rep.error
    assert not list(tmp_cache.rglob("*.json"))                                   # failures are not cached
    assert check_target.evaluate(rep, Target.parse("hip:gfx942"))[0].startswith("compile failed")
    with pytest.raises(ValueError):
        compile_report("triton_gemm", SMALL, "cpu")


def test_identical_compiles_run_once(tmp_cache):
    a = AotRequest.make("triton_gemm", SMALL, "cuda:sm80", K=4096, N=4096)
    b = AotRequest.make("triton_gemm", SMALL, "cuda:sm80", K=14336, N=4096)
    assert a.dedupe_key() == b.dedupe_key()
    ra, rb, rc = compile_many([a, b, a])
    assert ra == rb == rc and ra.ok
    assert len(list(tmp_cache.rglob("*.json"))) == 1


def _report(**kw):
    base = dict(kernel="triton_gemm", config=(("BLOCK_M", 64),), target="hip:gfx942", act_dtype="float16",
                group_size=128, has_zeros=True, has_bias=True, ok=True, registers=100, shared=1024,
                matrix_instructions=(("v_mfma_f32_16x16x16_f16", 8),))
    base.update(kw)
    return AotReport(**base)


def test_evaluate_rules():
    t = Target.parse("hip:gfx942")
    assert check_target.evaluate(_report(), t) == []
    assert "spills 3 VGPR + 2 SGPR" in check_target.evaluate(_report(spills=5, sgpr_spills=2), t)[0]
    assert "exceeds the 65536 B limit" in check_target.evaluate(_report(shared=65537), t)[0]
    assert "without matrix instructions" in check_target.evaluate(_report(matrix_instructions=()), t)[0]
    assert check_target.evaluate(_report(kernel="triton_gemv", matrix_instructions=()), t) == []
    assert "without matrix instructions" in check_target.evaluate(
        _report(kernel="triton_gemm_planes", matrix_instructions=()), t)[0]
    assert "bytes" in check_target.evaluate(_report(target="cuda:sm90", spills=16), Target.parse("cuda:sm90"))[0]


# ----------------------------------------------------------------------------------------- check-target
@pytest.fixture(scope="module")
def warm_ci_targets():
    """Compile what check-target needs for every CI target in one parallel batch (fills the cache)."""
    reqs = []
    for spec in CI_TARGETS:
        findings, _ = check_target.plan_requests(Target.parse(spec))
        reqs += [f.request for f in findings.values()]
    reports = compile_many(reqs)
    return {r.target for r in reports}


@pytest.mark.parametrize("spec", CI_TARGETS)
def test_check_target_passes(spec, warm_ci_targets, capsys):
    assert spec in warm_ci_targets
    rc = check_target.main([spec])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert " 0 failing" in out and "triton_gemm" in out and "triton_gemv" in out
    assert "report cache" in out           # says where cached reports come from


def test_check_target_without_triton_kernels_explains_and_passes(capsys):
    assert check_target.main(["hip:gfx1030"]) == 0
    assert "gfx1030" in capsys.readouterr().out
    assert check_target.main(["not-a-target"]) == 2


def _inject(monkeypatch, name, kernel_tables):
    real = configs._load

    def load(n):
        return {"comment": "test", "tables": {"default": kernel_tables}} if n == name else real(n)

    monkeypatch.setattr(configs, "_load", load)


_ONE = ["--shapes", "4096x4096", "--group-sizes", "128", "--dtypes", "float16", "--m", "4096"]


def test_check_target_fails_when_a_config_spills(monkeypatch, tmp_cache, capsys):
    # 64x128x64 with 4 warps: the tile that spills ~100 VGPRs on gfx11 (WMMA operands are duplicated)
    spill = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, num_warps=4, num_stages=2)
    _inject(monkeypatch, "gfx1100", {"triton_gemm": [{"m_max": None, "configs": [spill]}]})
    rc = check_target.main(["hip:gfx1100", *_ONE])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "FAIL: spills" in out and "1 failing" in out


def test_check_target_fails_when_lds_is_over_the_limit(monkeypatch, tmp_cache, capsys):
    from awq_compile.kernels.specs.triton_gemm import GemmConfig

    # the pruning estimate would drop this tile; turn the estimate off to prove the compiled size is checked
    monkeypatch.setattr(GemmConfig, "shared_bytes", lambda self, launch, act_bytes=2: 0)
    huge = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, SPLIT_K=1, num_warps=8, num_stages=2,
                matrix_instr_nonkdim=16, kpack=1)
    _inject(monkeypatch, "gfx942", {"triton_gemm": [{"m_max": None, "configs": [huge]}]})
    rc = check_target.main(["hip:gfx942", *_ONE])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "LDS" in out and "exceeds the 65536 B limit" in out


def test_check_target_json_output(tmp_path, warm_ci_targets):
    path = tmp_path / "r.json"
    assert check_target.main(["hip:gfx942", "--json", str(path), "-q"]) == 0
    import json

    data = json.loads(path.read_text())
    assert data["target"] == "hip:gfx942" and data["failing"] == 0
    assert all(r["ok"] and r["spills"] == 0 and r["uses"] for r in data["reports"])
    assert os.path.getsize(path) > 0


_PLANNED_CHECK = """
from awq_compile.kernels import aot, spec as spec_mod
from awq_compile.kernels.aot import AotRequest
from awq_compile.kernels.specs import get_spec
from awq_compile.kernels.triton import gemm
from awq_compile.target import Target

before = dict(vars(gemm))
cfg = dict(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, SPLIT_K=4, XPERM=1, num_warps=4, num_stages=3)
req = AotRequest.make("triton_gemm_planes", cfg, "cuda:sm90", act_dtype="bfloat16", has_bias=True)
fn, values, constexprs, options = aot._planned(req)
assert fn is gemm._gemm_planes_kernel and dict(vars(gemm)) == before
assert constexprs["XPERM"] is True and constexprs["UPCAST_DOT"] is False and constexprs["HAS_BIAS"] is True
assert options == {"num_warps": 4, "num_stages": 3}
assert str(values["x_ptr"].dtype) == "torch.bfloat16" and values["M"] == 3 and values["stride_qk"] == 4096
config, launch = get_spec("triton_gemm_planes").parse(cfg, "t", backend="cuda")
plan = spec_mod.plan_launch(get_spec("triton_gemm_planes"), config, launch, req.problem(), Target.parse("cuda:sm90"))
assert plan.constexprs == constexprs and plan.x_regroup == 128 and plan.workspace is not None
amd = AotRequest.make("triton_gemm", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=1,
                                          matrix_instr_nonkdim=16), "hip:gfx942")
assert aot._planned(amd)[3] == {"num_warps": 4, "num_stages": 1, "matrix_instr_nonkdim": 16}
print("ok")
"""


def test_aot_plans_the_launch_the_run_time_makes_without_touching_kernel_modules():
    """What is compiled comes from plan_launch -- the launcher's own function -- not from recording a launch
    with the kernel module's jit functions swapped out.  (A child without the interpreter: this session's
    jit functions are interpreter objects.)"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PLANNED_CHECK], capture_output=True, text=True,
                         env=aot._child_env())
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
    # a CUDA option on AMD is an error, not silently dropped
    with pytest.raises(ValueError, match="maxnreg"):
        AotRequest.make("triton_gemm", dict(SMALL, maxnreg=64), "hip:gfx942")


def test_interpreter_mode_is_an_input_of_the_launch_plan():
    from awq_compile.kernels.problem import Problem
    from awq_compile.kernels.spec import plan_launch
    from awq_compile.kernels.specs import get_spec

    spec = get_spec("triton_gemm")
    config, launch = spec.parse(dict(SMALL), "t", backend="hip")
    p = Problem(256, 64, 64, True, "bfloat16", m=5)
    on_gpu = plan_launch(spec, config, launch, p, Target.parse("hip:gfx942"), interpret=False)
    interp = plan_launch(spec, config, launch, p, Target.parse("hip:gfx942"), interpret=True)
    assert on_gpu.constexprs["UPCAST_DOT"] is False and on_gpu.options == {"num_warps": 4, "num_stages": 1}
    assert interp.constexprs["UPCAST_DOT"] is True and interp.options == {}
    fp16 = plan_launch(spec, config, launch, dataclasses.replace(p, act_dtype="float16"), Target.parse("hip:gfx942"),
                       interpret=True)
    assert fp16.constexprs["UPCAST_DOT"] is False


def test_check_target_options_have_help_and_the_cache_location_is_printed(tmp_cache, capsys, monkeypatch):
    parser = check_target.build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings or action.dest
    assert "AWQ_COMPILE_AOT_CACHE" in parser.format_help()
    one = ["--shapes", "4096x4096", "--group-sizes", "128", "--dtypes", "float16", "--m", "1"]
    assert check_target.main(["hip:gfx90a", *one]) == 0
    assert check_target.main(["hip:gfx90a", *one]) == 0           # now from the cache: it says which one
    out = capsys.readouterr().out
    assert "ok (cached)" in out and f"report cache {tmp_cache}" in out
    assert check_target.main(["hip:gfx90a", *one, "--no-cache"]) == 0
    assert "report cache off" in capsys.readouterr().out


_FENCE_PTX = """
from awq_compile.kernels import aot
from awq_compile.kernels.aot import AotRequest

cfg = dict(BLOCK_M=1, BLOCK_N=256, BLOCK_K=128, SPLIT_K=8, FMA_DECODE=1, num_warps=2, num_stages=1)
for spec in ("cuda:sm90", "cuda:sm80"):
    req = AotRequest.make("triton_gemv", cfg, spec)
    fn, values, constexprs, options = aot._planned(req)
    assert constexprs["FENCE"] is True
    ptx = aot.compile_request(req).asm["ptx"]
    # the per-thread release is one fence; the only release-ordered atomic left is the acq_rel ticket
    assert "fence.acq_rel.gpu" in ptx, spec
    assert not [l for l in ptx.splitlines() if ".release" in l], spec      # (was red.global.gpu.release.add)
print("ok")
"""


def test_split_k_release_is_a_per_thread_fence_in_cuda_code_and_a_release_add_elsewhere():
    """decode._release_adds: ``fence.acq_rel.gpu`` per thread where the plan is NVIDIA code (one workspace atomic
    per element instead of two); a no-op release add on ROCm and under the interpreter.  The PTX is checked in a
    child without the interpreter."""
    import subprocess
    import sys

    from awq_compile.kernels.problem import Problem
    from awq_compile.kernels.spec import plan_launch
    from awq_compile.kernels.specs import get_spec

    spec = get_spec("triton_gemv")
    p = Problem(4096, 4096, 128, True, "float16", m=1)
    for target, interpret, fence in (("cuda:sm90", False, True), ("cuda:sm80", False, True),
                                     ("hip:gfx942", False, False), ("cuda:sm90", True, False)):
        t = Target.parse(target)
        config, launch = spec.parse(dict(BLOCK_M=1, BLOCK_N=256, BLOCK_K=128, SPLIT_K=8, num_warps=2, num_stages=1),
                                    "t", backend=t.backend)
        assert plan_launch(spec, config, launch, p, t, interpret=interpret).constexprs["FENCE"] is fence
    out = subprocess.run([sys.executable, "-c", _FENCE_PTX], capture_output=True, text=True, env=aot._child_env())
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
