"""triton_gemv_deep (triton/gemv_deep.py) against float64: every switch of its config -- chunks of one and
several K tiles, per-tile or per-row offset sums (XSUM), a ragged last chunk (K not a multiple of the chunk), split-K with and without a workspace,
the next chunk prefetched or not, the pipelined loop (STAGES) -- on fresh random data, NaN-poisoned
outputs, twice per case (the split-K workspace and tickets must be left clean), fp16 and bf16."""

import pytest
import torch

from _util import kernel_case
from test_triton_kernels import DEV, _run, prune

DEEP = [
    dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=128, TILES=1, SPLIT_K=1),
    dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=128, TILES=2, SPLIT_K=1),               # K = 384: a half chunk at the end
    dict(BLOCK_M=1, BLOCK_N=64, BLOCK_K=64, TILES=4, SPLIT_K=2, PREFETCH=0),
    dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=32, TILES=2, SPLIT_K=3, PREFETCH=0, STAGES=3),
    dict(BLOCK_M=1, BLOCK_N=64, BLOCK_K=64, TILES=1, SPLIT_K=6),                 # one chunk per program
    dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, TILES=2, SPLIT_K=2, XSUM=0),       # per-row offset sums
    dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, TILES=2, SPLIT_K=2, XPREFETCH=1),  # x one chunk ahead
    dict(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, TILES=1, SPLIT_K=3, XPREFETCH=1),
]


@pytest.mark.parametrize("cfg", DEEP, ids=["-".join(f"{k}{v}" for k, v in c.items()) for c in DEEP])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_deep_gemv_matches_float64(cfg, dtype):
    # N = 72: a ragged column tile; M = 3 and 1 (one program row per token); zeros + bias, then neither
    for i, (M, zeros, bias) in enumerate(((3, True, True), (1, False, False))):
        x, q, qz, s, b, ref = kernel_case(M, 384, 72, 128, dtype, zeros, bias, hash((str(cfg), i)) % 1000, DEV)
        _run("triton_gemv_deep", cfg, x, q, qz, s, b, 128, ref, dtype)


def test_deep_gemv_small_groups():
    # G = 32: every K tile its own group, several groups per chunk
    cfg = dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=32, TILES=4, SPLIT_K=2)
    x, q, qz, s, b, ref = kernel_case(2, 256, 40, 32, torch.float16, True, False, 7, DEV)
    _run("triton_gemv_deep", cfg, x, q, qz, s, b, 32, ref, torch.float16)


def test_deep_gemv_config_rules():
    rule = lambda **c: prune("triton_gemv_deep", dict(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, **c),   # noqa: E731
                             K=1024, N=4096, group_size=128)
    assert rule() is None and rule(TILES=2, SPLIT_K=4) is None
    assert "power of two" in rule(TILES=3)
    assert "alternatives" in rule(STAGES=3)                       # PREFETCH is on by default
    assert rule(STAGES=3, PREFETCH=0) is None
    assert "rides on" in rule(XPREFETCH=1, XSUM=0) and rule(XPREFETCH=1) is None
    assert "exceeds the 4 chunks" in rule(TILES=2, SPLIT_K=5)
    assert "one row per program" in prune("triton_gemv_deep", dict(BLOCK_M=2, BLOCK_N=64, BLOCK_K=128),
                                          K=1024, N=4096, group_size=128)
