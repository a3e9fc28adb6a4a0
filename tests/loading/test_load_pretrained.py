"""load_pretrained on tiny transformers models written by independent writers, against a float64 reference."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from _writers import (float_model, quantised_linears, reference_model, tiny_config, write_checkpoint,  # noqa: E402
                      write_ct)

from awq_compile import load_pretrained  # noqa: E402
from awq_compile.loading import CheckpointError  # noqa: E402
from awq_compile.models import AwqLinear, GptqLinear  # noqa: E402


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def _ids(n=10, batch=2, seed=0):
    return torch.randint(3, 96, (batch, n), generator=torch.Generator().manual_seed(seed))


def _write(tmp_path, kind, fmt, G=32, sym=False, **kw):
    cfg = tiny_config(kind, tie=kw.pop("tie", False))
    m = float_model(cfg)
    d = str(tmp_path / f"{kind}-{fmt}")
    if fmt.startswith("ct"):
        deq = write_ct(d, m, G, symmetric=sym)
        return d, reference_model(cfg, float_model(cfg), deq=deq)
    q = write_checkpoint(d, m, fmt, G, symmetric=sym, **kw)
    return d, reference_model(cfg, m, q)


CASES = [
    ("llama", "awq", 32, False, {}),
    ("qwen2", "awq", 64, False, {"autoawq_json": True}),              # AutoAWQ's quant_config.json spellings
    ("llama", "awq", 32, False, {"scales_dtype": torch.bfloat16, "tie": True}),
    ("qwen2", "gptq_v1", 32, False, {}),
    ("llama", "gptq_v1", 32, True, {}),
    ("llama", "gptq_v2", 64, False, {"shards": 3}),
    ("qwen2", "gptq_v2", 32, True, {}),
    ("llama", "ct", 32, False, {}),                                   # compressed-tensors W4A16_ASYM, group
    ("qwen2", "ct", 32, True, {}),                                    # W4A16, group
    ("llama", "ct", None, True, {}),                                  # W4A16, channel
]


@pytest.mark.parametrize("kind,fmt,G,sym,kw", CASES, ids=[f"{c[0]}-{c[1]}-g{c[2]}-{'sym' if c[3] else 'asym'}"
                                                         + "".join(f"-{k}" for k in c[4]) for c in CASES])
def test_eager_matches_float64_reference(tmp_path, kind, fmt, G, sym, kw):
    d, ref = _write(tmp_path, kind, fmt, G, sym, **kw)
    model, tok = load_pretrained(d, dtype=torch.float32, compile=False)
    assert tok is None
    layers = quantised_linears(ref)
    mods = {n: model.get_submodule(n) for n in layers}
    cls = AwqLinear if fmt == "awq" else GptqLinear
    assert all(type(m) is cls for m in mods.values()), {n: type(m) for n, m in mods.items()}
    assert isinstance(model.lm_head, torch.nn.Linear)
    if sym and fmt != "awq":
        assert all(m.qzeros is None for m in mods.values())   # symmetric: no zero tensor, implicit 8
    ids = _ids()
    with torch.no_grad():
        err = rel(model(ids).logits, ref(ids).logits)
    assert err < 1e-4, err
    info = model.awq_load_info
    assert info["quantized_layers"] == len(layers)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_activations(tmp_path, dtype):
    d, ref = _write(tmp_path, "qwen2", "awq", 32)
    model, _ = load_pretrained(d, dtype=dtype, compile=False)
    assert model.model.embed_tokens.weight.dtype == dtype
    assert model.model.layers[0].self_attn.q_proj.scales.dtype == torch.float16   # stored dtype kept
    ids = _ids()
    with torch.no_grad():
        out = model(ids).logits
    assert out.dtype == dtype
    assert rel(out, ref(ids).logits) < 2e-2


@pytest.mark.parametrize("kind,fmt,sym", [("qwen2", "awq", False), ("llama", "ct", False)])
def test_compiled_generate_matches_reference(tmp_path, kind, fmt, sym):
    """Compiled with backend="awq" (our layers rewritten), logits and 16 greedy tokens equal the float64 model."""
    import awq_compile

    d, ref = _write(tmp_path, kind, fmt, 32, sym)
    model, _ = load_pretrained(d, dtype=torch.float32, compile=False)
    ids = _ids(8, batch=1)
    report = awq_compile.explain(model, ids)
    assert len(report.layers) == len(quantised_linears(ref)), str(report)
    from awq_compile.loading import setup_compile

    setup_compile(model)
    assert model.generation_config.cache_implementation == "static"
    with torch.no_grad():
        assert rel(model(ids).logits, ref(ids).logits) < 1e-2
        out = model.generate(ids, max_new_tokens=16, do_sample=False)
        expect = ref.generate(ids, max_new_tokens=16, do_sample=False)
    assert torch.equal(out, expect)


def test_cuda_route_sets_compile_config(tmp_path):
    """On CUDA/ROCm generate() compiles by itself: a CompileConfig with backend="awq", mode inside our options."""
    from awq_compile.loading import setup_compile

    d, _ = _write(tmp_path, "llama", "awq", 32)
    model, _ = load_pretrained(d, dtype=torch.float32, compile=False)

    class FakeParam:
        device = torch.device("cuda")

    orig = model.parameters
    model.parameters = lambda *a, **k: iter([FakeParam()])
    try:
        setup_compile(model, {"target": "cuda:sm90"})
    finally:
        model.parameters = orig
    cc = model.generation_config.compile_config
    assert cc.backend == "awq" and cc.mode is None and cc.options == {"target": "cuda:sm90", "mode": "reduce-overhead"}
    assert model.generation_config.cache_implementation == "static"


def test_streams_tensor_by_tensor(tmp_path, monkeypatch):
    """Every checkpoint tensor is read once, one at a time (no state dict of the whole model in host memory)."""
    from awq_compile.loading import checkpoint

    d, _ = _write(tmp_path, "llama", "gptq_v2", 32, shards=2)
    reads = []
    orig = checkpoint.Checkpoint.get

    def spy(self, name):
        reads.append(name)
        return orig(self, name)

    monkeypatch.setattr(checkpoint.Checkpoint, "get", spy)
    load_pretrained(d, dtype=torch.float32, compile=False)
    from safetensors import safe_open

    keys = set()
    for f in os.listdir(d):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), "pt") as h:
                keys |= set(h.keys())
    assert sorted(reads) == sorted(keys)


# ------------------------------------------------------------------------------------------------ refusals

def _edit_config(d, **changes):
    p = os.path.join(d, "config.json")
    cfg = json.load(open(p))
    for k, v in changes.items():
        if v is None:
            cfg["quantization_config"].pop(k, None)
        else:
            cfg["quantization_config"][k] = v
    json.dump(cfg, open(p, "w"))


def _edit_tensor(d, name, fn):
    from safetensors.torch import load_file, save_file

    p = os.path.join(d, "model.safetensors")
    sd = load_file(p)
    out = fn(sd.pop(name))
    if out is not None:
        sd[name] = out
    save_file(sd, p)


@pytest.mark.parametrize("fmt,change,match", [
    ("awq", {"bits": 3}, r"bits=3; only 4-bit"),
    ("awq", {"version": "gemv"}, r"version='gemv'"),
    ("awq", {"zero_point": False}, r"zero_point=false"),
    ("awq", {"quant_method": "hqq"}, r"quant_method='hqq'; expected one of"),
    ("gptq_v2", {"desc_act": True}, r"layer model\.layers\.0\.\S+: .*desc_act=true"),
    ("gptq_v2", {"checkpoint_format": "marlin"}, r"checkpoint_format='marlin'"),
    ("gptq_v2", {"group_size": 64}, r"\.scales has 2 groups, the config's group size 64"),
])
def test_config_refusals(tmp_path, fmt, change, match):
    d, _ = _write(tmp_path, "llama", fmt, 32)
    _edit_config(d, **change)
    with pytest.raises(CheckpointError, match=match):
        load_pretrained(d, compile=False)


def test_act_order_g_idx_refused(tmp_path):
    d, _ = _write(tmp_path, "llama", "gptq_v2", 32)
    name = "model.layers.1.mlp.down_proj.g_idx"
    _edit_tensor(d, name, lambda g: g.flip(0).contiguous())
    with pytest.raises(CheckpointError, match=r"layer model\.layers\.1\.mlp\.down_proj: .*g_idx is an act-order"):
        load_pretrained(d, compile=False)


@pytest.mark.parametrize("name,fn,match", [
    ("model.layers.0.self_attn.q_proj.qweight", lambda t: t[:, :-1].contiguous(), r"expected qweight int32 \(64, 8\)"),
    ("model.layers.0.self_attn.q_proj.qweight", lambda t: t.to(torch.int64), r"expected qweight int32"),
    ("model.layers.0.self_attn.q_proj.scales", lambda t: t.to(torch.int32), r"expected float scales"),
    ("model.layers.0.self_attn.q_proj.qzeros", lambda t: None, r"model\.layers\.0\.self_attn\.q_proj\.qzeros is missing"),
    ("model.layers.0.mlp.up_proj.qweight", lambda t: None,
     r"layer model\.layers\.0\.mlp\.up_proj: the checkpoint has .*scales.* but no .*qweight"),
    ("model.norm.weight", lambda t: None, r"tensor model\.norm\.weight is missing"),
    ("model.norm.weight", lambda t: t[:-1].contiguous(), r"tensor model\.norm\.weight: expected shape \(64,\)"),
])
def test_tensor_refusals(tmp_path, name, fn, match):
    d, _ = _write(tmp_path, "llama", "awq", 32)
    _edit_tensor(d, name, fn)
    with pytest.raises(CheckpointError, match=match):
        load_pretrained(d, compile=False)


def test_ct_refusals(tmp_path):
    d, _ = _write(tmp_path, "llama", "ct", 32, False)
    _edit_tensor(d, "model.layers.0.self_attn.k_proj.weight_zero_point", lambda t: None)
    with pytest.raises(CheckpointError, match=r"k_proj\.weight_zero_point: missing, but the scheme is asymmetric"):
        load_pretrained(d, compile=False)
    d2, _ = _write(tmp_path / "b", "llama", "ct", 32, True)
    p = os.path.join(d2, "config.json")
    cfg = json.load(open(p))
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 8
    json.dump(cfg, open(p, "w"))
    with pytest.raises(CheckpointError, match=r"config_groups\.group_0: weights\.num_bits=8"):
        load_pretrained(d2, compile=False)
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 4
    cfg["quantization_config"]["ignore"] = ["lm_head", "re:.*mlp\\.up_proj$"]
    json.dump(cfg, open(p, "w"))
    with pytest.raises(CheckpointError, match=r"layer model\.layers\.0\.mlp\.up_proj: the checkpoint holds "
                                              r"quantised tensors for it, but .* leaves it in float"):
        load_pretrained(d2, compile=False)


def test_not_quantised_refused(tmp_path):
    d, _ = _write(tmp_path, "llama", "awq", 32)
    _edit_config(d, **{k: None for k in ("quant_method", "bits", "group_size", "zero_point", "version",
                                           "modules_to_not_convert")})
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg.pop("quantization_config")
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(CheckpointError, match="not a quantised checkpoint"):
        load_pretrained(d, compile=False)
