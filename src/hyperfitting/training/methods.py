"""What gets trained: every parameter (`full`, optionally limited to some blocks) or PEFT LoRA on chosen blocks."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hyperfitting.config import TrainArgs
from hyperfitting.models.blocks import find_block_stack, linear_module_names, parse_block_selection
from hyperfitting.seeding import seeded


@dataclass(frozen=True)
class TrainablePlan:
    method: str
    blocks: list[int]
    """Blocks that hold trainable parameters."""
    first_trainable_block: int
    """Blocks below this one are frozen: their outputs can be cached once (the trunk cache)."""
    trainable_parameters: int
    total_parameters: int

    def summary(self) -> str:
        share = 100.0 * self.trainable_parameters / max(1, self.total_parameters)
        span = (
            f"blocks {self.blocks[0]}-{self.blocks[-1]}"
            if self.blocks == list(range(self.blocks[0], self.blocks[-1] + 1))
            else f"blocks {self.blocks}"
        )
        trainable = f"{self.trainable_parameters:,} trainable parameters ({share:.2f}% of {self.total_parameters:,})"
        return f"{self.method} on {span}: {trainable}"


def prepare_for_training(model: nn.Module, args: TrainArgs) -> tuple[nn.Module, TrainablePlan]:
    """Freeze, wrap or unfreeze the model as ``args`` asks; return the model to train and what it trains."""
    stack = find_block_stack(model)
    n_blocks = len(stack)
    blocks = parse_block_selection(args.blocks or "all", n_blocks)
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = args.target_modules or linear_module_names(stack)
        # layers_to_transform needs target_modules as a list, not "all-linear" (a known PEFT pitfall).
        lora_config = LoraConfig(
            r=args.lora_rank,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=list(targets),
            layers_to_transform=blocks,
            layers_pattern=stack.attribute,
            bias="none",
            task_type="CAUSAL_LM",
        )
        with seeded(args.seed):  # LoRA's A matrices are random: same seed, same start
            model = get_peft_model(model, lora_config)
        first = blocks[0]
    else:
        whole_model = blocks == list(range(n_blocks))
        for parameter in model.parameters():
            parameter.requires_grad_(whole_model)
        if not whole_model:
            for index in blocks:
                for parameter in stack.blocks[index].parameters():
                    parameter.requires_grad_(True)
        first = 0 if whole_model else blocks[0]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return model, TrainablePlan(args.method, blocks, first, trainable, total)
