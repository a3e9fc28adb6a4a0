"""What one call of the op resolved, kept for the next call with the same weight tensors.

Before its launch a call of :func:`~awq_compile.runtime.op.w4a16_linear` validates its arguments, resolves the
plan for its problem, looks its weight up in the cache and plans the launch for its M.  All of that depends
only on the layer's weight tensors (which objects, their version counters, memory, shape and strides), on x's
dtype, device and last dimension, on whether there is a bias, and on the op's constant arguments -- the same
from call to call of a layer.  Measured on the H200's host (``benchmarks.host_overhead``): the op cost about
210 µs of CPU per call against 35 µs for its Triton launch, which makes a prefill without CUDA graphs wait for
the host.  So a call remembers what it resolved (a :class:`Resolved`), keyed on the identities of those
tensors and the constant arguments, and the next call checks that the tensors are still the same objects,
unwritten and unmoved, and goes straight to the launch.

Nothing here keeps a user's tensor or a repacked weight alive: the tensors are held by weak references (a
new tensor that reuses a dead one's ``id`` never matches), and the repacked weight by a weak reference to the
weight cache's value (when the cache drops an entry -- a source storage died, :meth:`WeightCache.clear` --
the memo misses and the call takes the full path, which repacks).  Inference tensors carry no version
counter, so a call with one is never remembered (the weight cache does not cache them either).
"""

from __future__ import annotations

import functools
import weakref

import torch

__all__ = ["Resolved", "CallMemo", "call_memo"]

# how many M a remembered call keeps launch runners for, and how many calls the memo keeps, before starting over
MAX_RUNNERS = 256
MAX_CALLS = 4096


def _state(t: torch.Tensor | None):
    if t is None:
        return None
    return (weakref.ref(t), t._version, t.data_ptr(), t.shape, t.stride())


class Resolved:
    """One call site's resolution: the plan, the prepared weight (weakly), K and N, and a runner per M."""

    __slots__ = ("_states", "plan", "_prepared", "K", "N", "runners", "problem")

    def __init__(self, tensors, plan, prepared, K: int, N: int, problem):
        # None: not to be kept (an inference tensor among them: no version counter to check)
        self._states = (None if any(t is not None and t.is_inference() for t in tensors)
                        else tuple(_state(t) for t in tensors))
        self.plan = plan
        self._prepared = weakref.ref(prepared)
        self.K, self.N = K, N
        self.problem = problem            # the call's problem without M (the runners add it)
        self.runners: dict = {}

    def prepared(self):
        """The weight cache's value for the call's tensors (None once the cache has dropped it)."""
        return self._prepared()

    def matches(self, tensors) -> bool:
        """Whether ``tensors`` are the very tensors this was resolved for, unwritten and unmoved since."""
        if self._states is None or len(tensors) != len(self._states):
            return False
        for t, st in zip(tensors, self._states):
            if st is None:
                if t is not None:
                    return False
            elif (t is None or st[0]() is not t or t._version != st[1] or t.data_ptr() != st[2]
                  or t.shape != st[3] or t.stride() != st[4]):
                return False
        return self._prepared() is not None


class CallMemo:
    """Call key -> :class:`Resolved` (see the module docstring)."""

    def __init__(self):
        self._calls: dict = {}
        self.hits = 0            # tests read these
        self.misses = 0

    def lookup(self, key, tensors) -> Resolved | None:
        r = self._calls.get(key)
        if r is not None and r.matches(tensors):
            self.hits += 1
            return r
        self.misses += 1
        return None

    def remember(self, key, tensors, plan, prepared, K: int, N: int, problem) -> Resolved:
        """A :class:`Resolved` for this call; kept for the next one unless a tensor is an inference tensor."""
        r = Resolved(tensors, plan, prepared, K, N, problem)
        if r._states is not None:
            if len(self._calls) >= MAX_CALLS:
                self._calls.clear()
            self._calls[key] = r
        return r

    def clear(self) -> None:
        self._calls.clear()

    def __len__(self) -> int:
        return len(self._calls)


@functools.lru_cache(maxsize=None)
def call_memo() -> CallMemo:
    """The process's memo (created on first use)."""
    return CallMemo()
