"""Kernel selection per target: a pure function of (problem, target), and the tables it reads."""

from __future__ import annotations

import json

import pytest
import torch

from awq_compile.kernels import configs
from awq_compile.kernels.problem import Problem
from awq_compile.kernels.registry import KERNELS, M_BUCKETS, NoKernelError, select
from awq_compile.target import CI_TARGETS, KNOWN_TARGETS, Target

SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096), (4096, 11008))
AMD_KNOBS = ("waves_per_eu", "matrix_instr_nonkdim", "kpack")


def _problems():
    for K, N in SHAPES:
        for G in (32, 64, 128):
            for dt in ("float16", "bfloat16"):
                for zeros in (True, False):
                    yield Problem(K, N, G, zeros, dt, has_bias=zeros)


def _prune(kernel, cfg, problem, target):
    from awq_compile.kernels.triton_w4a16 import prune

    return prune(kernel, cfg, K=problem.K, N=problem.N, group_size=problem.group_size,
                 shared_limit=target.shared_memory, act_bytes=2)


@pytest.mark.parametrize("spec", CI_TARGETS)
def test_ci_targets_get_triton_kernels_for_every_m(spec):
    target = Target.parse(spec)
    for p in _problems():
        plan = select(p, target)
        assert plan.entries[-1].m_max is None
        for e in plan.entries:
            assert KERNELS[e.kernel].uses_triton, (spec, p, plan.describe())
            if e.kernel in ("triton_gemv", "triton_gemm"):
                cfg = e.config_dict
                assert p.group_size % cfg["BLOCK_K"] == 0
                assert _prune(e.kernel, cfg, p.with_m(e.m_max), target) is None
        assert plan.entry_for(1).kernel != plan.entry_for(4096).kernel or len(plan.entries) > 1
        # the plan text the custom op receives decodes to the same plan
        assert type(plan).decode(plan.encode()).entries == plan.entries


@pytest.mark.parametrize("spec", ["hip:gfx1030", "cuda:sm70", "cuda:sm75", "hip:gfx908", "hip:gfx1036"])
def test_targets_triton_cannot_serve_fall_back_with_a_reason(spec):
    target = Target.parse(spec)
    plan = select(Problem(4096, 4096, 128, True, "float16"), target)
    assert all(not KERNELS[e.kernel].uses_triton for e in plan.entries)
    reasons = dict(plan.rejected)
    assert "triton_gemm" in reasons and target.triton_support() in reasons["triton_gemm"]


def test_cpu_plan():
    plan = select(Problem(4096, 4096, 128, True, "bfloat16"), Target("cpu"))
    assert all(not KERNELS[e.kernel].uses_triton for e in plan.entries)


def test_selection_does_not_depend_on_the_host(monkeypatch):
    """Asking about an MI300 on this machine gives what an MI300 (or a machine pretending) would get."""
    problems = list(_problems())[:12]
    targets = [Target.parse(t) for t in CI_TARGETS + ("hip:gfx1030", "cuda:sm70", "cpu")]
    before = [[select(p, t) for p in problems] for t in targets]

    def boom(*a, **k):
        raise AssertionError("selection looked at the host")

    monkeypatch.setattr(torch.cuda, "is_available", boom)
    monkeypatch.setattr(torch.cuda, "get_device_properties", boom)
    monkeypatch.setattr(torch.cuda, "current_device", boom)
    monkeypatch.setattr(torch.version, "hip", "6.4.0")
    configs._load.cache_clear()
    after = [[select(p, t) for p in problems] for t in targets]
    assert before == after


def test_forced_and_disabled_kernels():
    p = Problem(4096, 4096, 128, True, "float16")
    t = Target.parse("hip:gfx942")
    forced = select(p, t, force="triton_gemm")
    assert {e.kernel for e in forced.entries} == {"triton_gemm"}
    plan = select(p, t, disabled=("triton_gemv",))
    assert "triton_gemv" not in plan.kernels
    assert "disabled" in dict(plan.rejected)["triton_gemv"]
    with pytest.raises(NoKernelError) as e:
        select(p, t, disabled=tuple(KERNELS))
    assert set(e.value.reasons) >= {"triton_gemv", "triton_gemm"}


def test_problems_no_kernel_takes_list_every_refusal():
    with pytest.raises(NoKernelError) as e:
        select(Problem(4096, 4096, 100, True, "float16"), Target.parse("hip:gfx942"))
    assert set(e.value.reasons) >= {"triton_gemv", "triton_gemm", "torch_dequant"}
    assert all("group size" in r for r in e.value.reasons.values())


# --------------------------------------------------------------------------------------------- tables
def _all_tables():
    for name in configs.available_tables():
        yield name, configs._load(name)


def test_tables_are_well_formed():
    names = configs.available_tables()
    assert {"cuda", "cdna", "rdna"} <= set(names)
    for name, data in _all_tables():
        amd = name in ("cdna", "rdna") or name.startswith("gfx")
        rdna = name == "rdna" or name.startswith("gfx1")
        for version, table in data["tables"].items():
            assert version == "default" or version.replace(".", "").isdigit(), (name, version)
            for kernel, buckets in table.items():
                tops = [b["m_max"] for b in buckets]
                assert tops[-1] is None or kernel == "triton_gemv", (name, kernel)
                finite = [t for t in tops if t is not None]
                assert finite == sorted(finite) and len(set(finite)) == len(finite), (name, kernel)
                for b in buckets:
                    assert b["configs"], (name, kernel, b)
                    for cfg in b["configs"]:
                        assert {"BLOCK_N", "BLOCK_K", "num_warps", "num_stages"} <= set(cfg), (name, cfg)
                        if not amd:
                            assert not set(AMD_KNOBS) & set(cfg), (name, cfg)
                        else:
                            assert cfg["num_stages"] <= 2, (name, cfg)   # AMD's stream pipeliner
                        if rdna:
                            assert "matrix_instr_nonkdim" not in cfg and "kpack" not in cfg, (name, cfg)


