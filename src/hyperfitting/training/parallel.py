"""How the processes share one training run: a strategy object that the recipe calls at fixed points.

`Replicated`: every process holds the whole model. One process, or data parallel: accelerate
wraps the model in DDP, which averages the gradients of the processes' shares of each batch.
`Sharded` (`train.parallelism=fsdp`): PyTorch FSDP2 shards each transformer block, then the
rest of the model, across the processes; every forward pass all-gathers a block's parameters
just before it runs, so every process must run the same forward passes (``lockstep``). We call
``fully_shard`` ourselves instead of going through accelerate's FSDP plugin because accelerate
enables FSDP only on accelerators, and the same code path must run (and be tested) under
torchrun on CPUs with the gloo backend.

Checkpoints (one per epoch, replaced atomically) come in two formats, and either strategy
resumes from either, on any number of processes:

- ``checkpoint.pt`` (replicated runs): the trainable weights and the optimizer state keyed by
  parameter name, unsharded, written by process 0;
- ``checkpoint/`` (sharded runs): a ``torch.distributed.checkpoint`` folder that each process
  writes its own shards into, so nothing is gathered (an 8B full fine-tune would otherwise
  collect ~96 GB of weights and Adam state in process 0's RAM every epoch). Loading reshards
  it to the processes that load it, one or many.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from hyperfitting.errors import CheckpointError
from hyperfitting.models.blocks import find_block_stack

CHECKPOINT = "checkpoint.pt"
SHARDED_CHECKPOINT = "checkpoint"
PROGRESS = "progress.json"


class Replicated:
    """Every process holds the whole model: one process, or data parallel (DDP through accelerate)."""

    name = "replicated"
    lockstep = False
    """True when every forward pass is a collective that all processes must take together."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.processes = accelerator.num_processes
        self.shards = 1

    def describe(self) -> str:
        return "one process" if self.processes == 1 else f"data parallel over {self.processes} processes (DDP)"

    def place(self, model: nn.Module) -> None:
        """Put the model on this process's device, before the trunk cache is built through it."""
        model.to(self.accelerator.device)

    def trunk_cache_refused(self) -> str | None:
        """Why the trunk cache cannot be used under this strategy, or None."""
        return None

    def prepare(self, model: nn.Module, make_optimizer):
        """(model as the loop calls it, optimizer as the loop steps it, bare model, bare optimizer)."""
        if any(p.is_meta for p in model.parameters()):
            raise ValueError(
                "This model has no weights (it was built on the meta device for FSDP); load it without "
                "sharded_training."
            )
        optimizer = make_optimizer(model)
        model, optimizer = self.accelerator.prepare(model, optimizer)
        return model, optimizer, self.accelerator.unwrap_model(model), getattr(optimizer, "optimizer", optimizer)

    def batch_share(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's rows of one global batch (every process sees the same global batches)."""
        return batch[self.accelerator.process_index :: self.processes]

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The trainable weights by name, unsharded, on process 0 (None elsewhere). Every process calls it."""
        return full_model_state(model, trainable_only=True) if self.accelerator.is_main_process else None

    def save_checkpoint(self, model: nn.Module, optimizer: torch.optim.Optimizer, progress: dict, folder: Path) -> None:
        """One file by process 0: the trainable weights and optimizer state keyed by name, and ``progress`` (log,
        epoch)."""
        if self.accelerator.is_main_process:
            state = {
                "trainable": full_model_state(model, trainable_only=True),
                "optimizer": full_optimizer_state(model, optimizer),
                **progress,
            }
            save_atomically(state, folder / CHECKPOINT)
            _remove_sharded(folder)  # a sharded run resumed here: its checkpoint is now the older one

    def load_checkpoint(self, model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> dict | None:
        """Restore the latest checkpoint in ``folder`` (either format) and return its progress; None when there is
        none."""
        sharded = _sharded_checkpoint(folder)
        if sharded is not None:
            return load_sharded_checkpoint(model, optimizer, sharded)
        if (folder / CHECKPOINT).exists():
            state = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)
            load_training_state(model, optimizer, state.pop("trainable"), state.pop("optimizer"))
            return state
        return None


class Sharded(Replicated):
    """FSDP2: parameters, gradients and optimizer state split across the processes."""

    name = "fsdp"
    lockstep = True

    def __init__(self, accelerator, mixed_precision: str = "no"):
        super().__init__(accelerator)
        self.shards = self.processes
        self.mixed_precision = mixed_precision

    def describe(self) -> str:
        return f"sharded over {self.processes} processes (FSDP2)"

    def place(self, model: nn.Module) -> None:
        pass  # fully_shard moves each block to the device as it shards it: the whole model never sits there

    def trunk_cache_refused(self) -> str | None:
        # Swapping FSDP-managed blocks for pass-throughs would bypass their all-gather hooks.
        return "The trunk cache is off under train.parallelism=fsdp: every block runs in every step."

    def prepare(self, model: nn.Module, make_optimizer):
        # Process 0 holds the weights; the others may hold only the architecture (models/loading.py: sharded_training).
        on_meta = any(p.is_meta for p in model.parameters())
        weights = {} if on_meta else model.state_dict()  # references to process 0's tensors, not a copy
        any_on_meta = torch.tensor(int(on_meta), device=self.accelerator.device)
        torch.distributed.all_reduce(any_on_meta, op=torch.distributed.ReduceOp.MAX)
        shard_model(model, self.mixed_precision)  # before the optimizer: it must hold the shards
        if int(any_on_meta):
            broadcast_weights(model, weights, on_meta, self.accelerator.device)
        optimizer = make_optimizer(model)
        # FSDP reduces the gradients itself; accelerate only handles accumulation
        optimizer = self.accelerator.prepare(optimizer)
        return model, optimizer, model, getattr(optimizer, "optimizer", optimizer)

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        return full_model_state(model, trainable_only=True)  # a collective: every process gathers, process 0 keeps

    def save_checkpoint(self, model: nn.Module, optimizer: torch.optim.Optimizer, progress: dict, folder: Path) -> None:
        save_sharded_checkpoint(model, optimizer, progress, folder, self.accelerator)


def make_strategy(accelerator, parallelism: str, mixed_precision: str = "no") -> Replicated:
    """``train.parallelism`` on this launch: fsdp shards only when there are processes to shard over."""
    if parallelism == "fsdp" and accelerator.num_processes > 1:
        return Sharded(accelerator, mixed_precision)
    return Replicated(accelerator)


def shard_model(model: nn.Module, mixed_precision: str = "no") -> None:
    """Shard ``model`` in place across the processes: one FSDP unit per block, plus the root (embeddings, norm,
    head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 compute, float32 gradient reduction and master weights (the sharded parameters stay float32).
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision == "bf16"
        else MixedPrecisionPolicy()
    )
    for block in find_block_stack(model).blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def broadcast_weights(model: nn.Module, weights: dict, on_meta: bool, device: torch.device) -> None:
    """Fill every process's shards with process 0's ``weights`` (its full state dict; the others pass {}), and copy
    process 0's buffers (rotary frequencies, which are in no state dict) to the others."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if on_meta:
        model.to_empty(device=device)  # storage for the shards and buffers, filled next
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)


def is_sharded(model: nn.Module) -> bool:
    """True while the parameters are FSDP shards: every forward is then a collective, taken by all processes
    together."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def save_atomically(state: dict, path: Path) -> None:
    """torch.save through a Python file object, so a full disk surfaces as an OSError that atomic_path names
    (torch's own file writer would raise a bare RuntimeError)."""
    from hyperfitting.rundir import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


def _options(trainable_only: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)


def full_model_state(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Unsharded parameters by name, on CPU. A collective under FSDP: every process calls it; process 0 gets the
    tensors."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(trainable_only))
    if trainable_only:
        # A head tied to a frozen embedding came back under its second name (lm_head.weight): 113 MB of frozen
        # weights in every LoRA checkpoint of SmolLM2-135M, beside 6 MB of adapter.
        frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
        state = {name: tensor for name, tensor in state.items() if name not in frozen}
    return state


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter name (not position), unsharded; a collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(trainable_only=True))


def _mismatch(missing: list[str], unknown: list[str]) -> CheckpointError:
    return CheckpointError(
        f"The checkpoint does not match the model being trained: {len(missing)} trainable weights missing "
        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}) and {len(unknown)} unknown "
        f"({', '.join(unknown[:3])}). It was made with another model or training method; "
        f"delete it (or the stage folder) to start this stage again."
    )


