"""``python -m awq_compile <command>``: demo, generate, quantize, explain, check-target."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("awq_compile.cli.demo", "SmolLM2-135M answers, eager and compiled (--synthetic: random-weight model)"),
    "generate": ("awq_compile.cli.generate", "load a 4-bit checkpoint and generate, compiled with awq"),
    "quantize": ("awq_compile.cli.quantize", "write an AutoAWQ-GEMM checkpoint from a float model or GGUF file"),
    "explain": ("awq_compile.cli.explain", "print the explain table for a model built by MODULE:FACTORY"),
    "check-target": ("awq_compile.cli.check_target", "compile every kernel config for a target ahead of time"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m awq_compile <command> [args]\n\ncommands:")
        for name, (_, what) in COMMANDS.items():
            print(f"  {name:13s} {what}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
