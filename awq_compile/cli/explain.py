"""``python -m awq_compile explain MODULE:FACTORY``: what the backend would find and choose for your model.

``FACTORY`` is a callable in ``MODULE`` (a dotted module name, or a path to a ``.py`` file) that takes no
arguments and returns either the model or ``(model, example_inputs)``.  Without example inputs from the
factory, ``--input-shape`` builds random ones (repeat it for several inputs)::

    python -m awq_compile explain awq_compile.models:build_demo_model --input-shape 1,16 --dtype int64
    python -m awq_compile explain my_model.py:load --input-shape 2,8,4096 --dtype float16 --target hip:gfx942

The model runs once under Dynamo with the backend in analysis mode (nothing is rewritten or repacked,
the model is not modified) and the explain table is printed: every AWQ layer with its layout and the
kernel per M bucket, then every matmul left alone with the reason.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

_DTYPES = ("float16", "bfloat16", "float32", "float64", "int64", "int32")


def _shape(text: str) -> tuple[int, ...]:
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 2,16,4096, got {text!r}") from None
    if not shape or any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(f"expected a shape like 2,16,4096, got {text!r}")
    return shape


def _load(spec: str):
    if ":" not in spec:
        raise ValueError(f"expected MODULE:FACTORY (e.g. my_models:build or path/to/file.py:build), got {spec!r}")
    module_name, factory_name = spec.rsplit(":", 1)
    if module_name.endswith(".py") or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not os.path.exists(path):
            raise ValueError(f"no such file: {path}")
        mod_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.path.insert(0, os.path.dirname(path))
        try:
            mod_spec.loader.exec_module(module)
        finally:
            sys.path.remove(os.path.dirname(path))
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
    factory = module
    for part in factory_name.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"{module_name} has no attribute {factory_name!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"{spec} is not callable")
    return factory


def _first_tensor(model):
    for t in list(model.parameters()) + list(model.buffers()):
        return t
    return None


def _inputs(model, shapes, dtype_name, seed):
    import torch

    ref = _first_tensor(model)
    device = ref.device if ref is not None else torch.device("cpu")
    if dtype_name is None:
        floats = [t.dtype for t in list(model.buffers()) + list(model.parameters()) if t.is_floating_point()]
        dtype = floats[0] if floats else torch.float16
    else:
        dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=g).to(device=device, dtype=dtype))
        else:
            out.append(torch.randint(0, 16, shape, generator=g).to(device=device, dtype=dtype))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m awq_compile explain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("factory", metavar="MODULE:FACTORY",
                    help="a callable returning the model, or (model, example_inputs)")
    ap.add_argument("--target", default=None, help="explain for this target (e.g. cuda:sm90, hip:gfx942); "
                                                    "default: detected from the model's device")
    ap.add_argument("--input-shape", type=_shape, action="append", default=None, metavar="D0,D1,...",
                    help="shape of a random example input (repeat for several inputs)")
    ap.add_argument("--dtype", choices=_DTYPES, default=None,
                    help="dtype of the random inputs (default: the model's first float dtype; integer "
                         "inputs are drawn from 0..15, e.g. token ids)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    args = ap.parse_args(argv)

    import torch

    import awq_compile

    if args.target is not None:
        from awq_compile.target import Target

        try:
            Target.parse(args.target)
        except ValueError as e:
            print(f"explain: {e}", file=sys.stderr)
            return 2
    try:
        factory = _load(args.factory)
    except (ValueError, ImportError) as e:
        print(f"explain: cannot load {args.factory}: {e}", file=sys.stderr)
        return 2
    made = factory()
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module):
        model, example = made
        example = list(example) if isinstance(example, (list, tuple)) else [example]
    elif isinstance(made, torch.nn.Module):
        model, example = made, None
    else:
        print(f"explain: {args.factory} returned {type(made).__name__}; expected an nn.Module or "
              "(module, example_inputs)", file=sys.stderr)
        return 2
    if args.input_shape:
        example = _inputs(model, args.input_shape, args.dtype, args.seed)
    if example is None:
        print(f"explain: {args.factory} returned no example inputs; give --input-shape (and --dtype)",
              file=sys.stderr)
        return 2
    report = awq_compile.explain(model, *example, target=args.target)
    print(report)
    return 0
