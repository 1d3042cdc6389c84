"""Hyperfitting: train to near-zero loss on a small set of blocks, logging the dynamics per epoch.

A recipe written out (no Trainer) to read top to bottom: :func:`_set_up`, then epochs of
:func:`_one_epoch` and :func:`_checkpoint` until the target loss, then :func:`save_trained`.
How the processes share the work (one process, data parallel, FSDP2) is one strategy object
(:mod:`hyperfitting.training.parallel`) that the recipe calls at fixed points, not branches
through the loop. `accelerate` supplies the few calls that let the same loop run on one CPU or
under `accelerate launch`/`torchrun` (`prepare`, `accumulate`, `backward`, `is_main_process`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from hyperfitting.config import RunConfig
from hyperfitting.errors import CheckpointError, ConfigError, DivergenceError
from hyperfitting.rundir import write_jsonl
from hyperfitting.seeding import seeded
from hyperfitting.models.blocks import find_block_stack
from hyperfitting.progress import progress_bar
from hyperfitting.training import preflight
from hyperfitting.training.methods import TrainablePlan, prepare_for_training
from hyperfitting.training.parallel import Replicated, full_model_state, is_sharded, make_strategy, save_atomically
from hyperfitting.training.trunk_cache import TrunkCache, start_at_block

# The trainable weights at the epoch of lowest held-out loss: the same run stopped before it hyperfitted, the
# non-hyperfitting control of the geometry analysis (is the expansion specific to hyperfitting?).
LOWEST_HELDOUT = "lowest_heldout.pt"


@dataclass
class TrainResult:
    model: torch.nn.Module
    plan: TrainablePlan
    log: list[dict]
    wall_seconds: float
    trunk_cache_seconds: float
    precision: str = "no"
    """accelerate's mixed_precision the steps ran under: no (float32) or bf16 autocast."""


def epoch_order(n_blocks: int, seed: int, epoch: int) -> torch.Tensor:
    """The block order of one epoch, a function of (seed, epoch) only, so a resumed run replays it."""
    return torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class BlockLoss:
    """Mean next-token loss of token blocks, through the full model or from the trunk cache."""

    def __init__(self, model, cache: TrunkCache | None):
        self.model = model
        self.cache = cache

    def __call__(self, ids: torch.Tensor, cached: torch.Tensor | None) -> torch.Tensor:
        device = next(self.model.parameters()).device
        ids = ids.to(device)
        cached = cached.to(device) if cached is not None else None
        if cached is None:
            return self.model(input_ids=ids, labels=ids, use_cache=False).loss
        with start_at_block(self.model, self.cache.first_block) as feed:
            feed(cached)
            return self.model(input_ids=ids, labels=ids, use_cache=False).loss


@torch.no_grad()
def mean_block_loss(loss_fn: BlockLoss, blocks: torch.Tensor, cache: TrunkCache | None, batch_size: int) -> float:
    if len(blocks) == 0:
        return float("nan")
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        index = torch.arange(start, min(start + batch_size, len(blocks)))
        loss = loss_fn(blocks[index], cache[index] if cache is not None else None)
        total += float(loss) * len(index)
        count += len(index)
    return total / count


def divergence(log: list[dict], factor: float, patience: int) -> str | None:
    """Why the training loss in ``log`` (epoch 0 first) counts as diverged, or None.

    Either it rose above ``factor`` times its starting value, or it stayed above its starting
    value for ``patience`` epochs in a row (a run that goes nowhere is no evidence either).
    """
    start, last = log[0]["train_loss"], log[-1]
    if last["train_loss"] > factor * start:
        return (
            f"the loss rose from {start:.3f} to {last['train_loss']:.3f} in epoch {last['epoch']} "
            f"(more than train.diverge_factor={factor:g} times the start)"
        )
    recent = log[1:][-patience:]
    if len(recent) == patience and all(row["train_loss"] > start for row in recent):
        return (
            f"the loss stayed above its starting value {start:.3f} for {patience} epochs in a row "
            f"(epochs {recent[0]['epoch']}-{recent[-1]['epoch']}; train.diverge_patience={patience})"
        )
    return None


