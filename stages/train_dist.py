"""Data parallelism for the training loop: DDP (default) or FSDP2 over the trainable parts.

Plain torch.distributed; the process group is set up by whoever runs the loop (Ray Train's
TorchTrainer: gloo on CPU, nccl on GPU). Nothing here imports Ray.

- ddp: the loss module is wrapped in DistributedDataParallel. The frozen prior is excluded from
  DDP's initial broadcast (every worker builds or loads the same prior), so only the trainable
  parts are synchronised: at SDXL scale that skips ~3.5B frozen parameters.
- fsdp: ``fully_shard`` (FSDP2) on each adaptor block, the adaptor, the connectors and E_dr,
  whichever are trained; the frozen prior stays replicated (bf16 on GPU). For the 1.2B-parameter
  adaptor this cuts the optimizer state per GPU by the world size. Checkpoints gather full state
  dicts on rank 0 (``torch.distributed.checkpoint.state_dict``), so their layout is the same.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_mean(value: float, device: torch.device) -> float:
    """The mean of a scalar over all workers (the loss every worker logs is the same number)."""
    _, n = world()
    if n == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / n


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def wrap(objective: nn.Module, parts: Sequence[nn.Module], strategy: str, device: torch.device) -> nn.Module:
    """The module to call in training: ``objective`` wrapped for data parallelism (or as is)."""
    _, n = world()
    if n == 1 and strategy == "ddp":
        return objective
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for part in parts:
            blocks = _blocks(part)
            for block in blocks:
                fully_shard(block)
            if any(p.requires_grad for p in part.parameters(recurse=False)) or not blocks or hasattr(part, "down_blocks"):
                fully_shard(part)
        return objective
    from torch.nn.parallel import DistributedDataParallel as DDP

    frozen = [name for name, p in objective.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in objective.named_buffers()]
    DDP._set_params_and_buffers_to_ignore_for_model(objective, frozen)
    return DDP(objective, device_ids=[device.index] if device.type == "cuda" else None)


def _blocks(part: nn.Module) -> list[nn.Module]:
    """Sub-modules sharded on their own (one all-gather each): the adaptor's down and mid blocks;
    each connector (the UNet forward calls them one by one, never the container's forward)."""
    out: list[nn.Module] = []
    for attr in ("down_blocks", "sft", "cross_attn"):
        out.extend(getattr(part, attr, None) or [])
    for attr in ("mid_block", "sft_mid"):
        if getattr(part, attr, None) is not None:
            out.append(getattr(part, attr))
    return out


def full_state_dict(module: nn.Module, strategy: str) -> dict[str, torch.Tensor]:
    """A plain (unsharded, CPU) state dict of ``module``, on rank 0 (empty elsewhere under FSDP)."""
    if strategy != "fsdp":
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str) -> dict[str, Any]:
    if strategy != "fsdp":
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: Optional[dict[str, Any]],
                         strategy: str) -> None:
    if state is None:
        return
    if strategy != "fsdp":
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