def load_training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, trainable: dict, optimizer_state: dict
) -> None:
    """Put a full (unsharded) checkpoint back, resharding it across the current processes if the model is sharded."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    # Frozen weights are not in the checkpoint, so the load is not strict; but every trainable weight
    # must come back, and nothing else may be there (a renamed key would otherwise resume from scratch).
    wanted = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    missing = sorted(wanted - set(trainable))  # before loading: the loader may consume the dictionary
    result = set_model_state_dict(model, trainable, options=StateDictOptions(full_state_dict=True, strict=False))
    if missing or result.unexpected_keys:
        raise _mismatch(missing, sorted(result.unexpected_keys))
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))


# --------------------------------------------------------------------------- sharded checkpoints


def _sharded_checkpoint(folder: Path) -> Path | None:
    """The newest complete sharded checkpoint in ``folder``: ``checkpoint/``, or the one it was replacing when a
    run was killed between the two renames of a save."""
    for candidate in (folder / SHARDED_CHECKPOINT, folder / (SHARDED_CHECKPOINT + ".old")):
        if (candidate / PROGRESS).exists():
            return candidate
    return None


def _remove_sharded(folder: Path) -> None:
    for stale in (SHARDED_CHECKPOINT, SHARDED_CHECKPOINT + ".old", SHARDED_CHECKPOINT + ".partial"):
        shutil.rmtree(folder / stale, ignore_errors=True)


def remove_checkpoints(folder: Path) -> None:
    """Delete every training checkpoint in ``folder`` (process 0): a saved model or a finished control supersedes
    them."""
    (folder / CHECKPOINT).unlink(missing_ok=True)
    _remove_sharded(folder)


def _sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    return {"model": model_state, "optimizer": optimizer_state}


def _distributed() -> bool:
    """A process group is up: the checkpoint is written and read by all its processes together."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def save_sharded_checkpoint(
    model: nn.Module, optimizer: torch.optim.Optimizer, progress: dict, folder: Path, accelerator=None
) -> None:
    """Every process writes its own shards with ``torch.distributed.checkpoint``; process 0 adds ``progress`` and swaps
    the folder in. A kill at any point leaves the previous checkpoint readable (see :func:`_sharded_checkpoint`)."""
    import torch.distributed.checkpoint as dcp

    main = accelerator is None or accelerator.is_main_process
    partial, current, old = (folder / (SHARDED_CHECKPOINT + suffix) for suffix in (".partial", "", ".old"))
    if main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()  # the folder is empty before anyone writes into it
    dcp.save(_sharded_state(model, optimizer), checkpoint_id=partial, no_dist=not _distributed())
    if accelerator is not None:
        accelerator.wait_for_everyone()  # every shard is written
    if main:
        (partial / PROGRESS).write_text(json.dumps(progress))  # last: it marks the folder complete
        shutil.rmtree(old, ignore_errors=True)
        if current.exists():
            current.rename(old)
        partial.rename(current)
        shutil.rmtree(old, ignore_errors=True)
        (folder / CHECKPOINT).unlink(missing_ok=True)


def load_sharded_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> dict:
    """Read a sharded checkpoint into ``model`` and ``optimizer``, resharded to the current processes (or none)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = _sharded_state(model, optimizer)
    # The checkpoint's index names what it holds: a trainable weight it lacks is named before anything is read.
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    missing = sorted(name for name in state["model"] if f"model.{name}" not in saved)
    unknown = sorted(
        key.removeprefix("model.")
        for key in saved
        if key.startswith("model.") and key.removeprefix("model.") not in state["model"]
    )
    if missing or unknown:
        raise _mismatch(missing, unknown)
    dcp.load(state, checkpoint_id=path, no_dist=not _distributed())
    # Not strict: the frozen weights are not in the checkpoint; every trainable one was (checked above).
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(ignore_frozen_params=True, strict=False),
    )
    return json.loads((path / PROGRESS).read_text())
