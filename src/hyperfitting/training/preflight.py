"""Refuse a training run that cannot fit, before hours are spent: memory (weights, optimizer state, trunk cache,
activations, the per-epoch checkpoint as it passes through host RAM) and disk (an on-disk trunk cache, the checkpoint,
the saved model)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from hyperfitting.errors import HyperfitError


class ResourceError(HyperfitError):
    """The run would not fit in memory or on disk."""


@dataclass
class Estimate:
    weights: int
    optimizer: int
    trunk_cache_memory: int
    trunk_cache_disk: int
    activations: int
    saved_output: int
    checkpoint: int = 0
    """The per-epoch checkpoint on disk: trainable weights and Adam state, whole."""
    checkpoint_memory: int = 0
    """Host RAM it takes per process while it is written: whole in process 0 (a replicated run gathers it), one
    shard per process under FSDP (each process writes its own shards)."""

    @property
    def memory(self) -> int:
        return self.weights + self.optimizer + self.trunk_cache_memory + self.activations

    @property
    def memory_to_come(self) -> int:
        """What training adds to the weights, which are already loaded when the check runs."""
        return self.optimizer + self.trunk_cache_memory + self.activations

    @property
    def disk(self) -> int:
        # The checkpoint is replaced atomically: the new file is written beside the old before the rename.
        return self.trunk_cache_disk + self.saved_output + 2 * self.checkpoint


def estimate(
    model,
    trainable_parameters: int,
    first_trainable_block: int,
    n_blocks_total: int,
    use_cache: bool,
    train_blocks: int,
    heldout_blocks: int,
    block_tokens: int,
    batch_size: int,
    max_cache_gb: float,
    shards: int = 1,
) -> Estimate:
    """Per process: ``batch_size`` is this process's share of a batch; ``shards`` > 1 when FSDP splits weights and
    optimizer state."""
    hidden = getattr(model.config, "hidden_size", None) or model.config.n_embd
    vocabulary = model.config.vocab_size
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) // shards
    optimizer = trainable_parameters * 4 * 3 // shards  # gradient + Adam's two moments, fp32
    cache = (train_blocks + heldout_blocks) * block_tokens * hidden * 4 if use_cache else 0
    cache_in_memory = cache if cache <= max_cache_gb * 1e9 else 0
    trained_blocks = n_blocks_total - first_trainable_block
    # Per token: ~34 saved values of width `hidden` per trained block, logits and their gradient (fp32).
    activations = batch_size * block_tokens * (trained_blocks * 34 * hidden + 3 * vocabulary) * 4
    saved = trainable_parameters * 4 if trainable_parameters < weights * shards // 8 else weights * shards
    checkpoint = trainable_parameters * 4 * 3  # fp32 weights and Adam's two moments, whole
    return Estimate(
        weights,
        optimizer,
        cache_in_memory,
        cache - cache_in_memory,
        activations,
        saved,
        checkpoint,
        checkpoint // shards,
    )


def check_fits(need: Estimate, device: torch.device, run_dir: Path, weights_loaded: bool = True) -> None:
    """``weights_loaded``: the weights already sit on ``device`` (false when FSDP will place its shards there)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        where = f"GPU {device}"
    else:
        import psutil

        free, where = psutil.virtual_memory().available, "RAM"
    gib = 1024**3
    to_come = (
        need.memory_to_come
        + (0 if weights_loaded else need.weights)
        + (need.checkpoint_memory if device.type == "cpu" else 0)
    )
    if to_come > free:
        raise ResourceError(
            f"Beyond the weights already loaded ({need.weights / gib if weights_loaded else 0:.1f} GiB), this run "
            "needs about "
            f"{to_come / gib:.1f} GiB more of {where} "
            f"({'' if weights_loaded else f'weight shards {need.weights / gib:.1f}, '}optimizer state "
            f"{need.optimizer / gib:.1f}, trunk cache {need.trunk_cache_memory / gib:.1f}, "
            f"activations {need.activations / gib:.1f}) but {free / gib:.1f} GiB are free. Lower train.batch_size or "
            f"data.block_tokens, train LoRA instead of every parameter, shard over more processes with "
            f"train.parallelism=fsdp, or lower train.trunk_cache_max_memory_gb to keep the cache on disk."
        )
    if device.type != "cpu":  # the checkpoint passes through host RAM, whatever the device
        import psutil

        host_free = psutil.virtual_memory().available
        if need.checkpoint_memory > host_free:
            raise ResourceError(
                f"Each epoch's checkpoint copies the trainable weights and optimizer state into host RAM: about "
                f"{need.checkpoint_memory / gib:.1f} GiB per process, but {host_free / gib:.1f} GiB are free. Train "
                "LoRA instead of every "
                "parameter, shard over more processes with train.parallelism=fsdp (each writes only its shards), or "
                "run on a machine with more RAM."
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    free_disk = shutil.disk_usage(run_dir).free
    if need.disk > free_disk:
        raise ResourceError(
            f"This run needs about {need.disk / gib:.1f} GiB of disk in {run_dir} (trunk cache "
            f"{need.trunk_cache_disk / gib:.1f}, "
            f"saved model or adapter {need.saved_output / gib:.1f}, checkpoint while it is replaced "
            f"{2 * need.checkpoint / gib:.1f}) but {free_disk / gib:.1f} GiB are free. Free some space or "
            f"choose another run_dir."
        )