def check_batch_split(n_blocks: int, batch_size: int, processes: int, accumulation: int) -> None:
    """Refuse, up front, a split that would make processes disagree or an epoch end inside an accumulation group.

    Every process must take an equal, non-empty share of every batch (the last, short one too): a
    share of another size weighs its rows differently in the averaged gradient, and an empty
    share has a NaN loss. Every epoch must end on an optimizer step, so that a checkpoint (taken
    at epoch ends) never holds half-accumulated gradients and a resumed run takes the same steps.
    """
    last = n_blocks % batch_size
    if batch_size % processes or (last and last % processes):
        # With the batch a multiple of the processes, the last batch splits evenly exactly when the blocks do.
        fix = (
            f"Use a train.batch_size that is a multiple of {processes}."
            if n_blocks % processes == 0
            else f"Use data.train_blocks (and study.controls_train_blocks) a multiple of {processes}, and "
            "train.batch_size too."
        )
        raise ConfigError(
            f"{n_blocks} training blocks in batches of train.batch_size={batch_size} cannot be split evenly over "
            f"{processes} processes ({'the batch' if batch_size % processes else f'the last batch of {last}'} does not "
            "divide "
            f"by {processes}). {fix}"
        )
    batches = -(-n_blocks // batch_size)
    if batches % accumulation:
        raise ConfigError(
            f"train.grad_accumulation={accumulation} does not divide the {batches} batches of an epoch, so an epoch "
            "would end "
            f"inside an accumulation group. Use train.grad_accumulation in "
            f"{[g for g in range(1, batches + 1) if batches % g == 0]} or change train.batch_size."
        )


def set_adapter_dropout(model, active: bool) -> None:
    """Switch the LoRA adapters' dropout on or off. The base model stays in eval mode throughout: its own
    dropout (GPT-2's, say) would make the trunk cache inexact and is not part of the paper's recipe."""
    for name, module in model.named_modules():
        if name.endswith("lora_dropout"):
            module.train(active)


def hyperfit(
    model,
    train_blocks: torch.Tensor,
    heldout_blocks: torch.Tensor,
    config: RunConfig,
    checkpoint_dir: str | Path | None = None,
    probe: Callable[..., dict] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_blocks`` (N, T) as ``config.train`` says; resume from ``checkpoint_dir`` if a
    checkpoint is there.

    ``checkpoint_dir=None``: no folder of the caller's is written; checkpoints and the trunk cache live in a temporary
    folder removed when training ends, so there is nothing to resume from (one process only: under several, every
    process must see the same folder).

    ``probe(model, lockstep=...) -> dict`` runs at epoch 0 and every ``diversity_every`` epochs (e.g.
    greedy diversity on a fixed prompt subset); its numbers join that epoch's log row. ``lockstep``
    is true while the model is FSDP-sharded: every process must then run the same forward passes.
    ``on_epoch(row)`` receives each epoch's log row as it is written (process 0; experiment tracking).
    Training is seeded with ``train.seed``; the caller's random state is the same afterwards.
    """
    if checkpoint_dir is None:
        import tempfile

        from hyperfitting.distributed import process_state

        if process_state().num_processes > 1:
            raise ConfigError(
                "hyperfit(..., checkpoint_dir=None) runs in one process: under several, pass a folder every process "
                "sees (the run folder's train/)."
            )
        with tempfile.TemporaryDirectory(prefix="hyperfit-") as scratch:
            return hyperfit(model, train_blocks, heldout_blocks, config, scratch, probe, on_epoch)
    with seeded(config.train.seed):
        return _hyperfit(model, train_blocks, heldout_blocks, config, Path(checkpoint_dir), probe, on_epoch)


@dataclass
class _Run:
    """Everything one training run holds between its steps (set up once by :func:`_set_up`)."""

    args: object
    accelerator: object
    strategy: Replicated
    precision: str
    plan: TrainablePlan
    model: torch.nn.Module
    """As the steps call it (DDP-wrapped under data parallel)."""
    optimizer: object
    bare_model: torch.nn.Module
    bare_optimizer: torch.optim.Optimizer
    train_loss: BlockLoss
    heldout_loss: BlockLoss
    train_cache: TrunkCache | None
    heldout_cache: TrunkCache | None
    cache_seconds: float
    checkpoint_dir: Path
    checkpoint_cost: float = 0.0
    """Seconds the last checkpoint took to write."""
    trained_since_checkpoint: float = 0.0
    """Seconds of training epochs since it."""


def _hyperfit(
    model, train_blocks, heldout_blocks, config: RunConfig, checkpoint_dir: Path, probe, on_epoch=None
) -> TrainResult:
    """The recipe, top to bottom: set up, resume, then epochs (one epoch, measure, checkpoint) until the target."""
    args = config.train
    run = _set_up(model, train_blocks, heldout_blocks, config, checkpoint_dir)
    say = run.accelerator.print
    is_main = run.accelerator.is_main_process

    def measure(epoch: int, train_loss: float, seconds: float, tokens: int) -> dict:
        # The held-out loss at the start, every heldout_every epochs, and after the last epoch (the cap, or the target
        # reached).
        last = epoch == args.epochs or (epoch > 0 and args.until_loss is not None and train_loss <= args.until_loss)
        due = epoch == 0 or last or (args.heldout_every and epoch % args.heldout_every == 0)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "heldout_loss": mean_block_loss(run.heldout_loss, heldout_blocks, run.heldout_cache, args.batch_size)
            if due
            else math.nan,
            "tokens_per_second": tokens / seconds if seconds > 0 else None,
            "epoch_seconds": seconds,
            "processes": run.strategy.processes,
        }
        if probe is not None and args.diversity_every and (epoch % args.diversity_every == 0 or epoch == args.epochs):
            row.update(probe(run.bare_model, lockstep=run.strategy.lockstep))
        return row

    # Resume: the latest checkpoint holds the trainable weights, the optimizer state and the log so far.
    progress = run.strategy.load_checkpoint(run.bare_model, run.bare_optimizer, checkpoint_dir)
    log: list[dict] = progress["log"] if progress else []
    recipe = _recipe(args)
    if progress and {key: progress.get("recipe", recipe)[key] for key in recipe} != recipe:
        # the optimizer state would carry the checkpoint's rate on, under this run's name
        raise CheckpointError(
            f"The checkpoint in {checkpoint_dir} was trained with {progress['recipe']}, this run asks for {recipe}. "
            "Delete the checkpoint to train afresh, or resume with the settings it was trained with."
        )
    if progress:
        say(f"Resuming from the checkpoint after epoch {progress['epoch']}.")
    started = time.perf_counter()
    if not log:
        with torch.no_grad():
            initial = mean_block_loss(run.train_loss, train_blocks, run.train_cache, args.batch_size)
        log.append(measure(0, initial, 0.0, 0))
        say(_format_row(log[-1]))
        if on_epoch is not None and is_main:
            on_epoch(log[-1])

    for epoch in range(log[-1]["epoch"] + 1, args.epochs + 1):
        if reached_target(log, args.until_loss):
            break  # a resumed run that had already reached its target
        train_loss, seconds = _one_epoch(run, train_blocks, epoch)
        row = measure(epoch, train_loss, seconds, len(train_blocks) * train_blocks.shape[1])
        log.append(row)
        say(_format_row(row))
        # from reduced values: the same on every process
        diverged = divergence(log, args.diverge_factor, args.diverge_patience)
        if (
            not diverged
            and reached_target(log, args.until_loss)
            and probe is not None
            and args.diversity_every
            and "ttr" not in row
        ):
            row.update(probe(run.bare_model, lockstep=run.strategy.lockstep))  # the last epoch is always probed
        final = bool(diverged) or reached_target(log, args.until_loss) or epoch == args.epochs
        _checkpoint(run, log, final)
        if on_epoch is not None and is_main:
            on_epoch(row)
        if diverged:
            raise DivergenceError(
                f"Training diverged: {diverged}. A diverging run is no evidence of hyperfitting; lower train.lr (now "
                f"{args.lr:g}) "
                f"and start again (the checkpoint after epoch {epoch} is in {checkpoint_dir})."
            )
        if reached_target(log, args.until_loss):
            say(f"Reached the target loss {args.until_loss:g} after epoch {epoch}.")
    if not reached_target(log, args.until_loss) and args.until_loss is not None:
        say(
            f"The training loss is {log[-1]['train_loss']:.3f} after the cap of {args.epochs} epochs, short of the "
            "target "
            f"{args.until_loss:g}: raise train.epochs or train.lr."
        )
    run.accelerator.wait_for_everyone()
    if is_main:
        write_jsonl(checkpoint_dir / "train_log.jsonl", log)
    return TrainResult(run.bare_model, run.plan, log, time.perf_counter() - started, run.cache_seconds, run.precision)


def _set_up(model, train_blocks, heldout_blocks, config: RunConfig, checkpoint_dir: Path) -> _Run:
    """Processes and strategy, the trainable plan, the pre-flight check, the trunk caches, the optimizer."""
    from accelerate.utils import DistributedType

    from hyperfitting.distributed import make_accelerator
    from hyperfitting.precision import training_precision

    args = config.train
    precision = training_precision(config)
    # The steps' autocast is ours, not accelerate's: accelerate keeps its precision in process-wide state that a
    # second run in the same process (a control, the full fine-tune, a notebook) could not change.
    accelerator = make_accelerator(gradient_accumulation_steps=args.grad_accumulation)
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError(
            "accelerate's FSDP config is not used here: launch without it and set train.parallelism=fsdp "
            "(the loop shards the model itself with PyTorch FSDP2, under torchrun and accelerate launch alike)."
        )
    check_batch_split(len(train_blocks), args.batch_size, accelerator.num_processes, args.grad_accumulation)
    strategy = make_strategy(accelerator, args.parallelism, precision)
    model, plan = prepare_for_training(model, args)
    strategy.place(model)
    say = accelerator.print
    say(plan.summary())
    if accelerator.num_processes > 1:
        say(f"Parallelism: {strategy.describe()}.")

    use_cache = plan.first_trainable_block > 0 if args.trunk_cache == "auto" else args.trunk_cache == "on"
    if use_cache and plan.first_trainable_block == 0:
        say("train.trunk_cache=on has no effect: block 0 is trainable, so nothing below it is frozen.")
        use_cache = False
    if use_cache and strategy.trunk_cache_refused():
        say(strategy.trunk_cache_refused())
        use_cache = False
    need = preflight.estimate(
        model,
        plan.trainable_parameters,
        plan.first_trainable_block,
        len(find_block_stack(model)),
        use_cache,
        len(train_blocks),
        len(heldout_blocks),
        train_blocks.shape[1],
        args.batch_size // accelerator.num_processes,
        args.trunk_cache_max_memory_gb,
        shards=strategy.shards,
    )
    preflight.check_fits(need, accelerator.device, checkpoint_dir, weights_loaded=strategy.shards == 1)

    cache_started = time.perf_counter()
    train_cache = heldout_cache = None
    if use_cache:
        k = plan.first_trainable_block
        build = lambda ids, name: TrunkCache.build(  # noqa: E731
            model,
            k,
            ids,
            args.batch_size,
            args.trunk_cache_max_memory_gb,
            checkpoint_dir / f"trunk_cache_{name}.rank{accelerator.process_index}.npy",
            desc=f"trunk cache ({name})",
        )
        train_cache = build(train_blocks, "train")
        heldout_cache = build(heldout_blocks, "heldout") if len(heldout_blocks) else None
        say(
            f"Trunk cache: inputs to block {k} for {len(train_blocks)} training blocks ({train_cache.nbytes / 1e6:.1f} "
            "MB), "
            f"built in {time.perf_counter() - cache_started:.1f} s; blocks 0-{k - 1} are skipped from now on."
        )
    cache_seconds = time.perf_counter() - cache_started

    # On a GPU, Adam's update of every tensor in one fused kernel (not one launch per tensor and step); sharded (FSDP)
    # parameters keep the default implementation, the one the sharded runs were checked with.
    fused = accelerator.device.type == "cuda" and strategy.shards == 1
    make_optimizer = lambda m: torch.optim.Adam(
        [p for p in m.parameters() if p.requires_grad],
        lr=args.lr,  # noqa: E731
        weight_decay=args.weight_decay,
        fused=fused or None,
    )
    model, optimizer, bare_model, bare_optimizer = strategy.prepare(model, make_optimizer)
    return _Run(
        args,
        accelerator,
        strategy,
        precision,
        plan,
        model,
        optimizer,
        bare_model,
        bare_optimizer,
        BlockLoss(model, train_cache),
        BlockLoss(model, heldout_cache),
        train_cache,
        heldout_cache,
        cache_seconds,
        checkpoint_dir,
    )


PROGRESS_EVERY = 16  # training steps between two updates of the progress bar's loss (each one waits for the device)


def _stop_if_diverged(run: _Run, bad: torch.Tensor, losses: list[torch.Tensor], epoch: int) -> None:
    """Raise if any process has seen a non-finite loss (every process raises, or none: one alone would leave the
    others waiting). Checked every PROGRESS_EVERY steps, so a few steps may have run on the bad weights: nothing of
    this epoch is saved, and the run resumes from the checkpoint of the epoch before. The model in memory is spoilt."""
    if run.accelerator.num_processes > 1:
        bad = run.accelerator.reduce(bad.float(), reduction="sum") > 0
    if bool(bad):
        first = next(
            (v for v in torch.stack(losses).float().tolist() if not math.isfinite(v)), "non-finite on another process"
        )
        raise DivergenceError(
            f"The training loss became {first} in epoch {epoch}. The last good checkpoint (after epoch {epoch - 1}) is "
            f"kept in {run.checkpoint_dir}; lower train.lr and resume with --resume."
        )


def _one_epoch(run: _Run, train_blocks: torch.Tensor, epoch: int) -> tuple[float, float]:
    """One pass over the training blocks in this epoch's order: (mean training loss over the processes, seconds)."""
    from hyperfitting.precision import training_autocast

    args, accelerator = run.args, run.accelerator
    set_adapter_dropout(run.bare_model, True)  # train.lora_dropout acts while training, and only there
    order = epoch_order(len(train_blocks), args.seed, epoch)
    # Every process sees the same global batches and takes its share of each, so N processes
    # follow the single-process trajectory (the gradients of the shares are averaged).
    batches = [run.strategy.batch_share(order[i : i + args.batch_size]) for i in range(0, len(order), args.batch_size)]
    started = time.perf_counter()
    losses = []  # each step's loss, left on the device: reading one waits for the device, so they are read together
    bad = torch.zeros((), dtype=torch.bool, device=accelerator.device)  # any non-finite loss so far, also on the device
    bar = progress_bar(
        batches, desc=f"epoch {epoch}/{args.epochs}", unit="batch", leave=False, disable=not accelerator.is_main_process
    )
    for step, index in enumerate(bar, 1):
        with accelerator.accumulate(run.model):
            with training_autocast(run.precision, accelerator.device):
                loss = run.train_loss(
                    train_blocks[index], run.train_cache[index] if run.train_cache is not None else None
                )
            accelerator.backward(loss)
            run.optimizer.step()
            run.optimizer.zero_grad()
        losses.append(loss.detach())
        bad |= ~torch.isfinite(losses[-1])
        # the only reads inside the epoch: every process has as many steps
        if step % PROGRESS_EVERY == 0 or step == len(batches):
            _stop_if_diverged(run, bad, losses, epoch)
            elapsed = time.perf_counter() - started
            bar.set_postfix(
                loss=f"{losses[-1].item():.3f}", tok_s=f"{step * len(index) * train_blocks.shape[1] / elapsed:.0f}"
            )
    values = torch.stack(losses).float().tolist() if losses else []
    losses = values
    seconds = time.perf_counter() - started
    set_adapter_dropout(run.bare_model, False)  # held-out loss and probes measure the model deterministically
    mean_loss = accelerator.reduce(
        torch.tensor(sum(losses) / len(losses), device=accelerator.device), reduction="mean"
    ).item()
    return mean_loss, seconds


def _checkpoint(run: _Run, log: list[dict], final: bool) -> None:
    """After each epoch: the checkpoint (in the strategy's format) when it is due (:func:`_checkpoint_due`), the
    lowest-held-out weights when this epoch set the lowest held-out loss, and the log. Every process calls it (a
    sharded save is a collective)."""
    epoch, row = log[-1]["epoch"], log[-1]
    run.trained_since_checkpoint += row["epoch_seconds"]
    row["checkpointed"] = _checkpoint_due(run, final)
    if row["checkpointed"]:
        started = time.perf_counter()
        run.strategy.save_checkpoint(
            run.bare_model,
            run.bare_optimizer,
            {"log": log, "epoch": epoch, "recipe": _recipe(run.args)},
            run.checkpoint_dir,
        )
        run.checkpoint_cost, run.trained_since_checkpoint = time.perf_counter() - started, 0.0
    if run.args.keep_lowest_heldout and lowest_heldout_epoch(log) == epoch:  # the same decision on every process
        trainable = run.strategy.trainable_state(run.bare_model)
        if run.accelerator.is_main_process:
            save_atomically(
                {"trainable": trainable, "epoch": epoch, "heldout_loss": row["heldout_loss"]},
                run.checkpoint_dir / LOWEST_HELDOUT,
            )
    if run.accelerator.is_main_process:
        write_jsonl(run.checkpoint_dir / "train_log.jsonl", log)


def _recipe(args) -> dict:
    """The settings a checkpoint must have been trained with to be resumed: the optimizer state carries the rate on,
    and the seed fixes the data order."""
    return {"lr": args.lr, "seed": args.seed}


def _checkpoint_due(run: _Run, final: bool) -> bool:
    """The first and the final epoch write a checkpoint; another one does when the last write took at most
    train.checkpoint_max_share of the training time since it. Process 0 decides for all (a sharded save is a
    collective)."""
    share = run.args.checkpoint_max_share
    due = (
        final
        or share is None
        or run.checkpoint_cost == 0.0
        or run.checkpoint_cost <= share * run.trained_since_checkpoint
    )
    if run.strategy.processes > 1:
        flag = torch.tensor(int(due), device=run.accelerator.device)
        torch.distributed.broadcast(flag, src=0)
        due = bool(flag)
    return due


def lowest_heldout_epoch(log: list[dict]) -> int | None:
    """The epoch (0 = before training) whose held-out loss is the lowest so far; None without held-out blocks."""
    scored = [(row["heldout_loss"], row["epoch"]) for row in log if math.isfinite(row.get("heldout_loss", math.nan))]
    return min(scored)[1] if scored else None


def restore_trainable(model, trainable: dict[str, torch.Tensor], source: Path):
    """Copy saved trainable weights (keyed by parameter name) into ``model``, refusing names it does not have."""
    # The state dict, not named_parameters: a tied head is one parameter under two names, and a saved state has both.
    unknown = model.load_state_dict(trainable, strict=False).unexpected_keys
    if unknown:
        raise CheckpointError(
            f"{source} names {len(unknown)} parameters the model does not have (first: {sorted(unknown)[0]}). "
            "It was saved by another version or recipe: delete it and run that stage again."
        )
    return model


def load_lowest_heldout(args, folder: Path):
    """(model, epoch): the hyperfitted run in ``folder`` as it was at its epoch of lowest held-out loss, ready for
    inference.

    (None, 0) when the held-out loss never fell below its value before training: then nothing was saved, and the
    control is the base model itself.
    """
    from hyperfitting.config import replace

    from hyperfitting.models.loading import adapter_folder, finetuned_model_folder, load_hyperfitted, load_model

    path = Path(folder) / LOWEST_HELDOUT
    if not path.exists():
        return None, 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if finetuned_model_folder(folder) is not None:
        model = load_hyperfitted(args, folder)[0]
    else:  # the adapter unmerged, so its LoRA weights have their names; merged once they are restored
        model = load_model(replace(args, adapter=str(adapter_folder(folder))), for_training=True)[0]
    model = restore_trainable(model, state["trainable"], path)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.requires_grad_(False)
    return model.eval(), int(state["epoch"])


def reached_target(log: list[dict], until_loss: float | None) -> bool:
    """True once an epoch (not the initial measurement) ended at or below the target loss."""
    return until_loss is not None and len(log) > 1 and log[-1]["train_loss"] <= until_loss


def _format_row(row: dict) -> str:
    parts = [f"epoch {row['epoch']:>3}", f"train loss {row['train_loss']:.4f}"]
    # epochs that skip it say nothing of it
    if row.get("heldout_loss") is not None and row["heldout_loss"] == row["heldout_loss"]:
        parts.append(f"held-out loss {row['heldout_loss']:.4f}")
    if row.get("tokens_per_second"):
        parts.append(f"{row['tokens_per_second']:.0f} tok/s")
    for key in ("ttr", "distinct_3"):
        if key in row:
            parts.append(f"{key} {row[key]:.3f}")
    return " | ".join(parts)


def save_trained(model, tokenizer, plan: TrainablePlan, folder: Path) -> Path:
    """A LoRA run saves a standard PEFT adapter (adapter/); a full run a transformers model (model/). Rank 0 writes.

    Every process must call it: an FSDP-sharded model is first gathered (a collective).
    """
    import shutil

    from hyperfitting.rundir import is_main_process

    target = folder / ("adapter" if plan.method == "lora" else "model")
    gathered = None
    if is_sharded(model):
        gathered = full_model_state(model)
        # A tied head comes back as its own tensor; keep one name per parameter, as an unsharded save would.
        names = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
        gathered = {name: tensor for name, tensor in gathered.items() if name in names}
    if not is_main_process():
        return target
    partial = folder / (target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(
        partial, safe_serialization=True, **({"state_dict": gathered} if gathered is not None else {})
    )
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target
