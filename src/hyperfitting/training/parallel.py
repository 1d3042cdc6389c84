"""Sharded training (FSDP2) and the one checkpoint format that works with or without it.

`train.parallelism=fsdp` shards each transformer block, and then the rest of the model, across
the processes with PyTorch's ``fully_shard``; every forward pass then all-gathers a block's
parameters just before it runs. We call ``fully_shard`` ourselves instead of going through
accelerate's FSDP plugin because accelerate enables FSDP only on accelerators, and the same
code path must run (and be tested) under torchrun on CPUs with the gloo backend.

Checkpoints use ``torch.distributed.checkpoint.state_dict``: full (unsharded) state dicts keyed
by parameter name, gathered to CPU on process 0, so a checkpoint written by N processes
resumes on M processes, sharded or not.
"""

from __future__ import annotations

import torch
from torch import nn

from hyperfitting.models.blocks import find_block_stack


def shard_model(model: nn.Module, mixed_precision: str = "no") -> None:
    """Shard ``model`` in place across the processes: one FSDP unit per block, plus the root (embeddings, norm, head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 compute, float32 gradient reduction and master weights (the sharded parameters stay float32).
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision == "bf16" else MixedPrecisionPolicy()
    for block in find_block_stack(model).blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def is_sharded(model: nn.Module) -> bool:
    """True while the parameters are FSDP shards: every forward is then a collective, taken by all processes together."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _options(trainable_only: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)


def full_model_state(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Unsharded parameters by name, on CPU. A collective under FSDP: every process calls it; process 0 gets the tensors."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(trainable_only))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter name (not position), unsharded; a collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(trainable_only=True))


def load_training_state(model: nn.Module, optimizer: torch.optim.Optimizer, trainable: dict, optimizer_state: dict) -> None:
    """Put a checkpoint's full state back, resharding it across the current processes if the model is sharded."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    # Frozen weights are not in the checkpoint, so the load is not strict; but every trainable weight
    # must come back, and nothing else may be there (a renamed key would otherwise resume from scratch).
    wanted = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    missing = sorted(wanted - set(trainable))  # before loading: the loader may consume the dictionary
    result = set_model_state_dict(model, trainable, options=StateDictOptions(full_state_dict=True, strict=False))
    if missing or result.unexpected_keys:
        from hyperfitting.errors import CheckpointError

        raise CheckpointError(
            f"The checkpoint does not match the model being trained: {len(missing)} trainable weights missing "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}) and {len(result.unexpected_keys)} unknown "
            f"({', '.join(sorted(result.unexpected_keys)[:3])}). It was made with another model or training method; "
            f"delete it (or the stage folder) to start this stage again.")
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))
