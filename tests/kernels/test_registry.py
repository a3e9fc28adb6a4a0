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


def _prune(entry, problem, target):
    return entry.config.check(entry.launch, problem, target.shared_memory)


@pytest.mark.parametrize("spec", CI_TARGETS)
def test_ci_targets_get_triton_kernels_for_every_m(spec):
    target = Target.parse(spec)
    for p in _problems():
        plan = select(p, target)
        assert plan.entries[-1].m_max is None
        for e in plan.entries:
            assert KERNELS[e.kernel].uses_triton, (spec, p, plan.describe())
            if e.config is not None:
                assert p.group_size % e.config.BLOCK_K == 0
                assert _prune(e, p.with_m(e.m_max), target) is None
        assert plan.entry_for(1).kernel != plan.entry_for(4096).kernel or len(plan.entries) > 1
        # the plan text the custom op receives decodes to the same plan, target included
        decoded = type(plan).decode(plan.encode())
        assert decoded.entries == plan.entries and decoded.target == target


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
                if kernel == "layout":      # the packed layout the table asks for: declared where measured only
                    assert (name, buckets) == ("sm90", "kplanes"), (name, version, buckets)
                    continue
                tops = [b["m_max"] for b in buckets]
                assert tops[-1] is None or kernel == "triton_gemv", (name, kernel)
                finite = [t for t in tops if t is not None]
                assert finite == sorted(finite) and len(set(finite)) == len(finite), (name, kernel)
                for b in buckets:
                    assert b["configs"], (name, kernel, b)
                    for cfg in b["configs"]:
                        assert cfg.get("kernel", kernel) in KERNELS, (name, cfg)
                        # every entry states its tile and launch options (the register-operand GEMM's K tile is
                        # fixed: it has no BLOCK_K key)
                        tile = {"BLOCK_K"} & set(KERNELS[cfg.get("kernel", kernel)].config.table_keys())
                        assert {"BLOCK_N", "num_warps", "num_stages"} | tile <= set(cfg), (name, cfg)
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


def _entry(bn, **kw):
    return dict(BLOCK_M=16, BLOCK_N=bn, BLOCK_K=32, num_warps=4, num_stages=2, **kw)


def test_triton_version_keys_win_over_default(monkeypatch):
    fake = {
        "gfx9ff": {"tables": {"3.6": {"triton_gemm": [{"m_max": None, "configs": [_entry(16)]}]},
                               "default": {"triton_gemm": [{"m_max": None, "configs": [_entry(32)]}]}}},
        "cdna": {"tables": {"default": {"triton_gemv": [{"m_max": 4, "configs": [_entry(48)]}],
                                        "triton_gemm": [{"m_max": None, "configs": [_entry(64)]}]}}},
    }
    monkeypatch.setattr(configs, "_load", lambda name: fake.get(name))

    def tiles(arch, slot, m, version):
        label, cands = configs.candidates(arch, "cdna", slot, m, version)
        return label, [c.config.BLOCK_N for c in cands]

    assert tiles("gfx9ff", "triton_gemm", 8, "3.6") == ("gfx9ff.json[3.6]", [16])
    assert tiles("gfx9ff", "triton_gemm", 8, "3.9") == ("gfx9ff.json[default]", [32])
    assert tiles("gfx9ff", "triton_gemv", 2, "3.6") == ("cdna.json[default]", [48])
    assert tiles("gfx9ff", "triton_gemv", 8, "3.6") == ("cdna.json[default]", [])
    label, merged = configs.table_for("gfx9ff", "cdna", "3.6")
    assert merged["triton_gemm"][0].candidates[0].config.BLOCK_N == 16 and "triton_gemv" in merged


def _parsed_entry(kernel, cfg, backend="hip"):
    from awq_compile.kernels.registry import PlanEntry

    config, launch = KERNELS[kernel].parse(cfg, "test", backend=backend)
    return PlanEntry(None, kernel, config, launch)


def test_pruning_drops_configs_that_break_group_size_or_shared_memory():
    cfg = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "SPLIT_K": 1, "num_warps": 4, "num_stages": 2}
    p = Problem(4096, 4096, 32, True, "float16")
    assert "group size" in _prune(_parsed_entry("triton_gemm", cfg), p, Target.parse("hip:gfx942"))
    big = dict(cfg, BLOCK_M=256, BLOCK_N=256, BLOCK_K=128, num_stages=4)
    p128 = Problem(4096, 4096, 128, True, "float16")
    assert "shared memory" in _prune(_parsed_entry("triton_gemm", big), p128, Target.parse("hip:gfx942"))


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


