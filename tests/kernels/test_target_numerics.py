"""Numerics of each Triton kernel with the configs each CI target would use.

The configs are the ones ``registry.select`` emits for the target on the representative layers (the
same list ``check-target`` compiles); each runs at a scaled-down shape that keeps its tile, split-K and
group size -- two column tiles with the second one ragged (N not a multiple of BLOCK_N), more than one
row tile -- against a float64 reference on fresh random data, fp16 and bf16, with and without zero
points, with bias.  On a CPU machine the kernels run in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET before triton is imported); on a GPU machine they run on the GPU.  Launch options
(warps, stages, AMD knobs) do not change results and are not modelled by the interpreter, so configs
that differ only there are run once.
"""

from __future__ import annotations

import functools

import pytest
import torch

from awq_compile.cli.check_target import plan_requests
from awq_compile.formats import quantize
from awq_compile.formats.standard import from_unpacked
from awq_compile.kernels.specs import get_spec
from awq_compile.target import CI_TARGETS, Target, interpreter_active
from _util import rel_err



@functools.lru_cache(maxsize=None)
def _cases() -> list[tuple]:
    """(kernel, config items, group size, weight layout, [targets using it]) over every CI target, launch
    options aside."""
    seen: dict[tuple, list] = {}
    for t in CI_TARGETS:
        findings, _ = plan_requests(Target.parse(t), dtypes=("float16",))
        for f in findings.values():
            r = f.request
            cfg = tuple((k, v) for k, v in r.config if k.isupper())          # launch options aside
            key = (r.kernel, cfg, r.group_size, r.layout)
            seen.setdefault(key, [])
            if t not in seen[key]:
                seen[key].append(t)
    return [(k, cfg, g, lay, tuple(ts)) for (k, cfg, g, lay), ts in sorted(seen.items())]


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _case_id(case):
    kernel, cfg, g, layout, targets = case
    c = dict(cfg)
    flags = "".join(f"-{k.lower()}" for k in ("TRANS", "XPERM", "FMA_DECODE", "SCALE_AFTER") if c.get(k))
    lay = "" if layout == "standard" else f"-{layout}"
    return f"{kernel}-{c.get('BLOCK_M', 1)}x{c['BLOCK_N']}x{c.get('BLOCK_K', 128)}-sk{c.get('SPLIT_K', 1)}{flags}-g{g}{lay}"


def test_every_ci_target_contributes_configs():
    covered = {t for case in _cases() for t in case[4]}
    assert covered == set(CI_TARGETS)
    # triton_gemv_stream is no longer planned for these layers (sm90's M 2..4 went to the stripe kernel); it
    # still serves K >= 14336, N > 4096 at M = 1 (tests/kernels/test_sm90_small_m.py), its numerics are
    # test_kplanes_kernels' and test_triton_kernels'
    assert {case[0] for case in _cases()} >= {"triton_gemv", "triton_gemm", "triton_gemm_planes",
                                               "triton_dequant_mm", "triton_stripe"}
    assert {case[3] for case in _cases()} == {"standard", "kplanes"}


@pytest.mark.parametrize("case", _cases(), ids=_case_id)
def test_kernel_config_matches_float64(case):
    from awq_compile.kernels.triton.launch import run

    from awq_compile.formats.kplanes import to_kplanes

    kernel, cfg_items, G, layout, targets = case
    cfg = dict(cfg_items)
    spec = get_spec(kernel)
    dev = _device()
    if not spec.interpretable and (dev == "cpu" or interpreter_active()):
        pytest.skip(f"{kernel} has no interpreter (Gluon): its numerics run on the GPU (tests/kernels/test_gemm_rs.py)")
    config, opts = spec.parse(cfg, f"{kernel} {cfg}", backend=None, table=False)
    bm, bn = cfg.get("BLOCK_M", 1), cfg["BLOCK_N"]
    split = cfg.get("SPLIT_K", 1)
    K = G * max(2, split)                   # every split gets at least one group
    N = bn + 8                              # two column tiles, the second ragged
    M = bm + 1                              # two row tiles, the second ragged
    gen = torch.Generator().manual_seed(hash((kernel, cfg_items, G)) % 2**31)
    for dtype, symmetric in ((torch.float16, False), (torch.bfloat16, True), (torch.bfloat16, False),
                             (torch.float16, True)):
        u = quantize(torch.randn(K, N, generator=gen), G, symmetric=symmetric)
        u.scales = u.scales.to(dtype)
        std = from_unpacked(u)
        qweight = to_kplanes(std.qweight) if layout == "kplanes" else std.qweight
        x = torch.randn(M, K, generator=gen).to(dtype)
        bias = torch.randn(N, generator=gen).to(dtype)
        out = torch.empty(M, N, dtype=dtype, device=dev)
        run(kernel, config, opts, x.to(dev), qweight.to(dev),
            None if std.qzeros is None else std.qzeros.to(dev), std.scales.to(dev), bias.to(dev), out, G,
            Target.parse(targets[0]), interpret=interpreter_active(), layout=layout)
        ref = x.double() @ u.dequantize(torch.float64) + bias.double()
        err = rel_err(out.cpu(), ref)
        tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
        assert err < tol, (f"{kernel} {cfg} g{G} {dtype} zeros={not symmetric} (used by {', '.join(targets)}): "
                           f"relative error {err:.2e}")
        assert out.dtype == dtype and out.shape == (M, N)
