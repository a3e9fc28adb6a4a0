"""Target: parsing and formatting, facts per architecture, Triton GPUTarget, detection from torch."""

from __future__ import annotations

import types

import pytest
import torch

from awq_compile.target import CI_TARGETS, KNOWN_TARGETS, Target, detect


@pytest.mark.parametrize("spec", KNOWN_TARGETS)
def test_canonical_spelling_round_trips(spec):
    t = Target.parse(spec)
    assert str(t) == spec
    assert Target.parse(str(t)) == t
    assert Target.parse(t) is t
    assert t.known


@pytest.mark.parametrize("spec, expected", [
    ("cuda:90", "cuda:sm90"), ("cuda:9.0", "cuda:sm90"), ("cuda:8.6", "cuda:sm86"), ("cuda:sm_90a", "cuda:sm90"),
    ("cuda:sm100a", "cuda:sm100"), ("CUDA:SM120", "cuda:sm120"), ("sm80", "cuda:sm80"), ("sm_89", "cuda:sm89"),
    ("hip:gfx942:sramecc+:xnack-", "hip:gfx942"), ("gfx1100", "hip:gfx1100"), ("gfx90a:xnack+", "hip:gfx90a"),
    (" hip:GFX950 ", "hip:gfx950"), ("cpu", "cpu"),
])
def test_aliases_parse_to_the_canonical_target(spec, expected):
    assert str(Target.parse(spec)) == expected


@pytest.mark.parametrize("spec", ["", "rocm:gfx942", "cuda", "hip", "cpu:x86", "hip:navi31", "cuda:ampere",
                                  "hip:sm90", "cuda:gfx942", "gfx", "cuda:sm90:extra"])
def test_malformed_specs_raise(spec):
    with pytest.raises(ValueError):
        Target.parse(spec)


@pytest.mark.parametrize("spec, wave, lds, unit, family", [
    ("hip:gfx90a", 64, 65536, "mfma", "cdna"),
    ("hip:gfx942", 64, 65536, "mfma", "cdna"),
    ("hip:gfx950", 64, 163840, "mfma", "cdna"),
    ("hip:gfx1100", 32, 65536, "wmma", "rdna"),
    ("hip:gfx1151", 32, 65536, "wmma", "rdna"),
    ("hip:gfx1201", 32, 65536, "wmma", "rdna"),
    ("cuda:sm80", 32, 166912, "mma.sync", "cuda"),
    ("cuda:sm90", 32, 232448, "wgmma", "cuda"),
    ("cuda:sm100", 32, 232448, "tcgen05", "cuda"),
    ("cuda:sm120", 32, 101376, "mma.sync", "cuda"),
    ("cpu", 1, 0, None, "cpu"),
])
def test_architecture_facts(spec, wave, lds, unit, family):
    t = Target.parse(spec)
    assert (t.wave_size, t.warp_size, t.shared_memory, t.matrix_unit, t.family) == (wave, wave, lds, unit, family)


def test_compute_units_are_facts_of_the_architecture():
    # what persistent / Stream-K grids are sized to (the reference part of each arch), never read from a host
    units = {s: Target.parse(s).compute_units for s in ("cuda:sm80", "cuda:sm90", "hip:gfx942", "hip:gfx950", "cpu")}
    assert units == {"cuda:sm80": 108, "cuda:sm90": 132, "hip:gfx942": 304, "hip:gfx950": 256, "cpu": 0}
    assert all(Target.parse(s).compute_units > 0 for s in CI_TARGETS)
    assert Target.parse("hip:gfx9ff").compute_units == 304 and Target.parse("cuda:sm99").compute_units == 132


@pytest.mark.parametrize("spec", CI_TARGETS)
def test_ci_targets_are_triton_targets(spec):
    t = Target.parse(spec)
    assert t.is_gpu and t.triton_support() is None
    g = t.to_triton()
    assert g.backend == t.backend and g.warp_size == t.warp_size
    assert g.arch == (t.capability if t.backend == "cuda" else t.arch)


@pytest.mark.parametrize("spec, words", [
    ("hip:gfx1030", ("gfx1030", "RDNA2")),
    ("cuda:sm70", ("sm80",)),
    ("cuda:sm75", ("sm80",)),
    ("hip:gfx1036", ("not an AMD architecture this project knows",)),
    ("cpu", ("GPU",)),
])
def test_targets_without_triton_give_a_reason(spec, words):
    reason = Target.parse(spec).triton_support()
    assert reason and all(w in reason for w in words)


def test_unknown_architectures_get_family_defaults():
    t = Target.parse("hip:gfx90c")          # a gfx9 APU this table does not list
    assert not t.known and t.family == "cdna" and t.wave_size == 64 and t.shared_memory == 65536
    u = Target.parse("hip:gfx1152")
    assert not u.known and u.family == "rdna" and u.wave_size == 32
    v = Target.parse("cuda:sm110")
    assert not v.known and v.shared_memory == 101376 and v.triton_support() is None


def test_cpu_has_no_triton_target():
    with pytest.raises(ValueError):
        Target("cpu").to_triton()


# --------------------------------------------------------------------------------------------- detect
def _fake_gpu(monkeypatch, *, hip, major, minor, arch=""):
    props = types.SimpleNamespace(major=major, minor=minor, gcnArchName=arch, name="fake")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=0: props)
    monkeypatch.setattr(torch.version, "hip", hip)


def test_detect_rocm_reads_gcn_arch_name_not_capability(monkeypatch):
    # ROCm torch reports capability 9.4 on an MI300; that is not cuda:sm94.
    _fake_gpu(monkeypatch, hip="6.4.0", major=9, minor=4, arch="gfx942:sramecc+:xnack-")
    assert detect() == Target("hip", "gfx942")
    _fake_gpu(monkeypatch, hip="6.4.0", major=11, minor=0, arch="gfx1100")
    assert detect("cuda:0") == Target("hip", "gfx1100")


def test_detect_cuda_reads_capability(monkeypatch):
    _fake_gpu(monkeypatch, hip=None, major=9, minor=0)
    assert detect() == Target("cuda", "sm90")
    _fake_gpu(monkeypatch, hip=None, major=8, minor=6)
    assert detect(torch.device("cuda", 0)) == Target("cuda", "sm86")


def test_detect_cpu(monkeypatch):
    assert detect("cpu") == Target("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert detect() == Target("cpu")