@pytest.mark.parametrize("spec, kernel, source", [
    ("hip:gfx942", "triton_gemm", "gfx942.json"), ("hip:gfx950", "triton_gemv", "gfx950.json"),
    ("hip:gfx90a", "triton_gemm", "cdna.json"), ("hip:gfx1100", "triton_gemm", "rdna.json"),
    ("hip:gfx1151", "triton_gemv", "rdna.json"), ("hip:gfx1201", "triton_gemm", "gfx1201.json"),
    ("hip:gfx1201", "triton_gemv", "rdna.json"), ("cuda:sm80", "triton_gemm", "sm80.json"),
    ("cuda:sm80", "triton_gemv", "cuda.json"), ("cuda:sm120", "triton_gemm", "cuda.json"),
])
def test_tables_are_looked_up_per_kernel_arch_then_family(spec, kernel, source):
    t = Target.parse(spec)
    assert configs.source_for(t.arch, t.family, kernel, "default").startswith(source)


def test_triton_version_keys_win_over_default(monkeypatch):
    fake = {
        "gfxtest": {"tables": {"3.6": {"triton_gemm": [{"m_max": None, "configs": [{"BLOCK_N": 1}]}]},
                               "default": {"triton_gemm": [{"m_max": None, "configs": [{"BLOCK_N": 2}]}]}}},
        "cdna": {"tables": {"default": {"triton_gemv": [{"m_max": 4, "configs": [{"BLOCK_N": 3}]}],
                                        "triton_gemm": [{"m_max": None, "configs": [{"BLOCK_N": 4}]}]}}},
    }
    monkeypatch.setattr(configs, "_load", lambda name: fake.get(name))
    assert configs.candidates("gfxtest", "cdna", "triton_gemm", 8, "3.6") == ("gfxtest.json[3.6]", [{"BLOCK_N": 1}])
    assert configs.candidates("gfxtest", "cdna", "triton_gemm", 8, "3.9") == ("gfxtest.json[default]", [{"BLOCK_N": 2}])
    assert configs.candidates("gfxtest", "cdna", "triton_gemv", 2, "3.6") == ("cdna.json[default]", [{"BLOCK_N": 3}])
    assert configs.candidates("gfxtest", "cdna", "triton_gemv", 8, "3.6") == ("cdna.json[default]", [])
    label, merged = configs.table_for("gfxtest", "cdna", "3.6")
    assert merged["triton_gemm"][0]["configs"] == [{"BLOCK_N": 1}] and "triton_gemv" in merged


def test_pruning_drops_configs_that_break_group_size_or_shared_memory():
    cfg = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "SPLIT_K": 1, "num_warps": 4, "num_stages": 2}
    p = Problem(4096, 4096, 32, True, "float16")
    assert "group size" in _prune("triton_gemm", cfg, p, Target.parse("hip:gfx942"))
    big = dict(cfg, BLOCK_M=256, BLOCK_N=256, BLOCK_K=128, num_stages=4)
    p128 = Problem(4096, 4096, 128, True, "float16")
    assert "shared memory" in _prune("triton_gemm", big, p128, Target.parse("hip:gfx942"))


def test_table_files_are_json_objects_with_a_comment():
    for name in configs.available_tables():
        from importlib import resources

        text = resources.files("awq_compile.kernels").joinpath("configs", f"{name}.json").read_text()
        data = json.loads(text)
        assert isinstance(data.get("comment"), str) and data["comment"], name


# --------------------------------------------------------------------------------------------- explain
@pytest.mark.parametrize("spec", CI_TARGETS + ("hip:gfx1030", "cuda:sm70"))
def test_explain_names_the_kernel_per_target_from_this_machine(spec):
    import awq_compile
    from awq_compile.models.awq_linear import AwqLinear

    torch.manual_seed(0)
    layer = AwqLinear.from_float(torch.nn.Linear(256, 128, bias=True), group_size=64, dtype=torch.float16)
    x = torch.randn(3, 256, dtype=torch.float16)
    report = awq_compile.explain(layer, x, target=spec)
    assert len(report.layers) == 1
    lay = report.layers[0]
    used = set(lay.kernels.values())
    if Target.parse(spec).triton_support() is None:
        assert used and all(KERNELS[k].uses_triton for k in used), (spec, used)
    else:
        assert not any(KERNELS[k].uses_triton for k in used)
        assert Target.parse(spec).triton_support() in lay.rejected["triton_gemm"]


def test_every_known_target_selects_something():
    for spec in KNOWN_TARGETS:
        plan = select(Problem(4096, 4096, 128, True, "float16"), Target.parse(spec))
        assert plan.entries and plan.entries[-1].m_max is None
    assert M_BUCKETS[-1] is None
