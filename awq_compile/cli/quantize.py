"""``python -m awq_compile quantize MODEL OUT``: write an AutoAWQ-GEMM checkpoint (RTN or activation-aware)."""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m awq_compile quantize", description=__doc__)
    ap.add_argument("model", help="float checkpoint folder (transformers) or a .gguf file")
    ap.add_argument("out", help="output folder for the AWQ checkpoint")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--method", choices=("awq", "rtn"), default="awq",
                    help="awq: activation-aware scale search (needs a tokenizer); rtn: round-to-nearest")
    ap.add_argument("--calibration", help="text file for the scale search (default: a built-in paragraph)")
    ap.add_argument("--grid", type=int, default=20, help="exponents tried per scale search")
    ap.add_argument("--evaluate", action="store_true",
                    help="reload the result and report perplexity and next-token agreement with the float model")
    args = ap.parse_args(argv)

    import torch

    from awq_compile.loading import load_pretrained
    from awq_compile.loading.quantizer import DEFAULT_CALIBRATION, compare_models, load_float_model, quantize_model

    t0 = time.perf_counter()
    print(f"loading {args.model} ...", flush=True)
    model, tok = load_float_model(args.model)
    text = open(args.calibration).read() if args.calibration else None
    print(f"quantising ({args.method}, group size {args.group_size}) ...", flush=True)
    rep = quantize_model(model, args.out, group_size=args.group_size, method=args.method, calibration=text,
                         tokenizer=tok, grid=args.grid)
    print(f"wrote {rep.layers} AWQ layers to {args.out} in {time.perf_counter() - t0:.0f} s")
    if args.evaluate:
        if tok is None:
            print("no tokenizer: nothing to evaluate")
            return 0
        ref, _ = load_float_model(args.model)
        q, _ = load_pretrained(args.out, dtype=torch.float32, compile=False)
        ids = tok(text or DEFAULT_CALIBRATION, return_tensors="pt").input_ids
        r = compare_models(ref, q, ids)
        print(f"perplexity float {r['ppl_reference']:.2f}, quantised {r['ppl']:.2f}; "
              f"next-token agreement {100 * r['next_token_agreement']:.1f}%")
    return 0
