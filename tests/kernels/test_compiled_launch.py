"""KernelLauncher (kernels/triton/compiled.py): a launch plan's later launches go straight to the kernel Triton
compiled on the first, only while nothing Triton specialises on has changed.

CPU: a stand-in jit function records what Triton's path and the compiled kernel were called with.  GPU: the real
kernels, launched twice and then with a misaligned x, each result against float64."""

from __future__ import annotations

import inspect

import pytest
import torch

from awq_compile.kernels.triton.compiled import KernelLauncher


class _Driver:
    def __init__(self):
        self.device = 0
        self.streams = []

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device):
        self.streams.append(device)
        return 1000 + device


class _Kernel:
    """A compiled kernel: ``kernel[grid](*args, stream=)``."""

    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        def runner(*args, stream=None):
            self.log.append(("direct", grid, args, stream))
        return runner


class _JitFunction:
    """``fn[grid](*args, **kwargs)`` as Triton's jit function: records the call, returns a compiled kernel."""

    def __init__(self, compiled=True):
        def kernel(x_ptr, out_ptr, n, stride, BLOCK, FLAG=7):
            pass
        self.signature = inspect.signature(kernel)
        self.arg_names = list(self.signature.parameters)
        self.pre_run_hooks = []
        self.log = []
        self.compiled = compiled

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(("triton", grid, args, kwargs))
            return _Kernel(self.log) if self.compiled else None
        return run


def _tensors(offset=0):
    buf = torch.randn(64)
    return buf[offset:offset + 32], torch.empty(32)


def _launcher(fn, grid=(4,)):
    drv = _Driver()
    return KernelLauncher(fn, grid, {"BLOCK": 16, "num_warps": 4}, driver=drv), drv


def test_second_launch_goes_to_the_compiled_kernel_with_the_constexprs_and_defaults():
    fn = _JitFunction()
    launch, drv = _launcher(fn)
    x, out = _tensors()
    launch(x, out, 32, 1)
    launch(x, out, 32, 1)
    assert [e[0] for e in fn.log] == ["triton", "direct"]
    _, grid, args, stream = fn.log[1]
    assert grid == (4, 1, 1)                                   # padded to three sizes
    assert args[:4] == (x, out, 32, 1) and args[4:] == (16, 7)   # keyword constexpr, then the default
    assert stream == 1000 and (launch.full, launch.direct) == (1, 1)
    # the options (num_warps) went to Triton's path only
    assert fn.log[0][3] == {"BLOCK": 16, "num_warps": 4}


@pytest.mark.parametrize("change", ["alignment", "dtype", "int", "none", "device", "hook"])
def test_anything_triton_specialises_on_takes_tritons_path(change):
    fn = _JitFunction()
    launch, drv = _launcher(fn)
    x, out = _tensors()
    launch(x, out, 32, 1)
    args = [x, out, 32, 1]
    if change == "alignment":
        args[0] = _tensors(offset=1)[0]          # 4 bytes in: no longer 16-byte aligned
    elif change == "dtype":
        args[0] = x.double()
    elif change == "int":
        args[2] = 48
    elif change == "none":
        args[3] = None
    elif change == "device":
        drv.device = 1
    else:
        fn.pre_run_hooks.append(lambda *a, **k: None)
    launch(*args)
    assert [e[0] for e in fn.log] == ["triton", "triton"]
    # and what that call compiled for is what the next one is compared with
    if change != "hook":
        launch(*args)
        assert fn.log[-1][0] == "direct"


def test_new_pointers_of_the_same_alignment_stay_direct():
    fn = _JitFunction()
    launch, _ = _launcher(fn)
    launch(*_tensors(), 32, 1)
    x2, out2 = _tensors()
    launch(x2, out2, 32, 1)
    assert fn.log[-1][0] == "direct" and fn.log[-1][2][0] is x2


def test_no_compiled_kernel_means_tritons_path_every_time():
    """The interpreter hands back no compiled kernel."""
    fn = _JitFunction(compiled=False)
    launch, _ = _launcher(fn)
    for _ in range(3):
        launch(*_tensors(), 32, 1)
    assert [e[0] for e in fn.log] == ["triton"] * 3


def test_a_parameter_without_value_or_default_is_never_launched_directly():
    fn = _JitFunction()
    launch = KernelLauncher(fn, (4,), {"num_warps": 4}, driver=_Driver())    # BLOCK missing
    for _ in range(2):
        launch(*_tensors(), 32, 1)
    assert [e[0] for e in fn.log] == ["triton"] * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("M", [1, 16, 300])
def test_gpu_direct_launches_match_float64(M):
    from awq_compile.formats.standard import dequantize_standard
    from awq_compile.kernels.problem import Problem
    from awq_compile.kernels.registry import select
    from awq_compile.kernels.spec import LaunchOptions, plan_launch
    from awq_compile.kernels.specs import get_spec
    from awq_compile.kernels.triton.launch import launch
    from awq_compile.target import detect

    K, N, G = 1024, 768, 128
    torch.manual_seed(M)
    qweight = torch.randint(-2**31, 2**31 - 1, (K // 8, N), dtype=torch.int32, device="cuda")
    qzeros = torch.randint(-2**31, 2**31 - 1, (K // G, N // 8), dtype=torch.int32, device="cuda")
    scales = (torch.rand(K // G, N, device="cuda") * 0.02 + 0.001).half()
    target = detect(torch.device("cuda"))
    problem = Problem(K, N, G, True, "float16", m=M)
    entry = select(problem.with_m(None), target, layout="standard").entry_for(M)
    # a plan of its own (not the launcher cache's, which other tests launch too)
    plan = plan_launch(get_spec(entry.kernel), entry.config, entry.launch or LaunchOptions(), problem, target)
    ref_w = dequantize_standard(qweight, qzeros, scales, G, torch.float64)
    buf = torch.randn(M * K + 8, device="cuda", dtype=torch.float16)
    for x in (buf[:M * K].view(M, K), torch.randn(M, K, device="cuda", dtype=torch.float16),
              buf[1:1 + M * K].view(M, K)):                    # the last one 2 bytes off 16-byte alignment
        out = torch.full((M, N), float("nan"), device="cuda", dtype=torch.float16)
        launch(plan, x, qweight, qzeros, scales, None, out)
        ref = x.double() @ ref_w
        assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-3
    launcher = plan.runtime["launcher"]
    # the first call through Triton, the second straight to the compiled kernel; the misaligned x through Triton
    # where the kernel reads x itself (a regrouped copy of x is aligned; the dequant kernel does not read x)
    takes_x = not (plan.x_regroup or plan.x_kplanes or plan.dense_weight)
    assert (launcher.full, launcher.direct) == ((2, 1) if takes_x else (1, 2))
