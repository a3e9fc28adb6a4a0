"""Tensor parallelism at run time: the 1-D mesh from torchrun's environment, and the row-parallel linear.

PyTorch's own engine does the communication: a ``torch.distributed`` process group (NCCL/RCCL on GPUs,
gloo on CPU), a :class:`~torch.distributed.device_mesh.DeviceMesh`, and the *functional* all-reduce
(``torch.distributed._functional_collectives``), which Dynamo traces into the graph as
``_c10d_functional.all_reduce`` + ``wait_tensor``, Inductor compiles and CUDA graphs capture.
The sharding rules themselves are in :mod:`awq_compile.loading.sharding`.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .quant_config import CheckpointError

__all__ = ["RowParallelLinear", "tensor_parallel_mesh"]


class RowParallelLinear(nn.Module):
    """A row-parallel layer: this rank's K-slice ``local`` (no bias), a sum over the group, then the bias once.

    ``local`` is the quantised module (or ``nn.Linear``) holding rows ``[r*K/W, (r+1)*K/W)`` of the
    weight; the input it receives is the matching slice of activations (the column-parallel layer before
    it produced exactly those).  The all-reduce is functional so ``backend="awq"`` sees it in the graph
    next to the AWQ matmul it rewrites, and hands it to Inductor.
    """

    def __init__(self, local: nn.Module, group_name: str, world: int):
        super().__init__()
        bias = local.bias
        if isinstance(local, nn.Linear):
            local.bias = None
        else:
            local._buffers["bias"] = None
        self.local = local
        self.group_name = group_name
        self.world = world
        self.in_features = local.in_features * world     # the layer's global sizes
        self.out_features = local.out_features
        self.register_buffer("bias", None if bias is None else bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.distributed import _functional_collectives as funcol

        y = funcol.all_reduce(self.local(x), "sum", self.group_name)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return f"world={self.world}, group={self.group_name}, bias={self.bias is not None}"


def _env_int(name: str, world: int) -> int:
    value = os.environ.get(name)
    if value is None:
        raise CheckpointError(f"tp={world}: the environment has no {name}; start the processes with torchrun "
                              f"(torchrun --nproc-per-node {world} ...) or pass tp=a DeviceMesh")
    try:
        return int(value)
    except ValueError:
        raise CheckpointError(f"tp={world}: {name}={value!r} is not an integer") from None


def tensor_parallel_mesh(tp, device: torch.device):
    """``(mesh, initialised_here)`` for ``tp``: a 1-D DeviceMesh as given, or an int world size.

    With an int, the default process group is initialised from torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT; LOCAL_RANK picks the GPU) with NCCL on CUDA/ROCm and gloo on CPU, unless
    it already is; the caller owns it (``torch.distributed.destroy_process_group()`` at exit).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

    if isinstance(tp, DeviceMesh):
        if tp.ndim != 1:
            raise CheckpointError(f"tp: a {tp.ndim}-D DeviceMesh {tuple(tp.shape)}; tensor parallelism takes a "
                                  f"1-D mesh (pass mesh['tp'] of a larger one)")
        if tp.device_type != device.type:
            raise CheckpointError(f"tp: the mesh is on {tp.device_type!r} but device={str(device)!r}")
        return tp, False
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise CheckpointError(f"tp={tp!r}: expected a world size (int >= 1) or a 1-D DeviceMesh")
    created = False
    if not dist.is_initialized():
        world = _env_int("WORLD_SIZE", tp)
        _env_int("RANK", tp)
        if world != tp:
            raise CheckpointError(f"tp={tp} but WORLD_SIZE={world}: start {tp} processes "
                                  f"(torchrun --nproc-per-node {tp} ...)")
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise CheckpointError(f"tp={tp}: MASTER_ADDR / MASTER_PORT are not set; start with torchrun")
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    elif dist.get_world_size() != tp:
        raise CheckpointError(f"tp={tp} but the default process group has {dist.get_world_size()} ranks")
    return init_device_mesh(device.type, (tp,), mesh_dim_names=("tp",)), created
