"""``awq_compile.load_pretrained``: a quantised Hugging Face checkpoint as a transformers model with our modules.

Steps (docs/checkpoints.md): read and check the quantisation config; build the transformers model from
its config on the meta device; replace exactly the quantised ``nn.Linear`` s by
:class:`~awq_compile.models.AwqLinear` / :class:`~awq_compile.models.GptqLinear` (still on meta); stream
the safetensors shards tensor by tensor to the device (each tensor is read, converted and moved on its
own, so peak memory is about one checkpoint); tie weights; re-create the buffers a checkpoint never
holds (rotary ``inv_freq``); load the tokenizer and generation config; set up compilation.

With ``tp`` (docs/distributed.md) the sharding plan is checked on the model built from the global config
first (every indivisible size raises before a tensor is read); the model is then built from a config
copy with this rank's head counts and MLP width, every sharded tensor is read as this rank's slice, and
the row-parallel layers are wrapped in :class:`~awq_compile.loading.parallel.RowParallelLinear`.
"""

from __future__ import annotations

import json
import logging
import os
import time

import torch
from torch import nn

from . import sharding
from .checkpoint import Checkpoint
from .layers import QUANT_MARKERS, load_module, new_module, tensor_names
from .quant_config import CheckpointError, QuantConfig, read_quant_config

__all__ = ["load_pretrained", "LoadInfo"]

log = logging.getLogger("awq_compile.loading")

_FLOAT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class LoadInfo(dict):
    """What :func:`load_pretrained` did (``model.awq_load_info``): counts, bytes, seconds, the quant config."""


def _config_dtype(config) -> torch.dtype:
    d = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(d, str):
        d = _FLOAT_DTYPES.get(d)
    return d if d in (torch.float16, torch.bfloat16, torch.float32) else torch.float16


def _assign(model: nn.Module, fqn: str, tensor: torch.Tensor) -> None:
    prefix, _, attr = fqn.rpartition(".")
    owner = model.get_submodule(prefix) if prefix else model
    if attr in owner._parameters:
        owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[attr] = tensor


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return None
    return tqdm(total=total, desc=desc, unit=" tensors", leave=False)


def _replace_linears(model: nn.Module, qc: QuantConfig, ckpt: Checkpoint) -> dict[str, object]:
    """Swap the quantised linears for our (meta) modules; returns {name: scheme}."""
    chosen = {}
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear):
            continue
        stored_quant = any(f"{name}.{m}" in ckpt for m in QUANT_MARKERS)
        partial = [f"{name}.{s}" for s in ("qzeros", "scales", "weight_scale", "weight_zero_point") if f"{name}.{s}" in ckpt]
        if partial and not stored_quant:
            raise CheckpointError(f"layer {name}: the checkpoint has {partial} but no {name}.qweight / "
                                  f"{name}.weight_packed (the packed 4-bit codes are missing)")
        scheme = qc.scheme_for(name, type(mod).__name__)
        if qc.presence_driven and scheme is not None and not stored_quant:
            scheme = None  # AWQ/GPTQ leave some linears (lm_head, skipped modules) in float
        if scheme is None:
            if stored_quant:
                raise CheckpointError(f"layer {name}: the checkpoint holds quantised tensors for it, but "
                                      f"{qc.source} leaves it in float (modules_to_not_convert / ignore)")
            continue
        if not stored_quant:
            raise CheckpointError(f"layer {name}: {qc.source} quantises it ({scheme.layout}, group size "
                                  f"{scheme.group_size}) but the checkpoint has no quantised tensors for it "
                                  f"(expected {name}.weight_packed)")
        try:
            new = new_module(mod, scheme)
        except (CheckpointError, ValueError) as e:
            raise CheckpointError(f"layer {name}: {e}") from None
        prefix, _, attr = name.rpartition(".")
        setattr(model.get_submodule(prefix) if prefix else model, attr, new)
        chosen[name] = scheme
    if qc.desc_act and chosen:
        first = next(iter(chosen))
        raise CheckpointError(f"layer {first}: {qc.source} has desc_act=true (act-order GPTQ: a g_idx "
                              f"permutation); not supported, quantise with desc_act=False")
    return chosen


def _materialize_remaining(model: nn.Module, device) -> None:
    """Buffers no checkpoint holds (rotary inv_freq): allocate, then let the model initialise them."""
    for name, mod in model.named_modules():
        meta_bufs = [k for k, b in mod._buffers.items() if b is not None and b.is_meta]
        if not meta_bufs:
            continue
        if name and any(p.is_meta for p in mod.parameters(recurse=False)):
            continue  # a parameter left on meta is reported below
        mod.to_empty(device=device, recurse=False)
        init = getattr(model, "_init_weights", None)
        rope = getattr(mod, "rope_init_fn", None)
        if rope is not None and hasattr(mod, "config"):
            inv_freq, scaling = rope(mod.config, device)
            mod.inv_freq = inv_freq.to(device)
            if "original_inv_freq" in mod._buffers or hasattr(mod, "original_inv_freq"):
                mod.original_inv_freq = inv_freq.to(device).clone()
            if hasattr(mod, "attention_scaling"):
                mod.attention_scaling = scaling
        elif init is not None:
            init(mod)
        else:
            raise CheckpointError(f"{name}: buffers {meta_bufs} are not in the checkpoint and cannot be initialised")


