"""The quantiser writes AutoAWQ-GEMM checkpoints that the loader reads back; the AWQ search helps."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("transformers")

from _writers import AWQ_ORDER, float_model, tiny_config  # noqa: E402

from awq_compile import load_pretrained  # noqa: E402
from awq_compile.loading.quantizer import _awq_scale, _qdq, quantize_model  # noqa: E402


class _Tok:
    """Byte-level stand-in tokenizer for the calibration text (the tiny model's vocabulary is 96)."""

    def __call__(self, text, return_tensors="pt"):
        ids = torch.tensor([[3 + (b % 90) for b in text.encode()]])
        return type("Enc", (), {"input_ids": ids})()

    def save_pretrained(self, path):
        pass


def _unpack_awq_word(word: int) -> list[int]:
    """One AWQ int32 word -> its 8 codes in column order, from the nibble-order fact (independent of formats/)."""
    word &= 0xFFFFFFFF
    cols = [0] * 8
    for i in range(8):
        cols[AWQ_ORDER[i]] = (word >> (4 * i)) & 15
    return cols


@pytest.mark.parametrize("method", ["rtn", "awq"])
def test_written_checkpoint_loads_and_matches(tmp_path, method):
    cfg = tiny_config("qwen2", tie=True)
    model = float_model(cfg)
    out = str(tmp_path / method)
    rep = quantize_model(model, out, group_size=32, method=method, tokenizer=_Tok(), grid=8)
    assert rep.layers == 14
    qc = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
    assert qc == {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
                  "modules_to_not_convert": None}
    assert json.load(open(os.path.join(out, "quant_config.json")))["version"] == "GEMM"
    loaded, _ = load_pretrained(out, dtype=torch.float32, compile=False)
    # decode one layer's words by hand: the codes times scales reproduce the loaded module's weight
    lin = loaded.model.layers[0].mlp.up_proj
    word = int(lin.qweight[5, 2])
    z = _unpack_awq_word(int(lin.qzeros[0, 2]))
    codes = _unpack_awq_word(word)
    w_hand = torch.tensor([(c - zz) for c, zz in zip(codes, z)], dtype=torch.float64) * lin.scales[0, 16:24].double()
    w_float = model.model.layers[0].mlp.up_proj.weight[16:24, 5].double()
    assert torch.allclose(w_hand, w_float, atol=float(lin.scales[0, 16:24].max()))   # within one rounding step
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = loaded(ids).logits.double(), model(ids).logits.double()
    assert float((a - b).norm() / b.norm()) < 0.25   # 4-bit rounding of a random model (layout checked above)


def test_awq_scales_keep_the_float_function_and_reduce_error():
    """Folding 1/s into the norms / up_proj leaves the float model unchanged; the rounded model gets closer."""
    cfg = tiny_config("llama", layers=2, hidden=64)
    ref = float_model(cfg, seed=3)
    # skew some input channels, as real activations are: AWQ is built for outliers
    with torch.no_grad():
        ref.model.embed_tokens.weight[:, :4] *= 12
    scaled = float_model(cfg, seed=3)
    scaled.load_state_dict(ref.state_dict())
    ids = torch.randint(3, 96, (1, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _awq_scale(scaled, ids, 32, 10, 512)
        before, after = ref(ids).logits, scaled(ids).logits
    assert float((after - before).norm() / before.norm()) < 1e-5

    def qdq_model(m):
        with torch.no_grad():
            for name, mod in m.named_modules():
                if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"):
                    mod.weight.copy_(_qdq(mod.weight.float(), 32))
        return m

    with torch.no_grad():
        rtn = float_model(cfg, seed=3)
        rtn.load_state_dict(ref.state_dict())
        e_rtn = float((qdq_model(rtn)(ids).logits - before).norm())
        e_awq = float((qdq_model(scaled)(ids).logits - before).norm())
    assert e_awq < e_rtn, (e_awq, e_rtn)


def test_group_size_must_divide(tmp_path):
    model = float_model(tiny_config("llama"))
    with pytest.raises(ValueError, match=r"in_features=64 is not a multiple of group size 48"):
        quantize_model(model, str(tmp_path / "x"), group_size=48)
