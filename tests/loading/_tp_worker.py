"""One rank of the tensor-parallel test job (test_tp.py starts it with torchrun's environment variables).

``python _tp_worker.py SPEC.json``: runs every case of the spec on this rank and saves what it saw to
``<out>/rank<R>.pt`` (logits, tokens, compile counts, tensor reads, error messages); the test compares
them with the single-process model.  The first load uses ``tp=<world size>`` (the process group comes
from the environment, as under torchrun), the others ``tp=`` the mesh it built.
"""

from __future__ import annotations

import json
import sys
import traceback

import torch


def _collective_nodes(gm) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_function":
            t = str(n.target)
            for key in ("all_reduce", "wait_tensor"):
                if key in t:
                    out[key] = out.get(key, 0) + 1
    return out


def main(spec_path: str) -> int:
    import torch._dynamo
    import torch.distributed as dist
    from torch._dynamo.utils import counters

    import awq_compile.backend as backend
    from awq_compile import load_pretrained
    from awq_compile.loading import checkpoint, setup_compile

    spec = json.load(open(spec_path))
    reads: list[tuple[str, int]] = []
    get, get_slice = checkpoint.Checkpoint.get, checkpoint.Checkpoint.get_slice

    def spy_get(self, name):
        t = get(self, name)
        reads.append((name, t.numel()))
        return t

    def spy_slice(self, name, dim, start, stop):
        t = get_slice(self, name, dim, start, stop)
        reads.append((name, t.numel()))
        return t

    checkpoint.Checkpoint.get, checkpoint.Checkpoint.get_slice = spy_get, spy_slice
    graphs: list[dict] = []
    analyze = backend.analyze_graph

    def spy_analyze(gm, example_inputs, options=None, **kw):
        a = analyze(gm, example_inputs, options, **kw)
        graphs.append({"layers": len(a.layers), "skipped": len(a.skipped), **_collective_nodes(gm)})
        return a

    backend.analyze_graph = spy_analyze
    results: dict = {}
    mesh = None
    for case in spec["cases"]:
        cid = case["id"]
        reads.clear()
        graphs.clear()
        torch._dynamo.reset()
        counters.clear()
        tp = mesh if mesh is not None else spec["world"]
        r: dict = {}
        try:
            model, _ = load_pretrained(case["path"], dtype=torch.float32, tp=tp, compile=False, tokenizer=False)
        except Exception as e:  # the refusals: the message and how many tensors were read before it
            r["error"] = f"{type(e).__name__}: {e}"
            r["reads"] = list(reads)
            results[cid] = r
            continue
        info = model.awq_load_info
        mesh = info["tp"]["mesh"]
        r["rank"] = info["tp"]["rank"]
        r["tp"] = {k: v for k, v in info["tp"].items() if k != "mesh"}
        r["reads"] = list(reads)
        r["shapes"] = {n: (m.in_features, m.out_features) for n, m in model.named_modules()
                       if hasattr(m, "in_features") and ".layers.0." in n}
        r["types"] = {n: type(m).__name__ for n, m in model.named_modules() if ".layers.0." in n}
        ids = torch.tensor(case["ids"])
        with torch.no_grad():
            r["eager"] = model(ids).logits
        if case.get("compile"):
            setup_compile(model)
            with torch.no_grad():
                r["compiled"] = model(ids).logits
                r["graphs_first_call"] = list(graphs)
                r["unique_graphs_first_call"] = counters["stats"]["unique_graphs"]
                r["tokens"] = model.generate(ids[:1], max_new_tokens=case["steps"], do_sample=False)
            r["graphs"] = list(graphs)
            r["unique_graphs"] = counters["stats"]["unique_graphs"]
            r["graph_breaks"] = sum(counters["graph_break"].values())
        results[cid] = r
        del model
    torch.save(results, f"{spec['out']}/rank{dist.get_rank()}.pt")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1]))
    except Exception:
        traceback.print_exc()
        sys.exit(1)
