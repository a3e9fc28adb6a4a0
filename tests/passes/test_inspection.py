"""Inspection: the ``explain`` command, one log line per layer, graph dumps, and refusal reasons a user
can act on."""

import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import awq_compile
from awq_compile.cli import explain as explain_cli
from _spellings import SpelledLinear, Spelling, normalized

K, N, G = 64, 32, 32
TESTS_PASSES = os.path.dirname(__file__)

FACTORY = textwrap.dedent(f"""
    import sys, torch
    sys.path.insert(0, {TESTS_PASSES!r})
    from torch import nn
    from _spellings import SpelledLinear, Spelling, normalized

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = SpelledLinear(normalized(Spelling()), 64, 32, 32, seed=1)
            self.down = SpelledLinear(normalized(Spelling(fmt="gptq_v2", matmul="linear")), 32, 64, 32, seed=2)
            self.odd = SpelledLinear(normalized(Spelling(wrong_order=True)), 64, 32, 32, seed=3)
            self.head = nn.Linear(64, 8).half()

        def forward(self, x):
            return self.head(self.down(self.up(x))) + self.odd(x).sum()

    def build():
        return Net()

    def build_with_inputs():
        return Net(), (torch.randn(2, 64, dtype=torch.float16),)
""")


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(FACTORY)
    return str(path)


def test_explain_command_prints_the_table(factory_file, capsys):
    assert explain_cli.main([f"{factory_file}:build", "--input-shape", "3,64", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "awq_compile explain -- target cpu, 1 graph(s), 2 AWQ layer(s), 2 matmul(s) left alone"
    assert any(line.split()[:5] == ["up", "64", "32", "32", "awq"] for line in lines), out
    assert any(line.split()[:5] == ["down", "32", "64", "32", "gptq_v2"] for line in lines), out
    assert "left alone:" in out
    assert any(re.match(r"odd \[\w+\]: the dequantised weight equals no known 4-bit layout", line.strip())
               for line in lines), out
    assert any(re.match(r"head \[\w+\]: not quantized", line.strip()) for line in lines), out


def test_explain_command_for_another_target_with_the_factory_inputs(factory_file, capsys):
    assert explain_cli.main([f"{factory_file}:build_with_inputs", "--target", "hip:gfx942"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("awq_compile explain -- target hip:gfx942")
    assert "triton_gemv" in out and "triton_gemm" in out


@pytest.mark.parametrize("argv, message", [
    (["no_colon_here"], "expected MODULE:FACTORY"),
    (["/no/such/file.py:build"], "no such file"),
    (["{f}:missing"], "has no attribute 'missing'"),
    (["{f}:build"], "give --input-shape"),
    (["{f}:build", "--input-shape", "3,64", "--target", "tpu"], "cannot parse target 'tpu'"),
])
def test_explain_command_errors_say_what_to_do(factory_file, capsys, argv, message):
    argv = [a.format(f=factory_file) for a in argv]
    assert explain_cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_explain_through_the_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "awq_compile", "explain", "awq_compile.models:build_demo_model",
                          "--input-shape", "1,4", "--dtype", "int64"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "layers.1.down_proj" in out.stdout and "lm_head [" in out.stdout and "not quantized" in out.stdout


# ------------------------------------------------------------------------------------------ logging
class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def awq_log():
    # torch's logging registration stops propagation to the root logger: listen on ours directly
    logger = logging.getLogger("awq_compile")
    rec, old = Recorder(), logger.level
    logger.addHandler(rec)
    logger.setLevel(logging.INFO)
    yield rec
    logger.removeHandler(rec)
    logger.setLevel(old)


def test_one_info_line_per_layer_rewritten_or_skipped_and_passes_never_print(factory_file, awq_log, capsys):
    sys.path.insert(0, os.path.dirname(factory_file))
    try:
        import my_models
    finally:
        sys.path.remove(os.path.dirname(factory_file))
    model, (x,) = my_models.build_with_inputs()
    with torch.no_grad():
        torch.compile(model, backend="awq", options={"inductor": False})(x)
    assert capsys.readouterr().out == ""
    info = [r.getMessage() for r in awq_log.records if r.levelno == logging.INFO]
    assert len(info) == 4, info
    assert sum(m.startswith("rewrote up: awq [64 -> 32] g32 on cpu: ") for m in info) == 1, info
    assert sum(m.startswith("rewrote down: gptq_v2 [32 -> 64] g32 on cpu: ") for m in info) == 1, info
    assert sum(bool(re.match(r"skipped odd \(\w+\): the dequantised weight equals no known", m)) for m in info) == 1
    assert sum(bool(re.match(r"skipped head \(\w+\): not quantized: the weight is a plain float16", m))
               for m in info) == 1


# ---------------------------------------------------------------------------------------- graph dumps
def _dumped(directory):
    return sorted(p for p in os.listdir(directory) if p.endswith(".txt"))


@pytest.mark.parametrize("how", ["option", "environment"])
def test_graph_dumps_before_and_after_each_pass(tmp_path, monkeypatch, how):
    from awq_compile.passes import TRANSFORMS as PASSES  # the analysis changes no graph: nothing to dump

    mod = SpelledLinear(normalized(Spelling()), K, N, G, seed=4)
    options = {"inductor": False}
    if how == "option":
        options["dump_graphs"] = str(tmp_path)
    else:
        monkeypatch.setenv("AWQ_COMPILE_DUMP", str(tmp_path))
    with torch.no_grad():
        torch.compile(mod, backend="awq", options=options)(torch.randn(2, K, dtype=torch.float16))
    files = _dumped(tmp_path)
    labels = [f.split("_", 2)[2].removesuffix(".txt") for f in files]
    assert labels == ["input"] + [p.__name__ for p in PASSES], files
    assert len({f.split("_")[0] for f in files}) == 1  # one graph index
    texts = [(tmp_path / f).read_text() for f in files]
    assert all("def forward(" in t for t in texts)  # readable Python, not a pickle
    assert "bitwise_right_shift" in texts[0] and "w4a16_linear" not in texts[0]
    rewritten = texts[labels.index("rewrite_awq_linears")]
    assert "torch.ops.awq_compile.w4a16_linear.default(" in rewritten
    assert "bitwise_right_shift" not in texts[-1] and "w4a16_linear" in texts[-1]


# ----------------------------------------------------------------------------------- reasons
def test_every_refusal_reason_says_what_was_expected_and_what_was_found():
    class Cases(nn.Module):
        def __init__(self):
            super().__init__()
            near = [dict(bits=3), dict(bits=8), dict(wrong_order=True), dict(tiled_scales=True),
                    dict(runtime_scale=True), dict(fmt="gptq_v2", g_idx="act_order")]
            self.layers = nn.ModuleList([SpelledLinear(normalized(Spelling(**kw)), K, N, G, seed=i)
                                         for i, kw in enumerate(near)])
            self.plain = nn.Linear(K, N).half()

        def forward(self, x):
            return sum(layer(x) for layer in self.layers) + self.plain(x)

    report = awq_compile.explain(Cases(), torch.randn(2, K, dtype=torch.float16))
    assert report.layers == []
    assert len(report.skipped) == 7
    for s in report.skipped:
        assert "expected" in s.reason, s.reason
        assert len(s.reason) > 60, s.reason
