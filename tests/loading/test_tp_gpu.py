"""The tensor-parallel code path on one GPU: a 1-rank NCCL mesh, compiled with CUDA graphs, against tp=None.

Run on a single-GPU machine, installed or from a source tree::

    PYTHONPATH=$PWD python -m pytest tests/loading/test_tp_gpu.py -q -rs

With one rank every layer is still planned, sliced (whole), row-parallel layers are wrapped and their
outputs go through NCCL's all-reduce inside the compiled, CUDA-graph-captured decoding step; the tokens
and logits must equal the single-process model's.  Multi-GPU runs are measured separately.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from _writers import float_model, tiny_config, write_checkpoint  # noqa: E402

STEPS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mesh():
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_available() or not dist.is_nccl_available():
        pytest.skip("torch.distributed with NCCL is not available")
    torch.cuda.set_device(0)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cuda", (1,), mesh_dim_names=("tp",))
    finally:
        if created:
            dist.destroy_process_group()


def _generate(model, ids):
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=STEPS, do_sample=False, min_new_tokens=STEPS,
                             output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, 1).float()


def _cudagraph_skips(counters) -> int:
    return int(counters["inductor"].get("cudagraph_skips", 0)) if "inductor" in counters else 0


def test_one_rank_mesh_compiled_matches_tp_none(tmp_path, mesh):
    """tp=<1-rank mesh> through load_pretrained's CUDA compile path (generate() compiles its decoding step,
    mode reduce-overhead): our pass rewrote every AWQ linear with the 4 all-reduces in the graph, CUDA graphs
    were not skipped any more often than without tp, tokens equal and logits within 1e-2 of tp=None."""
    import awq_compile.backend as backend
    from awq_compile import load_pretrained
    from torch._dynamo.utils import counters

    d = str(tmp_path / "qwen2-awq")
    write_checkpoint(d, float_model(tiny_config("qwen2", hidden=128)), "awq", 32)
    ids = torch.randint(3, 96, (1, 12), generator=torch.Generator().manual_seed(0)).cuda()

    torch._dynamo.reset()
    counters.clear()
    ref, _ = load_pretrained(d, device="cuda", dtype=torch.float16, tokenizer=False)
    with torch.no_grad():
        ref_eager = ref(ids).logits.float()
    ref_tokens, ref_logits = _generate(ref, ids)
    ref_skips = _cudagraph_skips(counters)
    del ref
    torch._dynamo.reset()
    counters.clear()

    graphs = []
    analyze = backend.analyze_graph

    def spy(gm, example_inputs, options=None, **kw):
        a = analyze(gm, example_inputs, options, **kw)
        graphs.append((len(a.layers), sum("all_reduce" in str(n.target) for n in gm.graph.nodes
                                          if n.op == "call_function")))
        return a

    backend.analyze_graph = spy
    try:
        model, _ = load_pretrained(d, device="cuda", dtype=torch.float16, tokenizer=False, tp=mesh)
        info = model.awq_load_info["tp"]
        assert info["world"] == 1 and len(info["row_parallel"]) == 4 and len(info["column_parallel"]) == 10
        assert type(model.model.layers[0].mlp.down_proj).__name__ == "RowParallelLinear"
        assert model.generation_config.compile_config.options["mode"] == "reduce-overhead"
        with torch.no_grad():
            eager = model(ids).logits.float()
        tokens, logits = _generate(model, ids)
    finally:
        backend.analyze_graph = analyze
    assert graphs, "generate() never compiled the decoding step with backend='awq'"
    assert any(layers == 14 and reduces == 4 for layers, reduces in graphs), graphs
    skips = _cudagraph_skips(counters)
    assert skips <= ref_skips, f"CUDA graphs skipped {skips} time(s) with tp, {ref_skips} without: {dict(counters['inductor'])}"
    assert float((eager - ref_eager).norm() / ref_eager.norm()) < 1e-3
    assert torch.equal(tokens, ref_tokens), (tokens, ref_tokens)
    err = float((logits - ref_logits).norm() / ref_logits.norm())
    assert err < 1e-2, err