def _check_local_heads(model: nn.Module, config) -> None:
    """The local model's attention modules must have this rank's head counts and the global head_dim."""
    cfg = sharding.text_config(config)
    for name, mod in model.named_modules():
        hd = getattr(mod, "head_dim", None)
        q = getattr(mod, "q_proj", None)
        if hd is None or q is None:
            continue
        if hd != cfg.head_dim or q.out_features != cfg.num_attention_heads * hd:
            raise CheckpointError(f"layer {name}: built with head_dim={hd} and q_proj out_features="
                                  f"{q.out_features}; tensor parallelism expected head_dim={cfg.head_dim} and "
                                  f"{cfg.num_attention_heads} local heads ({type(mod).__name__} does not read "
                                  f"config.head_dim)")


def _wrap_row_parallel(model: nn.Module, tp_plan, mesh) -> None:
    from .parallel import RowParallelLinear

    group_name = mesh.get_group().group_name
    for name, shard in tp_plan.layers.items():
        if shard.style != sharding.ROWWISE:
            continue
        prefix, _, attr = name.rpartition(".")
        parent = model.get_submodule(prefix) if prefix else model
        setattr(parent, attr, RowParallelLinear(getattr(parent, attr), group_name, tp_plan.world))


def load_pretrained(path: str, *, device="cpu", dtype: torch.dtype | None = None, compile: bool = True,
                    options: dict | None = None, tp=None, tokenizer: bool = True, progress: bool = False):
    """Load a 4-bit checkpoint (AutoAWQ GEMM, GPTQ v1/v2, compressed-tensors pack-quantized) for ``generate()``.

    Returns ``(model, tokenizer)``; ``tokenizer`` is None when the directory has none.

    - ``device``: where every tensor goes (``"cuda"``, ``"cuda:1"``, ``"cpu"``); tensors stream there one by one.
    - ``dtype``: activation and non-quantised weight dtype; default the config's ``dtype`` (fp16 if unset).
      Quantised scales keep their stored dtype (fp16 or bf16) except for ``torch.float32``, which is exact.
    - ``compile``: True sets up ``backend="awq"``: a static cache and ``generation_config.compile_config``
      (CUDA/ROCm: ``generate()`` compiles its decoding step itself, ``mode="reduce-overhead"`` unless
      ``options`` says otherwise), or ``model.forward = torch.compile(model.forward, backend="awq")`` on other
      devices. False returns the eager model (same modules, same numbers up to rounding).
    - ``options``: the backend's options (``awq_compile/options.py``), e.g. ``{"target": "hip:gfx942"}``.
    - ``tp``: tensor parallelism (docs/distributed.md): a 1-D ``torch.distributed.device_mesh.DeviceMesh``, or
      a world size (int), in which case the default process group is initialised from torchrun's
      environment (NCCL on CUDA/ROCm, gloo on CPU; ``device="cuda"`` becomes ``cuda:LOCAL_RANK``) and
      the caller destroys it at exit.  Every rank loads only its shards; ``None`` or ``1``: one process.
    - ``progress``: a progress bar over the checkpoint's tensors.
    """
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    t0 = time.perf_counter()
    device = torch.device(device)
    mesh = None
    if tp is not None and not (isinstance(tp, int) and not isinstance(tp, bool) and tp == 1):
        from .parallel import tensor_parallel_mesh

        mesh, _ = tensor_parallel_mesh(tp, device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (expected a checkpoint folder with config.json)")
    with open(os.path.join(path, "config.json")) as f:
        config_dict = json.load(f)
    qc = read_quant_config(path, config_dict)
    ckpt = Checkpoint(path)

    config = AutoConfig.from_pretrained(path)
    if getattr(config, "quantization_config", None) is not None:
        # we do the quantisation ourselves; transformers would otherwise route to its quantizers
        del config.quantization_config
    dtype = dtype or _config_dtype(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    chosen = _replace_linears(model, qc, ckpt)
    tp_plan = None
    if mesh is not None:
        # checked on the global shapes; raises before any tensor is read
        tp_plan = sharding.plan(model, config, chosen, mesh.size(), mesh.get_local_rank())
        config = sharding.local_config(config, mesh.size())
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        chosen = _replace_linears(model, qc, ckpt)
        _check_local_heads(model, config)
    shards = tp_plan.layers if tp_plan is not None else {}

    quant_modules = {n: model.get_submodule(n) for n in chosen}
    quant_prefixes = tuple(n + "." for n in chosen)
    state = model.state_dict(keep_vars=True)
    tied = set()
    tie = getattr(config, "tie_word_embeddings", False) or getattr(getattr(config, "get_text_config", lambda: config)(),
                                                                   "tie_word_embeddings", False)
    out_emb = model.get_output_embeddings()
    out_name = next((n for n, m in model.named_modules() if m is out_emb), None) if out_emb is not None else None
    bar = _progress(len(ckpt.keys()), progress, f"loading {os.path.basename(os.path.normpath(path))}")
    used = set()
    nbytes = 0
    try:
        for name, scheme in chosen.items():
            n, mod = load_module(quant_modules[name], name, scheme, ckpt, device, dtype, shards.get(name))
            if mod is not quant_modules[name]:
                # a GPTQ layer whose zeros turned out symmetric (all 8): a module without qzeros
                prefix, _, attr = name.rpartition(".")
                setattr(model.get_submodule(prefix) if prefix else model, attr, mod)
            mine = [k for k in tensor_names(name, scheme) if k in ckpt]
            used.update(mine)
            nbytes += n
            if bar is not None:
                bar.update(len(mine))
        for key, meta in state.items():
            if key.startswith(quant_prefixes) and key.rpartition(".")[0] in chosen:
                continue
            if key not in ckpt:
                if tie and out_name is not None and key == f"{out_name}.weight":
                    tied.add(key)
                    continue
                raise CheckpointError(f"tensor {key} is missing from the checkpoint (expected "
                                      f"{tuple(meta.shape)} {meta.dtype})")
            layer = key.rpartition(".")[0]
            t = ckpt.get(key) if layer not in shards else sharding.ShardReader(ckpt, shards[layer], "float").get(key)
            if tuple(t.shape) != tuple(meta.shape):
                raise CheckpointError(f"tensor {key}: expected shape {tuple(meta.shape)}, found {tuple(t.shape)}")
            if meta.is_floating_point():
                if not t.is_floating_point():
                    raise CheckpointError(f"tensor {key}: expected a float tensor, found {t.dtype}")
                t = t.to(device=device, dtype=meta.dtype)
            else:
                t = t.to(device=device)
            _assign(model, key, t)
            used.add(key)
            nbytes += t.numel() * t.element_size()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    unused = [k for k in ckpt.keys() if k not in used and not k.endswith("rotary_emb.inv_freq")]
    stray = [k for k in unused if k.rpartition(".")[2] in ("qweight", "qzeros", "scales", "g_idx", "weight_packed",
                                                           "weight_scale", "weight_zero_point", "weight_shape")]
    if stray:
        raise CheckpointError(f"tensor {stray[0]} (and {len(stray) - 1} more) belongs to no quantised layer of "
                              f"the model built from config.json")
    if unused:
        log.warning("load_pretrained: %d checkpoint tensor(s) not used by the model, e.g. %s", len(unused), unused[:3])
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    if tp_plan is not None:
        _wrap_row_parallel(model, tp_plan, mesh)
    _materialize_remaining(model, device)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"tensors {left[:5]} were neither in the checkpoint nor initialisable")
    model.eval()
    model.requires_grad_(False)

    gen_path = os.path.join(path, "generation_config.json")
    if os.path.exists(gen_path):
        model.generation_config = GenerationConfig.from_pretrained(path)
    tok = None
    if tokenizer and any(os.path.exists(os.path.join(path, f)) for f in
                         ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        tok = transformers.AutoTokenizer.from_pretrained(path)
    model.awq_load_info = LoadInfo(quant_config=qc, quantized_layers=len(chosen),
                                   formats=sorted({s.layout for s in chosen.values()}),
                                   float_linears=[n for n, m in model.named_modules() if isinstance(m, nn.Linear)],
                                   bytes=nbytes, seconds=time.perf_counter() - t0, tied=sorted(tied))
    if tp_plan is not None:
        model.awq_load_info["tp"] = dict(
            world=tp_plan.world, rank=tp_plan.rank, mesh=mesh,
            column_parallel=sorted(n for n, s in tp_plan.layers.items() if s.style == sharding.COLWISE),
            row_parallel=sorted(n for n, s in tp_plan.layers.items() if s.style == sharding.ROWWISE),
            replicated=list(tp_plan.replicated))
    if compile:
        setup_compile(model, options)
    return model, tok


def setup_compile(model, options: dict | None = None):
    """Make ``generate()`` run ``backend="awq"``: static cache, then compile_config or a compiled forward."""
    from torch._dynamo import list_backends, register_backend
    from transformers import CompileConfig

    if "awq" not in list_backends(exclude_tags=()):
        # the entry point registers "awq" only when the package is installed (not when run from a source tree)
        from ..backend import awq_backend

        register_backend(awq_backend, name="awq")
    opts = dict(options or {})
    gc = model.generation_config
    gc.cache_implementation = "static"
    device = next(model.parameters()).device
    if device.type == "cuda":
        opts.setdefault("mode", "reduce-overhead")
        # torch.compile refuses mode= together with options=: the mode travels inside our options
        gc.compile_config = CompileConfig(backend="awq", mode=None, options=opts, fullgraph=False, dynamic=False)
    else:
        # transformers compiles generate() only on accelerators: compile the forward ourselves
        model.forward = torch.compile(model.forward, backend="awq", options=opts or None, dynamic=False)
    model.awq_compiled = True
    return model
