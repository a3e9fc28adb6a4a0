"""Load an AOTInductor package in a fresh process with torch alone, run it on saved inputs, time some calls;
used by tests through :func:`run`.  Our ops are never registered there (``import torch`` may load the
package's ``torch.backends`` entry point, which registers a log name and imports nothing else), so a
package that calls back into our Python fails here; the runner checks that they stayed unregistered.

A crash of ``aoti_load_package`` (torch 2.11 segfaulted on a package calling our opaque op) kills only this
process; :func:`run` reports the signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def _main(args: dict) -> None:
    import torch

    assert not _ours_registered(), "our ops are registered before the package is loaded"
    inputs = torch.load(args["inputs"])
    runner = torch._inductor.aoti_load_package(args["package"])
    device = torch.device(args["device"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    outs, micros = {}, {}
    for m, x in inputs.items():
        x = x.to(device)
        outs[m] = runner(x).cpu()
        if int(m) in args["time_m"]:
            for _ in range(10):
                runner(x)
            sync()
            t0 = time.perf_counter()
            for _ in range(args["calls"]):
                runner(x)
            sync()
            micros[m] = (time.perf_counter() - t0) * 1e6 / args["calls"]
    torch.save(outs, args["outputs"])
    print(json.dumps({"micros": micros, "awq_compile_imported": _ours_registered()}))


def _ours_registered() -> bool:
    import torch

    if any(m.startswith(("awq_compile.runtime", "awq_compile.exporting")) for m in sys.modules):
        return True
    for name in ("w4a16_linear", "w4a16_linear_triton"):
        try:
            getattr(torch.ops.awq_compile, name)
            return True
        except (AttributeError, RuntimeError):
            pass
    return False


def run(package: str, xs: dict, tmp_path, label: str, *, device: str = "cpu", time_m=(), calls: int = 200):
    """({M: output}, {M: microseconds per call}) of the package on ``xs`` ({M: input}) in a subprocess;
    raises AssertionError naming the signal if the process was killed."""
    import torch

    inputs, outputs = tmp_path / f"{label}_in.pt", tmp_path / f"{label}_out.pt"
    torch.save({str(m): x.cpu() for m, x in xs.items()}, inputs)
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    args = {"package": str(package), "inputs": str(inputs), "outputs": str(outputs), "device": device,
            "time_m": list(time_m), "calls": calls}
    proc = subprocess.run([sys.executable, __file__, json.dumps(args)], capture_output=True, text=True,
                          timeout=600, env=env)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise AssertionError(f"{label}: loading/running the AOTInductor package killed the process with {name} "
                             f"(torch {torch.__version__}); stderr tail:\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, f"{label}: package runner failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not info["awq_compile_imported"], "running the package registered our ops (it called our Python)"
    return ({int(m): y for m, y in torch.load(outputs).items()},
            {int(m): v for m, v in info["micros"].items()})


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
