"""Tensor parallelism on 2 gloo ranks: sharded loading, compiled with backend="awq", against one process.

One job for the whole module: two worker processes (``_tp_worker.py``, torchrun's environment variables,
a free port) run every case once while this process computes the single-process references; each test
below checks one property of what they saved.  The job is bounded: a rank that fails stops the other,
and both are killed past ``TIMEOUT`` seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from _writers import float_model, tiny_config, write_checkpoint, write_ct  # noqa: E402

from awq_compile import load_pretrained  # noqa: E402

WORLD = 2
TIMEOUT = 420          # seconds for the whole job (two tiny models compiled on each rank take ~40 s on 2 cores)
STEPS = 4              # greedy tokens generated
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# (id, kind, format, group size, symmetric, compiled): fresh random weights, fp32 activations
GOOD = [
    ("llama-awq", "llama", "awq", 32, False, True),
    ("qwen2-awq", "qwen2", "awq", 32, False, True),     # q/k/v bias: column-parallel bias slices
    ("llama-gptq_v2", "llama", "gptq_v2", 32, False, False),
    ("qwen2-gptq_v1", "qwen2", "gptq_v1", 32, False, False),   # g_idx checked against the global rows
    ("llama-ct", "llama", "ct", 32, False, False),
    ("qwen2-ct-channel", "qwen2", "ct", None, True, False),    # one group over K: every rank keeps the scales
    ("phi3-awq", "phi3", "awq", 32, False, False),      # fused qkv_proj / gate_up_proj: split per sub-projection
    ("llama-awq-float", "llama", "awq", 32, False, False),  # v_proj, down_proj left in float: sharded nn.Linear
]
FLOAT_LAYERS = ("v_proj", "down_proj")
# (id, config changes, group size, what the one error must say)
BAD = [
    ("bad-heads", dict(hidden=96, heads=3, kv=3, inter=192), 32,
     [r"layer model\.layers\.0\.self_attn: num_attention_heads=3 is not divisible by the world size 2",
      r"num_key_value_heads=3"]),
    ("bad-groups", dict(hidden=64, heads=4, kv=2, inter=192), 64,
     # o_proj (K = 64 = one group) splits into one group per rank; down_proj's 96 rows are 1.5 groups
     [r"layer model\.layers\.0\.mlp\.down_proj: row-parallel: in_features=192 split 2 ways is 96 rows per "
      r"rank, not whole groups of 64 \(needs a multiple of 128\) \(and 1 more layer\(s\) alike\)$"]),
    ("bad-words", dict(hidden=48, heads=4, kv=2, inter=128), 8,
     [r"layer model\.layers\.0\.self_attn\.k_proj: column-parallel: out_features=24 split 2 ways is 12 "
      r"columns per rank, not whole 8-column packed words \(needs a multiple of 16\) \(and 3 more"]),
]


def _model_config(kind):
    if kind != "phi3":
        return tiny_config(kind)
    from transformers import Phi3Config

    return Phi3Config(vocab_size=96, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0)


def _config(kind, hidden, heads, kv, inter):
    cfg = tiny_config(kind, hidden=hidden)
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size = heads, kv, inter
    cfg.head_dim = hidden // heads
    return cfg


def _unquantise(d, model, leaves):
    """Store the ``leaves`` linears of every layer in float (fp16) and name them in modules_to_not_convert."""
    from safetensors.torch import load_file, save_file

    p = os.path.join(d, "model.safetensors")
    sd = load_file(p)
    for name, mod in model.named_modules():
        if name.rpartition(".")[2] in leaves:
            for suffix in ("qweight", "qzeros", "scales"):
                del sd[f"{name}.{suffix}"]
            sd[f"{name}.weight"] = mod.weight.detach().half().contiguous()
    save_file(sd, p)
    cfg_path = os.path.join(d, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["quantization_config"]["modules_to_not_convert"] = list(leaves)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ids():
    return torch.randint(3, 96, (2, 8), generator=torch.Generator().manual_seed(0))


def _start(spec_path: str, out: str):
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                   LOCAL_WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        log = open(os.path.join(out, f"rank{rank}.log"), "w")
        procs.append((subprocess.Popen([sys.executable, os.path.join(HERE, "_tp_worker.py"), spec_path],
                                       env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
    return procs


def _finish(procs, out: str, deadline: float) -> None:
    """Wait for every rank; a failed rank or the deadline kills the rest. Fails with the logs' tails."""
    failed = None
    while any(p.poll() is None for p, _ in procs):
        bad = [r for r, (p, _) in enumerate(procs) if p.poll() not in (None, 0)]
        if bad or time.monotonic() > deadline:
            failed = f"rank {bad[0]} exited with {procs[bad[0]][0].returncode}" if bad else \
                f"the job ran past {TIMEOUT} s"
            break
        time.sleep(0.2)
    for p, log in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        log.close()
    if failed is None and any(p.returncode for p, _ in procs):
        failed = "exit codes " + str([p.returncode for p, _ in procs])
    if failed:
        tails = []
        for rank in range(WORLD):
            with open(os.path.join(out, f"rank{rank}.log")) as f:
                tails.append(f"--- rank {rank} ---\n" + f.read()[-3000:])
        pytest.fail(f"tensor-parallel job: {failed}\n" + "\n".join(tails), pytrace=False)


