"""``python -m awq_compile generate PATH --prompt "..."``: load a 4-bit checkpoint and generate, compiled with ``awq``.

Tensor parallel: ``torchrun --nproc-per-node N -m awq_compile generate PATH --tp N --prompt "..."``; every
rank loads its shards and runs the same greedy generation in lockstep, rank 0 prints (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float32": torch.float32, "fp32": torch.float32}


def encode(tok, prompt: str, device, chat: bool = True) -> dict:
    """Token ids for ``prompt``; wrapped in the tokenizer's chat template when it has one and ``chat``."""
    if chat and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
    else:
        enc = tok(prompt, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def timed_generate(model, inputs: dict, max_new_tokens: int, min_new_tokens: int = 1) -> tuple[torch.Tensor, int, float]:
    """Greedy generation: (new token ids [T], count, seconds)."""
    dev = inputs["input_ids"].device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             min_new_tokens=min_new_tokens)
    sync()
    dt = time.perf_counter() - t0
    new = out[0, inputs["input_ids"].shape[1]:]
    return new, int(new.numel()), dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m awq_compile generate", description=__doc__)
    ap.add_argument("path", help="checkpoint folder (AutoAWQ GEMM, GPTQ, compressed-tensors pack-quantized)")
    ap.add_argument("--prompt", default="What is the capital of France?")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    ap.add_argument("--dtype", default=None, choices=sorted(_DTYPES), help="activation dtype (default: the config's on GPUs, float32 on CPU)")
    ap.add_argument("--target", default=None, help="backend target override, e.g. hip:gfx942")
    ap.add_argument("--mode", default=None, help="Inductor mode on CUDA/ROCm (default reduce-overhead: CUDA graphs; "
                                                 "'default' without them)")
    ap.add_argument("--eager", action="store_true", help="do not compile")
    ap.add_argument("--compare", action="store_true", help="also run eagerly and report both tokens/s")
    ap.add_argument("--raw", action="store_true", help="do not apply the chat template")
    ap.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens (for timing)")
    ap.add_argument("--tp", type=int, default=None, help="tensor parallel over N ranks: start with torchrun "
                                                         "--nproc-per-node N (each rank holds its shards)")
    args = ap.parse_args(argv)
    if args.tp is None or args.tp == 1:
        return _run(args, print)
    import torch.distributed as dist

    # every rank runs the same steps; only rank 0 speaks
    say = print if os.environ.get("RANK", "0") == "0" else (lambda *a, **k: None)
    try:
        return _run(args, say)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(args, say) -> int:
    from awq_compile.loading import CheckpointError, load_pretrained, setup_compile

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    options = {k: v for k, v in (("target", args.target), ("mode", args.mode)) if v} or None
    t0 = time.perf_counter()
    dtype = _DTYPES.get(args.dtype)
    if dtype is None and not device.startswith("cuda"):
        dtype = torch.float32  # CPU: float16 matmuls are slow there (0.02 tokens/s for SmolLM2-135M, measured)
    try:
        model, tok = load_pretrained(args.path, device=device, dtype=dtype, compile=False,
                                     progress=say is print, tp=args.tp)
    except CheckpointError as e:
        print(f"error: {e}")
        return 2
    info = model.awq_load_info
    where = f"on {device}"
    if "tp" in info:
        where = (f"rank 0 of {info['tp']['world']} (tensor parallel; {len(info['tp']['row_parallel'])} row-, "
                 f"{len(info['tp']['column_parallel'])} column-parallel layers), on {device}")
    say(f"loaded {args.path}: {info['quantized_layers']} quantised layers ({', '.join(info['formats'])}), "
        f"{info['bytes'] / 2**20:.0f} MiB, {time.perf_counter() - t0:.1f} s, {where}", flush=True)
    if tok is None:
        say("error: the checkpoint has no tokenizer")
        return 2
    inputs = encode(tok, args.prompt, device, chat=not args.raw)
    mn = args.max_new_tokens if args.ignore_eos else 1
    if args.eager or args.compare:
        ids, n, dt = timed_generate(model, inputs, args.max_new_tokens, mn)
        say(f"\n[eager] {tok.decode(ids, skip_special_tokens=True).strip()}")
        say(f"[eager] {n} tokens in {dt:.2f} s: {n / dt:.1f} tokens/s", flush=True)
    if not args.eager:
        setup_compile(model, options)
        ids, n, dt = timed_generate(model, inputs, args.max_new_tokens, mn)
        say(f"\n[awq] first call, compiling: {dt:.1f} s", flush=True)
        ids, n, dt = timed_generate(model, inputs, args.max_new_tokens, mn)
        say(f"[awq] {tok.decode(ids, skip_special_tokens=True).strip()}")
        say(f"[awq] {n} tokens in {dt:.2f} s: {n / dt:.1f} tokens/s", flush=True)
    return 0