# --------------------------------------------------------------------------------------------- typed tables
def test_every_table_parses_into_typed_configs():
    for name in configs.available_tables():
        parsed = configs.parse_table(name, configs._load(name), "test")
        for version, table in parsed.items():
            for slot, buckets in table.items():
                for b in buckets:
                    for c in b.candidates:
                        assert type(c.config) is KERNELS[c.kernel].config, (name, c.where)
                        assert c.launch.num_warps and c.launch.num_stages, (name, c.where)


def _one_entry_table(monkeypatch, name, entry, slot="triton_gemm"):
    real = configs._load
    table = {"comment": "test", "tables": {"default": {slot: [{"m_max": None, "configs": [entry]}]}}}
    monkeypatch.setattr(configs, "_load", lambda n: table if n == name else real(n))


@pytest.mark.parametrize("entry, message", [
    (dict(_entry(64), PLANE=1), r"unknown key\(s\) PLANE for GemmConfig"),            # misspelt switch
    (dict(_entry(64), XPERM=1), r"unknown key\(s\) XPERM for GemmConfig"),            # another kernel's key
    (dict(_entry(64), maxnreg=64), r"unknown key\(s\) maxnreg for HipLaunchOptions"),  # a CUDA option on AMD
    ({k: v for k, v in _entry(64).items() if k != "BLOCK_K"}, r"missing key\(s\) BLOCK_K"),
    ({k: v for k, v in _entry(64).items() if k != "num_stages"}, r"missing key\(s\) num_stages"),
    (dict(_entry(64), kernel="triton_gemm_plane"), r"unknown kernel 'triton_gemm_plane'"),
    (dict(_entry(64), SCALE_AFTER=2), r"SCALE_AFTER=2 is a switch"),
])
def test_unknown_or_missing_table_keys_raise_naming_file_arch_and_entry(monkeypatch, entry, message):
    from awq_compile.kernels.spec import TableError

    _one_entry_table(monkeypatch, "gfx942", entry)
    with pytest.raises(TableError, match=message) as e:
        select(Problem(4096, 4096, 128, True, "float16"), Target.parse("hip:gfx942"))
    text = str(e.value)
    assert "gfx942.json" in text and "planning arch gfx942" in text
    assert "tables['default']['triton_gemm'] bucket m_max=None config #0" in text


def test_unknown_slot_and_misplaced_bucket_raise(monkeypatch):
    from awq_compile.kernels.spec import TableError

    _one_entry_table(monkeypatch, "sm80", _entry(64), slot="triton_gemmm")
    with pytest.raises(TableError, match=r"sm80.json \(planning arch sm80\).*'triton_gemmm'.*unknown slot"):
        select(Problem(4096, 4096, 128, True, "float16"), Target.parse("cuda:sm80"))


def test_a_table_entry_names_the_variant_kernel_that_runs():
    """sm90's M 5..16 bucket lists the register-operand GEMM's persistent grid (K, N >= 4096) then the stripe
    kernel and nibble-plane configs: the plan (and explain) name the kernel that runs."""
    t = Target.parse("cuda:sm90")
    big = select(Problem(4096, 14336, 128, True, "float16"), t)
    assert "M 5..16: triton_gemm_rs 16x128x128 per_sm3 w4 st3" in big.describe()
    plan = select(Problem(4096, 1024, 128, True, "float16"), t)      # N_MIN=4096 excludes the stripe entry
    e = plan.entry_for(16)
    assert e.kernel == "triton_gemm_planes" and e.config.XPERM and e.config.BLOCK_K == 128
    assert "M 5..16: triton_gemm_planes 16x128x128 sk4 xperm w4 st3" in plan.describe()
    assert plan.entry_for(1).kernel in ("triton_gemv", "triton_gemv_stream")
    # shape filters, not switches in the config: K=14336 N<=4096 takes the one-group-per-program GEMV
    # (K_MIN=K_MAX=14336, N_MAX=4096), a wider N the streaming GEMV (K_MIN=14336)
    down = select(Problem(14336, 4096, 128, True, "float16"), t).entry_for(1)
    assert down.kernel == "triton_gemv" and down.config.SPLIT_K == 112
    wide = select(Problem(14336, 8192, 128, True, "float16"), t)
    assert wide.entry_for(1).kernel == "triton_gemv_stream"
    assert "K_MIN" in dict(plan.rejected)["triton_gemv_stream"]
    # a group the plane kernel cannot take falls to the next entry of the same bucket
    g64 = select(Problem(4096, 14336, 64, True, "float16"), t)
    assert g64.entry_for(16).kernel == "triton_gemm"


