"""A jit kernel launched through the kernel Triton compiled for it, once one launch has shown which.

``fn[grid](*args, **kwargs)`` does, on every call: bind the arguments to the signature, work out each one's
specialisation (its type; for a pointer whether it is 16-byte aligned, for an integer its width, whether it
is 1 and whether 16 divides it), build the cache key from that and the options, look the compiled kernel
up, and launch it.  On the H200's host that is 30-35 µs of the op's ~90 µs per call, of which the C launch
itself is ~5 µs (``benchmarks.host_overhead``); without CUDA graphs (Inductor's default mode, a prefill) the
GPU waits for it.

:class:`KernelLauncher` makes the first call that way and keeps the compiled kernel it returned.  A later
call goes straight to that kernel when nothing Triton specialises on can differ from the first call:

* every tensor argument has the dtype it had and the same 16-byte alignment (or misalignment);
* every other argument (integers, floats, None) is *equal* to what it was -- stricter than Triton, which
  only looks at an integer's width, divisibility and value 1 (a launch plan's integers are its shape and
  strides, fixed per plan);
* the constexprs and launch options are the plan's (fixed per launcher), the current device is the same,
  and the jit function has no pre-run hooks.

Anything else takes Triton's path again (which compiles or finds the right kernel) and the launcher keeps
what that call returned.  The launch itself is Triton's own (``CompiledKernel[grid]``: the current stream of
the device, the launch hooks profilers set), the same in Triton 3.6 and 3.9.  Under the interpreter the
jit function returns no compiled kernel and every call takes Triton's path.  Not re-read per call: Triton's
debug/instrumentation knobs (part of its cache key), which a process sets before its first launch.

Measured on the H200's host, one process (docs/performance.md, 2026-12-02): 27.6-29.9 µs through Triton,
18.6-20.8 µs through the compiled kernel at M = 1 -- the C launcher and this guard each read every tensor's
``data_ptr`` through Python, which is most of what is left.
"""

from __future__ import annotations

import inspect

import torch

__all__ = ["KernelLauncher"]


def _classes(args) -> tuple:
    """What Triton's specialisation of ``args`` can depend on (see the module docstring)."""
    return tuple((a.dtype, a.data_ptr() & 15 == 0) if isinstance(a, torch.Tensor) else a for a in args)


class _Compiled:
    """The compiled kernel of one launch and what it was compiled for."""

    __slots__ = ("run", "tail", "classes", "device", "current_device", "current_stream")

    def __init__(self, run, tail, classes, device, current_device, current_stream):
        self.run, self.tail, self.classes, self.device = run, tail, classes, device
        self.current_device, self.current_stream = current_device, current_stream


def _tail(fn, n_args: int, kwargs: dict) -> tuple | None:
    """The values of ``fn``'s parameters after the first ``n_args`` (keywords, else defaults), in signature
    order -- the rest of what Triton passes its compiled kernel -- or None when they cannot be told."""
    names = getattr(fn, "arg_names", None)
    signature = getattr(fn, "signature", None)
    if names is None or signature is None or any(k in names[:n_args] for k in kwargs):
        return None
    tail = []
    for name in names[n_args:]:
        if name in kwargs:
            tail.append(kwargs[name])
        else:
            default = signature.parameters[name].default
            if default is inspect.Parameter.empty:
                return None
            tail.append(default)
    return tuple(tail)


class KernelLauncher:
    """``launcher(*args)`` = ``fn[grid](*args, **kwargs)`` for one launch plan (see the module docstring)."""

    __slots__ = ("fn", "grid", "kwargs", "_driver", "_compiled", "direct", "full")

    def __init__(self, fn, grid, kwargs: dict, *, driver=None):
        """``driver``: what tells the current device and stream (default: Triton's active driver)."""
        self.fn, self.grid, self.kwargs, self._driver = fn, grid, kwargs, driver
        self._compiled: _Compiled | None = None
        self.direct = 0          # calls that went straight to the compiled kernel / through Triton (tests read these)
        self.full = 0

    def __call__(self, *args) -> None:
        c = self._compiled
        if c is not None and not getattr(self.fn, "pre_run_hooks", None):
            device = c.current_device()
            if device == c.device and _classes(args) == c.classes:
                self.direct += 1
                c.run(*args, *c.tail, stream=c.current_stream(device))
                return
        self.full += 1
        kernel = self.fn[self.grid](*args, **self.kwargs)
        self._compiled = self._remember(kernel, args)

    def _remember(self, kernel, args) -> _Compiled | None:
        """What the direct launch needs from this call's compiled ``kernel`` (None: it cannot be taken)."""
        if (kernel is None or not callable(getattr(kernel, "__getitem__", None)) or callable(self.grid)
                or not 1 <= len(self.grid) <= 3):
            return None                   # the interpreter, or a jit function that hands back no kernel
        tail = _tail(self.fn, len(args), self.kwargs)
        if tail is None:
            return None
        active = self._driver
        if active is None:
            from triton.runtime import driver

            active = driver.active
        grid = tuple(self.grid) + (1,) * (3 - len(self.grid))      # CompiledKernel[grid] reads three sizes
        return _Compiled(kernel[grid], tail, _classes(args), active.get_current_device(),
                         active.get_current_device, active.get_current_stream)
