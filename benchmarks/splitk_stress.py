"""Split-K stress check on the GPU: the configs the sm90 plan ships, 20 repeated launches each, all must
match float64 (``python -m benchmarks.splitk_stress``).  A race in the split-K reduction shows up as an
error that moves between launches on the same inputs.  The stripe kernel's entries (partial tiles reduced
through the slot workspace, whatever its SPLIT_K-less config) are stressed the same way, on the weight in
the layout the plan prepares (kplanes)."""
import torch

import awq_compile.runtime.op  # noqa: F401
from awq_compile.kernels.triton.launch import run
from awq_compile.kernels.problem import Problem
from awq_compile.formats.kplanes import to_kplanes
from awq_compile.kernels.registry import select
from awq_compile.target import detect, interpreter_active
from benchmarks.common import AWQ, dequant64, random_awq, rel_err

bad = runs = 0
target = detect(torch.device("cuda"))
for K, N in ((4096, 14336), (14336, 4096), (8192, 8192), (4096, 1024)):
    q, z, s = random_awq(K, N, 128)
    st = AWQ.to_standard(q, z, s)
    w = dequant64(q, z, s)
    plan = select(Problem(K, N, 128, True, "float16"), target)
    qweight = to_kplanes(st.qweight) if plan.layout == "kplanes" else st.qweight
    for M in (1, 3, 5, 16, 24, 32, 33, 64, 100, 128, 200):
        e = plan.entry_for(M)
        cfg = e.config_dict
        if cfg.get("SPLIT_K", 1) == 1 and not cfg.get("PER_SM", 0) and e.kernel != "triton_stripe":
            continue
        x = torch.randn(M, K, dtype=torch.float16, device="cuda")
        ref = x.double() @ w
        out = torch.empty(M, N, dtype=torch.float16, device="cuda")
        errs = []
        for _ in range(20):
            out.fill_(float("nan"))
            if _ % 2:
                x.normal_()              # half the launches on fresh activations
                ref = x.double() @ w
            run(e.kernel, e.config, e.launch, x, qweight, st.qzeros, st.scales, None, out, 128, target,
                interpret=interpreter_active(), layout=plan.layout)
            errs.append(rel_err(out, ref))
            runs += 1
        worst = max(errs)
        if not worst < 2e-3:
            bad += sum(not v < 2e-3 for v in errs)
            print("BAD", K, N, M, e.kernel, cfg, worst, flush=True)
        print(f"{K}x{N} M={M} {e.kernel} {plan.layout}: worst rel err {worst:.2e} over 20", flush=True)
print(f"split-K stress done: {runs} launches, bad: {bad}")
