"""The weight cache: freshness of repacked weights (inference tensors) and their lifetime."""

import logging

import torch

import awq_compile.runtime.op  # noqa: F401  registers torch.ops.awq_compile
from awq_compile.formats import quantize, to_awq
from awq_compile.models import AwqLinear
from awq_compile.formats.standard import dequantize_standard
from awq_compile.runtime.weights import WeightCache
from _util import rel_err

op = torch.ops.awq_compile.w4a16_linear


def awq_linear(K=128, N=64, G=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(K, N, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=g) / K ** 0.5)
        lin.bias.copy_(torch.randn(N, generator=g))
    return AwqLinear.from_float(lin, G).eval()


def reference(model, x):
    """The module's own dequant in float64."""
    m = AwqLinear(model.in_features, model.out_features, model.group_size, model.bias is not None, torch.float64)
    with torch.no_grad():
        m.qweight.copy_(model.qweight), m.qzeros.copy_(model.qzeros), m.scales.copy_(model.scales.double())
        m.bias.copy_(model.bias.double())
    return m(x.double())


class TestInferenceTensors:
    """Issue 9 item 2: inference tensors have no version counter; an in-place reload must still be seen."""

    def test_reload_inside_inference_mode_is_served_fresh(self, caplog):
        with torch.inference_mode():
            model, other = awq_linear(seed=1), awq_linear(seed=7)
            assert model.qweight.is_inference()
            compiled = torch.compile(model, backend="awq", options={"inductor": False})
            x = torch.randn(4, 128, dtype=torch.float16)
            with caplog.at_level(logging.WARNING, logger="awq_compile"):
                assert rel_err(compiled(x), reference(model, x)) < 2e-3
            model.load_state_dict(other.state_dict())  # copy_ into the same inference tensors
            y = compiled(x)
        assert rel_err(y, reference(other, x)) < 2e-3
        assert any("inference tensors" in r.getMessage() and "outside torch.inference_mode()" in r.getMessage()
                   for r in caplog.records)

    def test_cache_never_keeps_a_form_it_cannot_validate(self):
        cache = WeightCache()
        with torch.inference_mode():
            q, qz, s = to_awq(quantize(torch.randn(256, 64), 64))
            a = cache.get("awq", q, qz, s, layer="l")
            q2, _, _ = to_awq(quantize(torch.randn(256, 64), 64))
            q.copy_(q2)
            b = cache.get("awq", q, qz, s, layer="l")
        assert len(cache) == 0
        assert not torch.equal(a.qweight, b.qweight)

    def test_reuse_never_rewrites_inference_tensors(self):
        cache = WeightCache()
        with torch.inference_mode():
            q, qz, s = to_awq(quantize(torch.randn(256, 64), 64))
            before = q.clone()
            p = cache.get("awq", q, qz, s, layer="l", reuse=True)
        assert torch.equal(q, before) and not p.in_place

    def test_normal_tensors_run_under_inference_mode_keep_their_cache(self):
        cache = WeightCache()
        q, qz, s = to_awq(quantize(torch.randn(256, 64), 64))
        with torch.inference_mode():
            a = cache.get("awq", q, qz, s)
            assert cache.get("awq", q, qz, s) is a
            q.copy_(to_awq(quantize(torch.randn(256, 64), 64))[0])  # normal tensors count versions here too
            assert cache.get("awq", q, qz, s) is not a
        assert cache.repacks == 2 and len(cache) == 1


class TestLayoutInTheValue:
    """Issue 10 item 6: the cache's value says which layout it holds; no module-level table decides."""

    def test_standard_and_kernel_forms_name_their_layout(self):
        cache = WeightCache()
        u = quantize(torch.randn(256, 64), 64)
        q, qz, s = to_awq(u)
        p = cache.get("awq", q, qz, s)
        std = p.standard(q, s, qz)
        assert std.layout == "standard" and not p.in_place
        form = p.form("cpu_int4pack", std.qweight, std.scales, std.qzeros, torch.bfloat16)
        assert form.layout == "cpu_int4pack" and p.form("cpu_int4pack", q, s, qz, torch.bfloat16) is form
        assert cache.nbytes() == std.qweight.nbytes + std.qzeros.nbytes + form.nbytes()

    def test_in_place_value_serves_the_rewritten_buffers(self):
        cache = WeightCache()
        u = quantize(torch.randn(256, 64), 64)
        q, qz, s = to_awq(u)
        p = cache.get("awq", q, qz, s, reuse=True)
        assert p.in_place and p.qweight is None and cache.nbytes() == 0
        std = p.standard(q, s, qz)
        assert std.qweight.data_ptr() == q.data_ptr()
        assert torch.equal(dequantize_standard(std.qweight, std.qzeros, s, 64), u.dequantize())
        # a new scales tensor makes a new entry; the cache still knows the buffers hold the standard layout
        s2 = s.clone()
        p2 = cache.get("awq", q, qz, s2)
        assert p2 is not p and p2.in_place

    def test_no_module_level_layout_table(self):
        import awq_compile.runtime.weights as weights

        assert not any(isinstance(v, dict) for k, v in vars(weights).items() if not k.startswith("__"))


class TestLifetime:
    """Issue 9 item 5: repacked weights are freed when their sources die, not at some later repack."""

    def test_entry_goes_with_its_sources(self):
        cache = WeightCache()
        q, qz, s = to_awq(quantize(torch.randn(256, 64), 64))
        cache.get("awq", q, qz, s)
        assert len(cache) == 1 and cache.nbytes() == 256 * 64 // 2 + 4 * 64 // 2
        del q  # the last reference to one source storage
        assert len(cache) == 0 and cache.nbytes() == 0

    def test_rewritten_buffer_record_goes_with_its_storage(self):
        cache = WeightCache()
        q, qz, s = to_awq(quantize(torch.randn(256, 64), 64))
        cache.get("awq", q, qz, s, reuse=True)
        assert len(cache._rewritten) == 2
        del q, qz
        assert len(cache._rewritten) == 0 and len(cache) == 0

    def test_reload_replaces_the_entry_without_leaking_finalizers(self):
        import weakref

        cache = WeightCache()
        q, qz, s = to_awq(quantize(torch.randn(256, 64), 64))
        before = len(weakref.finalize._registry)
        for _ in range(5):
            q.copy_(to_awq(quantize(torch.randn(256, 64), 64))[0])
            cache.get("awq", q, qz, s)
        assert len(cache) == 1 and len(weakref.finalize._registry) - before == 3
        del q, qz, s
        assert len(weakref.finalize._registry) == before

    def test_fifty_deleted_compiled_models_leave_nothing(self):
        from awq_compile.runtime.weights import weight_cache

        cache = weight_cache()
        torch._dynamo.reset()
        base_len, base_bytes = len(cache), cache.nbytes()
        x = torch.randn(2, 128, dtype=torch.float16)
        models = [awq_linear(seed=i) for i in range(50)]
        per_model = 128 * 64 // 2 + 4 * 64 // 2  # standard qweight + zeros, int4
        with torch.no_grad():
            for m in models:
                torch.compile(m, backend="awq", options={"inductor": False})(x)
        assert cache.nbytes() - base_bytes == 50 * per_model
        del models, m
        import gc

        gc.collect()
        torch._dynamo.reset()
        gc.collect()
        assert len(cache) == base_len and cache.nbytes() == base_bytes
