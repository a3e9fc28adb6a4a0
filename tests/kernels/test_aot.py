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
    from awq_compile.kernels import triton_w4a16

    # the pruning estimate would drop this tile; turn the estimate off to prove the compiled size is checked
    real_prune = triton_w4a16.prune
    monkeypatch.setattr(triton_w4a16, "prune", lambda *a, **k: real_prune(*a, **dict(k, shared_limit=0)))
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