def _reference(path: str, compiled: bool) -> dict:
    """The single-process model: eager logits and tokens, and compiled (backend="awq") logits, tokens, graphs."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from awq_compile.loading import setup_compile

    ids = _ids()
    model, _ = load_pretrained(path, dtype=torch.float32, compile=False, tokenizer=False)
    ref = {}
    with torch.no_grad():
        ref["eager"] = model(ids).logits
        if not compiled:
            return ref
        ref["eager_tokens"] = model.generate(ids[:1], max_new_tokens=STEPS, do_sample=False)
        torch._dynamo.reset()
        counters.clear()
        setup_compile(model)
        ref["compiled"] = model(ids).logits
        ref["tokens"] = model.generate(ids[:1], max_new_tokens=STEPS, do_sample=False)
        ref["unique_graphs"] = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    return ref


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    cases, paths = [], {}
    for cid, kind, fmt, G, sym, compiled in GOOD:
        d = str(root / cid)
        m = float_model(_model_config(kind))
        if fmt == "ct":
            write_ct(d, m, G, symmetric=sym)
        else:
            write_checkpoint(d, m, fmt, G, symmetric=sym, shards=2 if fmt == "gptq_v2" else 1)
        if cid.endswith("-float"):
            _unquantise(d, m, FLOAT_LAYERS)
        paths[cid] = d
        cases.append({"id": cid, "path": d, "ids": _ids().tolist(), "compile": compiled, "steps": STEPS})
    for cid, sizes, G, _ in BAD:
        d = str(root / cid)
        write_checkpoint(d, float_model(_config("llama", **sizes)), "awq", G)
        cases.append({"id": cid, "path": d, "ids": [], "compile": False, "steps": 0})
    out = str(root / "out")
    os.makedirs(out)
    spec = str(root / "spec.json")
    with open(spec, "w") as f:
        json.dump({"world": WORLD, "out": out, "cases": cases}, f)
    t0 = time.monotonic()
    procs = _start(spec, out)
    try:
        refs = {cid: _reference(paths[cid], compiled) for cid, _, _, _, _, compiled in GOOD}
    except BaseException:
        for p, log in procs:
            p.kill()
            p.wait()
            log.close()
        raise
    _finish(procs, out, t0 + TIMEOUT)
    ranks = [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]
    return {"refs": refs, "ranks": ranks, "paths": paths}


def _max_err(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


@pytest.mark.parametrize("cid", [c[0] for c in GOOD])
def test_logits_equal_single_process(job, cid):
    """Every rank's eager TP logits equal the single-process model's within 1e-3 (fp32 activations)."""
    ref = job["refs"][cid]["eager"]
    for r in job["ranks"]:
        assert "error" not in r[cid], r[cid].get("error")
        assert _max_err(r[cid]["eager"], ref) < 1e-3
    assert _max_err(job["ranks"][0][cid]["eager"], job["ranks"][1][cid]["eager"]) == 0.0


@pytest.mark.parametrize("cid", [c[0] for c in GOOD if c[5]])
def test_compiled_tp_matches_eager_and_compiled_single_process(job, cid):
    ref = job["refs"][cid]
    for r in job["ranks"]:
        out = r[cid]["compiled"]
        assert _max_err(out, ref["eager"]) < 1e-3
        assert _max_err(out, ref["compiled"]) < 1e-3


@pytest.mark.parametrize("cid", [c[0] for c in GOOD if c[5]])
def test_greedy_tokens_equal(job, cid):
    ref = job["refs"][cid]
    assert torch.equal(ref["tokens"], ref["eager_tokens"])
    for r in job["ranks"]:
        assert r[cid]["tokens"].shape[1] == 8 + STEPS
        assert torch.equal(r[cid]["tokens"], ref["tokens"])


@pytest.mark.parametrize("cid", [c[0] for c in GOOD if c[5]])
def test_one_compile_per_rank_with_collectives_left_to_inductor(job, cid):
    """One graph per rank for a forward (no graph break at the all-reduce); our pass rewrote every AWQ linear
    of the local model with the 4 all-reduces (o, down x 2 layers) and their waits still in the graph; the
    same number of graphs as one process for the whole generate()."""
    for r in job["ranks"]:
        x = r[cid]
        assert x["unique_graphs_first_call"] == 1 and x["graph_breaks"] == 0
        assert len(x["graphs_first_call"]) == 1
        g = x["graphs_first_call"][0]
        assert g["layers"] == 14, g           # 2 layers x (q, k, v, o, gate, up, down)
        assert g["all_reduce"] == 4 and g["wait_tensor"] == 4, g
        assert x["unique_graphs"] == job["refs"][cid]["unique_graphs"]
        assert all(gr["layers"] == 14 and gr["all_reduce"] == 4 for gr in x["graphs"])


@pytest.mark.parametrize("cid", [c[0] for c in GOOD])
def test_each_rank_reads_only_its_shards(job, cid):
    """Sharded tensors are read as 1/W slices: every column-/row-parallel tensor read has numel/W elements
    (except a row-parallel bias, a column-parallel g_idx and one-group scales, which span no split dim)."""
    from safetensors import safe_open

    path = job["paths"][cid]
    full = {}
    for f in os.listdir(path):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(path, f), "pt") as h:
                for k in h.keys():
                    full[k] = h.get_slice(k).get_shape()
    for rank, r in enumerate(job["ranks"]):
        x = r[cid]
        assert x["rank"] == rank
        col, row = set(x["tp"]["column_parallel"]), set(x["tp"]["row_parallel"])
        assert x["tp"]["replicated"] == ["lm_head"]
        assert len(col) == (4 if cid.startswith("phi3") else 10) and len(row) == 4
        seen = {}
        for name, numel in x["reads"]:      # a fused projection's tensor: one slice per sub-projection
            seen[name] = seen.get(name, 0) + numel
        assert set(seen) == set(full)
        for name, numel in seen.items():
            layer, _, suffix = name.rpartition(".")
            total = int(torch.Size(full[name]).numel())
            whole = suffix == "weight_shape" or (layer in col and suffix == "g_idx") or \
                (layer in row and suffix == "bias") or \
                (layer in row and suffix in ("weight_scale", "weight_zero_point") and full[name][1] == 1)
            if layer in col or layer in row:
                assert numel == (total if whole else total // WORLD), (name, numel, total)
            else:
                assert numel == total, name
        # the local model: this rank's heads and MLP width, head_dim kept
        sh = x["shapes"]
        if cid.startswith("phi3"):   # q 2 heads + k 1 + v 1 of head_dim 16; gate 96 + up 96
            assert sh["model.layers.0.self_attn.qkv_proj"] == (64, 64) and sh["model.layers.0.mlp.gate_up_proj"] == (64, 192)
        else:
            assert sh["model.layers.0.self_attn.q_proj"] == (64, 32) and sh["model.layers.0.self_attn.k_proj"] == (64, 16)
            assert sh["model.layers.0.mlp.gate_proj"] == (64, 96)
        assert sh["model.layers.0.self_attn.o_proj.local"] == (32, 64)
        assert sh["model.layers.0.mlp.down_proj.local"] == (96, 64)
        assert x["types"]["model.layers.0.mlp.down_proj"] == "RowParallelLinear"
        if cid.endswith("-float"):
            assert x["types"]["model.layers.0.self_attn.v_proj"] == "Linear"
            assert x["types"]["model.layers.0.mlp.down_proj.local"] == "Linear"


@pytest.mark.parametrize("cid,match", [(c[0], c[3]) for c in BAD], ids=[c[0] for c in BAD])
def test_indivisible_sizes_refused_before_loading(job, cid, match):
    import re

    for r in job["ranks"]:
        x = r[cid]
        assert x["error"].startswith("CheckpointError: tensor parallelism over 2 ranks: sizes the world size "
                                     "does not divide (nothing was loaded)"), x["error"]
        for m in match:
            assert re.search(m, x["error"]), (m, x["error"])
        assert x["reads"] == []           # raised before any tensor was read


# ------------------------------------------------------------------------------------------------ the CLI

def test_generate_cli_under_torchrun(tmp_path):
    """``torchrun --nproc-per-node 2 -m awq_compile generate PATH --tp 2``: compiled, rank 0 alone prints,
    the answer is the single-process model's, the process group is destroyed at exit."""
    import signal

    from test_generate_cli import _tokenizer

    d = str(tmp_path / "ckpt")
    write_checkpoint(d, float_model(tiny_config("llama")), "awq", 32)
    _tokenizer(d)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
           "-m", "awq_compile", "generate", d, "--tp", str(WORLD), "--prompt", "w5 w6 w7", "--max-new-tokens", "3",
           "--device", "cpu", "--raw"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)     # torchrun and both ranks
        out, err = proc.communicate()
        pytest.fail(f"torchrun generate ran past 240 s\n{out[-2000:]}\n{err[-3000:]}", pytrace=False)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert out.count("loaded ") == 1 and "rank 0 of 2 (tensor parallel; 4 row-, 10 column-parallel layers)" in out
    assert out.count("[awq] first call, compiling") == 1 and out.count(" tokens in ") == 1, out
    model, tok = load_pretrained(d, dtype=torch.float32, compile=False)
    ids = tok("w5 w6 w7", return_tensors="pt")
    with torch.no_grad():
        new = model.generate(**ids, max_new_tokens=3, do_sample=False, min_new_tokens=1)[0, ids["input_ids"].shape[1]:]
    line = next(ln for ln in out.splitlines() if ln.startswith("[awq] ") and "tokens in" not in ln
                and "first call" not in ln)
    assert line == "[awq] " + tok.decode(new, skip_special_tokens=True).strip()
    assert "destroy_process_group() was not called" not in err


