"""``python -m awq_compile <command>``: demo, explain, check-target."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("awq_compile.cli.demo", "compile the embedded default model and compare with eager"),
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
