"""The op's call memo (runtime/calls.py): a layer's later calls skip the checks, the plan and the cache lookup --
and are still right whenever the weight tensors change, die, are replaced by others at the same address, or an
argument turns bad."""

import gc
import weakref

import pytest
import torch

import awq_compile.runtime.merged  # noqa: F401  registers the merged op
import awq_compile.runtime.op  # noqa: F401
from awq_compile.formats import quantize, to_awq
from awq_compile.runtime.calls import call_memo
from awq_compile.runtime.weights import weight_cache
from _util import rel_err

op = torch.ops.awq_compile.w4a16_linear
merged = torch.ops.awq_compile.w4a16_linear_merged
PLAN = "*:torch_dequant"


def layer(seed, K=256, N=64, G=64):
    torch.manual_seed(seed)
    u = quantize(torch.randn(K, N), G)
    u.scales = u.scales.to(torch.float16)
    return u, to_awq(u)


def call(x, w, bias=None, name="t"):
    q, z, s = w
    return op(x, q, z, s, bias, [], name, "awq", 64, PLAN, "")


def ref(x, u, bias=None):
    out = x.double() @ u.dequantize(torch.float64)
    return out if bias is None else out + bias.double()


def test_second_call_is_served_by_the_memo_and_stays_right():
    u, w = layer(0)
    memo = call_memo()
    x = torch.randn(3, 256, dtype=torch.float16)
    call(x, w)
    hits = memo.hits
    for M in (3, 1, 7):
        x = torch.randn(M, 256, dtype=torch.float16)
        assert rel_err(call(x, w), ref(x, u)) < 2e-3
    assert memo.hits == hits + 3


def test_in_place_reload_is_seen():
    u, w = layer(1)
    x = torch.randn(2, 256, dtype=torch.float16)
    call(x, w)
    u2, w2 = layer(2)
    for dst, src in zip(w, w2):
        dst.copy_(src)                       # bumps the versions: the memo must not serve the old weight
    assert rel_err(call(x, w), ref(x, u2)) < 2e-3


def test_new_weights_at_a_dead_layers_id_and_address_get_their_own_result():
    # CPython hands a freed object's id to the next object of its size; torch may hand out the same memory:
    # the memo's weak references must tell the new tensors from the dead ones
    x = torch.randn(2, 256, dtype=torch.float16)
    u, w = layer(3)
    call(x, w)
    for seed in range(4, 12):
        del w
        gc.collect()
        u, w = layer(seed)
        assert rel_err(call(x, w), ref(x, u)) < 2e-3, seed


def test_memo_keeps_neither_the_users_tensors_nor_the_repacked_weight_alive():
    cache = weight_cache()
    x = torch.randn(2, 256, dtype=torch.float16)
    before = len(cache)
    u, w = layer(20)
    call(x, w)
    call(x, w)
    assert len(cache) == before + 1
    refs = [weakref.ref(t) for t in w]
    del w, u                                  # (to_awq shares the scales with the unpacked form)
    gc.collect()
    assert all(r() is None for r in refs)
    assert len(cache) == before


def test_a_bad_bias_on_a_remembered_call_still_raises_naming_the_layer():
    u, w = layer(21)
    x = torch.randn(2, 256, dtype=torch.float16)
    b = torch.randn(64, dtype=torch.float16)
    assert rel_err(call(x, w, b, "proj"), ref(x, u, b)) < 2e-3
    with pytest.raises(ValueError, match="layer 'proj': bias"):
        call(x, w, torch.randn(65, dtype=torch.float16), "proj")
    with pytest.raises(ValueError, match="layer 'proj': activation's last dimension"):
        call(torch.randn(2, 128, dtype=torch.float16), w, b, "proj")


def test_another_dtype_or_a_cast_bias_is_another_call():
    u, w = layer(22)
    x = torch.randn(2, 256, dtype=torch.float16)
    call(x, w)
    xb = x.to(torch.bfloat16)
    b = torch.randn(64, dtype=torch.float32)           # cast to x's dtype by the op
    assert call(xb, w, b).dtype == torch.bfloat16
    assert rel_err(call(xb, w, b), ref(xb, u, b)) < 1e-2


def test_inference_tensors_are_never_remembered():
    x = torch.randn(2, 256, dtype=torch.float16)
    memo = call_memo()
    with torch.inference_mode():
        u, w = layer(23)
        n = len(memo)
        call(x, w)
        u2, w2 = layer(24)
        for dst, src in zip(w, w2):
            dst.copy_(src)                  # no version counter: only a fresh conversion sees this
        assert rel_err(call(x, w), ref(x, u2)) < 2e-3
        assert len(memo) == n


def test_merged_op_memo_sees_a_part_reloaded():
    x = torch.randn(2, 256, dtype=torch.float16)
    (ua, wa), (ub, wb) = layer(30), layer(31)

    def run():
        return merged(x, [wa[0], wb[0]], [wa[1], wb[1]], [wa[2], wb[2]], None, "a;b", "awq", 64, PLAN)

    want = torch.cat([ref(x, ua), ref(x, ub)], dim=1)
    assert rel_err(run(), want) < 2e-3
    assert rel_err(run(), want) < 2e-3
    uc, wc = layer(32)
    wb[2].copy_(wc[2])                        # the second part's scales only
    ub.scales = uc.scales
    assert rel_err(run(), torch.cat([ref(x, ua), ref(x, ub)], dim=1)) < 2e-3


def test_another_tensor_object_on_the_same_memory_is_not_the_remembered_one():
    # what a dead tensor's id reused for a new tensor on the same memory looks like to the memo: same data
    # pointer, shape, strides and version -- only the weak reference tells them apart
    from awq_compile.runtime.calls import CallMemo

    memo = CallMemo()
    t = torch.randn(4, 4)
    held = _Held()
    memo.remember("k", (t, None), None, held, 4, 4, None)
    assert memo.lookup("k", (t, None)) is not None
    twin = t.view_as(t)
    assert twin.data_ptr() == t.data_ptr() and twin._version == t._version
    assert memo.lookup("k", (twin, None)) is None


class _Held:   # a weakly referenceable stand-in for the weight cache's value
    pass