def test_generate_cli_tp_without_torchrun(monkeypatch, capsys):
    from awq_compile.__main__ import main

    for var in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert main(["generate", "/nonexistent", "--tp", "2", "--device", "cpu"]) == 2
    assert "error: tp=2: the environment has no WORLD_SIZE; start the processes with torchrun " \
           "(torchrun --nproc-per-node 2 ...)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ in-process checks

def _meta_model(cfg):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def test_plan_refuses_what_it_cannot_shard():
    """Refusals of the plan itself (no process group needed): experts, unknown decoder linears, world 3."""
    from awq_compile.loading import CheckpointError
    from awq_compile.loading.sharding import plan

    cfg = tiny_config("llama")
    cfg.num_local_experts = 4
    with pytest.raises(CheckpointError, match=r"mixture of experts \(num_local_experts=4\)"):
        plan(_meta_model(tiny_config("llama")), cfg, {}, 2, 0)
    model = _meta_model(tiny_config("llama"))
    model.model.layers[1].self_attn.gate = torch.nn.Linear(64, 4, device="meta")
    with pytest.raises(CheckpointError, match=r"layer model\.layers\.1\.self_attn\.gate \(Linear\) inside a decoder "
                                              r"layer has no sharding rule"):
        plan(model, tiny_config("llama"), {}, 2, 0)
    with pytest.raises(CheckpointError) as e:
        plan(_meta_model(tiny_config("llama")), tiny_config("llama"), {}, 3, 0)
    lines = str(e.value).splitlines()
    assert lines[1:3] == [
        "  layer model.layers.0.self_attn: num_attention_heads=4 is not divisible by the world size 3",
        "  layer model.layers.0.self_attn: num_key_value_heads=2 is not divisible by the world size 3 "
        "(KV heads are split, not replicated)"], lines
    assert "  layer model.layers.0.self_attn.q_proj: column-parallel: out_features=64 is not divisible by the world " \
           "size 3 (and 1 more layer(s) alike)" in lines
    cfg = tiny_config("llama")
    cfg.intermediate_size = 190
    with pytest.raises(CheckpointError, match=r"layer model\.layers\.0\.mlp: intermediate_size=190 is not divisible "
                                              r"by the world size 4"):
        plan(_meta_model(cfg), cfg, {}, 4, 0)


def test_mesh_arguments_refused(monkeypatch):
    from awq_compile.loading import CheckpointError
    from awq_compile.loading.parallel import tensor_parallel_mesh

    cpu = torch.device("cpu")
    for bad in (0, "2", True, 2.0):
        with pytest.raises(CheckpointError, match=r"expected a world size \(int >= 1\) or a 1-D DeviceMesh"):
            tensor_parallel_mesh(bad, cpu)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(CheckpointError, match=r"tp=2 but WORLD_SIZE=3: start 2 processes"):
        tensor_parallel_mesh(2, cpu)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(CheckpointError, match=r"MASTER_ADDR / MASTER_PORT are not set"):
        tensor_parallel_mesh(2, cpu)
