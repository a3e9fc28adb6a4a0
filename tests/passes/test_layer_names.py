"""Layer names in explain for Hugging Face models (issue 9 item 7).

Transformers wraps ``forward`` in decorators of the form ``def wrapper(*args, **kwargs)``
(``can_return_tuple``, ``auto_docstring``, output capturing), so Dynamo's frame sees the model as
``L['args'][0]`` rather than ``L['self']``; the names came out as ``0.model.layers.0.self_attn.q_proj`` and
``[0].lm_head``.
"""

import functools

import pytest
import torch
from torch import nn

import awq_compile
from awq_compile.models.awq_linear import AwqLinear


def returns_tuple(forward):
    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        return forward(*args, **kwargs)

    return wrapper


def _awq(k, n):
    return AwqLinear.from_float(nn.Linear(k, n), group_size=32, dtype=torch.float32)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.o_proj = _awq(64, 64), _awq(64, 64)

    def forward(self, h):
        return self.o_proj(torch.tanh(self.q_proj(h)))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = Attention()

    def forward(self, h):
        return h + self.self_attn(h)


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Decoder(), Decoder()])

    @returns_tuple
    def forward(self, h):
        for layer in self.layers[:2]:
            h = layer(h)
        return h


class ForCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = Backbone()
        self.lm_head = nn.Linear(64, 16, bias=False)

    @returns_tuple
    def forward(self, h):
        return self.lm_head(self.model(h))


EXPECTED = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.o_proj",
            "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.o_proj"]


def test_names_of_a_transformers_like_tree_with_decorated_forwards():
    torch.manual_seed(0)
    report = awq_compile.explain(ForCausalLM(), torch.randn(2, 64))
    assert [lay.name for lay in report.layers] == EXPECTED, str(report)
    skipped = [s.name for s in report.skipped]
    # lm_head, and (transformers >= 5) the rotary embedding's inv_freq @ positions matmul: real module paths
    assert "lm_head" in skipped and set(skipped) <= {"lm_head", "model.rotary_emb"}, str(report)


def test_names_of_a_real_transformers_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()

    def swap(mod):
        for name, child in mod.named_children():
            if isinstance(child, nn.Linear) and name != "lm_head":
                setattr(mod, name, AwqLinear.from_float(child, group_size=32, dtype=torch.float32))
            else:
                swap(child)

    swap(model)
    report = awq_compile.explain(model, torch.randint(0, 64, (1, 8)))
    names = [lay.name for lay in report.layers]
    assert len(names) == 14 and names[0] == "model.layers.0.self_attn.q_proj", names
    assert names[-1] == "model.layers.1.mlp.down_proj"
    skipped = [s.name for s in report.skipped]
    # lm_head, and (transformers >= 5) the rotary embedding's inv_freq @ positions matmul: real module paths
    assert "lm_head" in skipped and set(skipped) <= {"lm_head", "model.rotary_emb"}, skipped
