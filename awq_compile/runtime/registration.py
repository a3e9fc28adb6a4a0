"""Registering the forward ops (``w4a16_linear``, ``w4a16_linear_merged``): schema, implementation, fake, autograd.

``torch.library.custom_op`` runs every call through layers of Python: an autograd wrapper that builds its
metadata and redispatches, a Dynamo-disable wrapper around the implementation and an aliasing check of the
result.  On the H200's host that cost ~26 µs per call against ~5 µs for calling the implementation
itself, and where no CUDA graph replays the launches (Inductor's default mode, a prefill) the host's time per
layer is the user's.  So the forward ops are registered through :class:`torch.library.Library` directly:

* the implementation as the ``CompositeExplicitAutograd`` kernel (every backend), the fake through
  :func:`torch.library.register_fake`;
* an ``Autograd`` kernel that, when an input that can get a gradient requires one (and grad mode is on),
  applies an :class:`torch.autograd.Function` built from the op's setup-context and backward functions (its
  forward calls the op again, below autograd);
  otherwise it calls the implementation **itself** when the dispatcher's next kernel would be that
  implementation anyway -- the call's remaining dispatch keys name a CPU or CUDA backend and nothing else (no
  Python mode or subclass, no fake tensors, no functionalization: those leave their own key) -- and
  redispatches in every other case, exactly as the dispatcher would have.
"""

from __future__ import annotations

import torch
from torch._C import DispatchKey

__all__ = ["define"]

_AFTER_AUTOGRAD = torch._C._after_autograd_keyset
# what is left of a call's keys below autograd, less ADInplaceOrView (a fallthrough for functional ops)
_BELOW = _AFTER_AUTOGRAD.remove(DispatchKey.ADInplaceOrView)
_BACKENDS = (DispatchKey.CPU, DispatchKey.CUDA)


def define(lib: torch.library.Library, schema: str, impl, fake, *, setup_context, backward,
           grad_inputs: tuple[int, ...]):
    """Define ``schema`` in ``lib``'s namespace with ``impl`` / ``fake``.  A call in which an argument at one of
    ``grad_inputs`` requires grad runs through an :class:`torch.autograd.Function` whose forward is the op itself
    (below autograd), then ``setup_context(ctx, args, out)``, and whose backward is ``backward(ctx, grad)`` (one
    value per argument of the schema) -- ``register_autograd``'s two functions.  Returns the op's default overload."""
    name = schema.split("(", 1)[0]
    lib.define(schema)
    op = getattr(getattr(torch.ops, lib.ns), name).default

    class function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            out = op(*args)
            setup_context(ctx, args, out)
            return out

        @staticmethod
        def backward(ctx, grad):
            return backward(ctx, grad)

    function.__name__ = function.__qualname__ = f"{name}_function"
    lib.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{lib.ns}::{name}", fake, lib=lib)

    def autograd_kernel(keyset, *args):
        if torch.is_grad_enabled():
            for i in grad_inputs:
                a = args[i]
                if a is not None and a.requires_grad:
                    return function.apply(*args)
        if (keyset & _BELOW).highestPriorityTypeId() in _BACKENDS:
            return impl(*args)
        return op.redispatch(keyset & _AFTER_AUTOGRAD, *args)

    lib.impl(name, autograd_kernel, "Autograd", with_keyset=True)
    return op
