"""Thin helpers over torch.distributed. Processes are started by `torchrun` (never by bertkit):
it sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; we read them, pick NCCL on GPUs and gloo
on CPU, and expose the few collectives the trainer needs. Only rank 0 logs and saves.

Two ways to spread a model: DistributedDataParallel (every rank holds all weights; the trainer's
default) and FSDP2 (`wrap_fsdp`: each rank holds 1/world of every weight and of the optimizer
state, gathered layer by layer for forward and backward). FSDP2 runs on gloo too, so the CPU tests
exercise the same code path as NCCL on GPUs.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """The first process on its machine (LOCAL_RANK 0): the one that writes a per-machine cache."""
        return self.local_rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(flag: str, local_rank: int = 0) -> torch.device:
    """`--device auto|cpu|cuda|cuda:N` -> torch.device; under torchrun, cuda means cuda:LOCAL_RANK."""
    if flag == "auto":
        flag = "cuda" if torch.cuda.is_available() else "cpu"
    if flag.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {flag}: no CUDA device is visible; use --device cpu")
        if flag == "cuda":
            flag = f"cuda:{local_rank}"
    elif flag != "cpu":
        raise ValueError(f"--device {flag!r}: expected auto, cpu, cuda or cuda:N")
    return torch.device(flag)


def setup(device_flag: str = "auto", timeout_minutes: int = 60) -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); otherwise one process.
    The long timeout lets rank 0 tokenize and cache a large data set while the others wait."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_flag, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = datetime.timedelta(minutes=timeout_minutes)
        store = restart_safe_store(world, timeout)
        if store is None:
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def restart_safe_store(world: int, timeout: datetime.timedelta) -> dist.Store | None:
    """The torchrun agent's key-value store, with this restart's keys apart from earlier ones; None
    where that is not needed (or not known to be safe): torch then joins the group as usual.

    torchrun --max-restarts restarts the workers against the same store (static and c10d
    rendezvous alike, torch 2.13), and the new process group read the dead workers' addresses from
    it: the restarted 2-process CPU job failed at once ("connectFullMesh failed ... Connection
    refused") or hung in gloo's connect until the process-group timeout (60 minutes). On one machine
    one agent starts every worker, so its restart count names the attempt the same way for all."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or int(os.environ.get("LOCAL_WORLD_SIZE", "0")) != world:
        return None  # several machines: each agent counts its own restarts, so the counts may differ
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"bertkit/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order (a list of one item without a process group)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


@contextlib.contextmanager
def main_process_first(info: DistInfo) -> Iterator[None]:
    """The first process of each machine (LOCAL_RANK 0) runs the block first (e.g. tokenize and
    write a cache), then the others run it (reading the cache) — so preprocessing happens once per
    machine, not N times. Per machine, not only on rank 0: a cache on a machine's own disk is one
    that rank 0 (on another machine) can never fill."""
    if info.enabled and not info.is_local_main:
        barrier()
    yield
    if info.enabled and info.is_local_main:
        barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- FSDP2 (fully_shard) ----------------------------------------------------------------------------
def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def wrap_fsdp(model: nn.Module, info: DistInfo) -> nn.Module:
    """Shard `model` in place with FSDP2 over all ranks and return it (same object, FSDP class).

    Each encoder layer is its own unit, so only one layer's full weights exist at a time during
    forward/backward; the embeddings, pooler and heads form the root unit (they hold the tied MLM
    decoder, which must stay in the same unit as the word embeddings). Call it after `model.to(device)`
    and BEFORE building the optimizer: the optimizer must see the sharded (DTensor) parameters.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from bertkit.modeling.bert import BertLayer

    if not info.enabled:
        raise ValueError("--fsdp shards the model across processes, but this is a single process; "
                         "start with `torchrun --nproc-per-node N -m bertkit ...` (N >= 2) or drop --fsdp")
    if not dist.is_initialized():
        raise RuntimeError("wrap_fsdp: the process group is not initialised; call distributed.setup() first")
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    layers = [m for m in model.modules() if isinstance(m, BertLayer)]
    if not layers:
        raise ValueError(f"wrap_fsdp: {type(model).__name__} has no BertLayer to shard")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@contextlib.contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP2) of the backward passes inside:
    an accumulation micro-step only adds to local gradients; the last micro-step syncs the sum."""
    if is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


def to_local_scalar(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor from what clip_grad_norm_ returns (a replicated DTensor under FSDP2)."""
    full = getattr(value, "full_tensor", None)
    return full() if full is not None else value


def full_state_dict(model: nn.Module, info: DistInfo) -> dict[str, torch.Tensor]:
    """The unsharded state dict as CPU tensors on rank 0 (an empty dict on the other ranks).

    A collective under FSDP2: every rank must call it. Parameters are gathered one at a time to
    rank 0's CPU memory, so no GPU ever holds the full model at once."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if info.is_main else {}
    inner = getattr(model, "module", model)  # DDP
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    if not info.is_main:
        return {}
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an unsharded state dict (as `full_state_dict` returns, or a plain run's) into `model`;
    under FSDP2 each rank keeps its own shard of it. Every rank passes the whole dict."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
        return
    inner = getattr(model, "module", model)
    getattr(inner, "_orig_mod", inner).load_state_dict(state)


# A checkpoint's optimizer state is always `optimizer.state_dict()` of an unsharded run: parameters
# numbered by their position in the param groups. Under FSDP2 it is gathered to and scattered from
# that form, so a checkpoint resumes with or without --fsdp and on any number of processes.
def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> dict[str, Any]:
    """The optimizer's unsharded state dict on rank 0 (CPU tensors under FSDP2; {} on other ranks
    there). A collective under FSDP2: every rank must call it."""
    if not is_fsdp(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not info.is_main:
        return {}
    names = [name for group in by_name["param_groups"] for name in group["params"]]
    position = {name: i for i, name in enumerate(names)}
    return {"state": {position[name]: value for name, value in by_name["state"].items()},
            "param_groups": [{**group, "params": [position[name] for name in group["params"]]}
                             for group in by_name["param_groups"]]}


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load what `full_optimizer_state` returned (or a plain run's `optimizer.state_dict()`); under
    FSDP2 each rank keeps its shard. Every rank passes the whole dict."""
    if not is_fsdp(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    if len(names) != sum(len(group["params"]) for group in state["param_groups"]):
        raise ValueError(f"the checkpoint's optimizer holds {sum(len(g['params']) for g in state['param_groups'])} "
                         f"parameters, this model {len(names)}")
    by_name = {"state": {names[i]: value for i, value in state["state"].items()},
               "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                for group in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def full_model(model: nn.Module, info: DistInfo) -> nn.Module | None:
    """An unsharded CPU copy of an FSDP2 model on rank 0 (None on the others), for `save_pretrained`
    and other code that expects ordinary tensors. A collective: every rank must call it.

    The copy is built on the meta device and takes the gathered tensors by assignment, so rank 0
    needs one full CPU copy of the weights, not two."""
    state = full_state_dict(model, info)
    if not info.is_main:
        return None
    from bertkit.modeling.checkpoints import plain_class

    cls = plain_class(model)
    with torch.device("meta"):
        plain = cls(model.config)
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise RuntimeError(f"full_model: gathered keys {unexpected[:5]} are not in {cls.__name__}")
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()  # the tied MLM decoder is not a separate key
    # Non-persistent buffers are not in any state dict; FSDP2 leaves buffers unsharded, so copy them.
    sharded_buffers = dict(model.named_buffers())
    for name, buf in list(plain.named_buffers()):
        if buf.is_meta:
            owner_name, _, attr = name.rpartition(".")
            owner = plain.get_submodule(owner_name) if owner_name else plain
            owner.register_buffer(attr, sharded_buffers[name].detach().cpu(),
                                  persistent=attr not in owner._non_persistent_buffers_set)
    still_meta = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if still_meta:
        raise RuntimeError(f"full_model: {still_meta[:5]} were not gathered (missing keys: {missing[:5]})")
    return plain.eval()