def test_selection_imports_no_triton_and_no_kernel_code():
    import subprocess
    import sys

    code = ("import sys\n"
            "from awq_compile.kernels.registry import select, KERNELS\n"
            "from awq_compile.kernels.problem import Problem\n"
            "from awq_compile.target import Target, CI_TARGETS\n"
            "for t in CI_TARGETS:\n"
            "    for K, N in ((4096, 4096), (4096, 14336), (14336, 4096)):\n"
            "        for G in (32, 128):\n"
            "            select(Problem(K, N, G, True, 'bfloat16'), Target.parse(t)).encode()\n"
            "bad = [m for m in sys.modules if m == 'triton' or m.startswith(('triton.', 'awq_compile.kernels.triton'))]\n"
            "assert not bad, bad\n"
            "print('ok', len(KERNELS))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr


def test_shape_filters_select_per_shape_class():
    from awq_compile.kernels.spec import ShapeFilter

    f = ShapeFilter.from_table({"K_MIN": 8192, "N_MAX": 4096}, "test")
    assert f.reason(8192, 4096) is None
    assert "K_MIN=8192 excludes K=4096" == f.reason(4096, 4096)
    assert "N_MAX" in f.reason(8192, 8192)


# --------------------------------------------------------------------------------------------- device rule
def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_a_cuda_plan_meeting_cpu_tensors_is_replanned_with_one_warning(caplog):
    import logging

    import awq_compile.runtime.op  # noqa: F401
    from awq_compile.formats import quantize, to_awq
    from awq_compile.runtime import dispatch
    from _util import rel_err

    dispatch._WARNED.clear()
    torch.manual_seed(3)
    u = quantize(torch.randn(256, 64), 64)
    q, qz, s = to_awq(u)
    plan = select(Problem(256, 64, 64, True, "bfloat16"), Target.parse("cuda:sm90"))
    assert any(KERNELS[e.kernel].uses_triton for e in plan.entries)
    text = plan.encode()
    assert text.startswith("@target=cuda:sm90;")
    op = torch.ops.awq_compile.w4a16_linear
    with caplog.at_level(logging.WARNING, logger="awq_compile"):
        for m in (1, 3, 300):
            x = torch.randn(m, 256, dtype=torch.bfloat16)
            y = op(x, q, qz, s, None, [], "model.layers.0.mlp.down_proj", "awq", 64, text, "")
            assert rel_err(y, x.double() @ u.dequantize(torch.float64)) < 1e-2
    msgs = _warnings(caplog)
    assert len(msgs) == 1, msgs
    assert "model.layers.0.mlp.down_proj" in msgs[0] and "cuda:sm90" in msgs[0] and "re-planned for cpu" in msgs[0]
    assert "cpu_int4pack" in msgs[0]      # it says what runs instead


def test_device_rule_in_the_registry():
    from awq_compile.kernels.registry import plan_for_device

    p = Problem(4096, 4096, 128, True, "float16")
    gfx942 = select(p, Target.parse("hip:gfx942"))
    same, why = plan_for_device(gfx942, Target.parse("hip:gfx90a"), p)     # same family: runs as made
    assert same is gfx942 and why is None
    for other in ("cuda:sm90", "cpu", "hip:gfx1100"):
        new, why = plan_for_device(gfx942, Target.parse(other), p)
        assert new.target == Target.parse(other) and new == select(p, Target.parse(other))
        assert "made for hip:gfx942" in why and f"re-planned for {other}" in why
    # the selection options travel with the plan; a forced kernel that cannot run there is dropped, said so
    forced = select(p, Target.parse("hip:gfx942"), force="triton_gemm", disabled=("triton_gemv",))
    new, why = plan_for_device(forced, Target.parse("cuda:sm80"), p)
    assert new.kernels == ("triton_gemm",)
    new, why = plan_for_device(forced, Target.parse("cpu"), p)
    assert "forced kernel triton_gemm cannot run there" in why and new.target == Target("cpu")
    # a plan text written without a target runs wherever its kernels can
    anywhere = type(gfx942).decode("*:torch_dequant")
    assert plan_for_device(anywhere, Target("cpu"), p)[1] is None


def test_explain_names_the_variant_that_runs_with_its_config_per_bucket():
    import awq_compile
    from awq_compile.models.awq_linear import AwqLinear

    torch.manual_seed(0)
    layer = AwqLinear.from_float(torch.nn.Linear(1024, 256, bias=True), group_size=128, dtype=torch.float16)
    report = awq_compile.explain(layer, torch.randn(3, 1024, dtype=torch.float16), target="cuda:sm90")
    lay = report.layers[0]
    assert lay.kernels["5..16"] == "triton_gemm_planes"
    assert lay.configs["5..16"] == "triton_gemm_planes 16x128x128 sk4 xperm w4 st3"
    assert "5..16: triton_gemm_planes 16x128x128 sk4 xperm w4 st3" in str(report)
    assert "triton_gemv_stream" in lay.rejected and "K_MIN=14336" in lay.rejected["triton_gemv_stream"]
