"""Find a causal LM's transformer blocks, whatever the architecture calls them, and parse block selections."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from hyperfitting.errors import ConfigError


@dataclass(frozen=True)
class BlockStack:
    """The ModuleList of transformer blocks and where it hangs in the module tree."""

    parent: nn.Module
    attribute: str
    """Name of the list on its parent: `layers` (Llama, Qwen2, Gemma), `h` (GPT-2)..."""
    path: str

    @property
    def blocks(self) -> nn.ModuleList:
        return getattr(self.parent, self.attribute)

    def __len__(self) -> int:
        return len(self.blocks)


def num_blocks_from_config(config) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError("cannot tell the number of blocks from the model config")


def find_block_stack(model: nn.Module) -> BlockStack:
    """The ModuleList whose length equals the configured number of blocks."""
    model = getattr(model, "module", model)  # look inside a DistributedDataParallel wrapper
    config = getattr(model, "config", None)
    n_blocks = num_blocks_from_config(config) if config is not None else None
    candidates = []
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n_blocks is None or len(module) == n_blocks):
            candidates.append(path)
    if not candidates:
        raise ValueError(f"no list of {n_blocks} transformer blocks found in {type(model).__name__}")
    path = min(candidates, key=len)  # the outermost, not a list nested inside a block
    parent_path, _, attribute = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    return BlockStack(parent=parent, attribute=attribute, path=path)


def parse_block_selection(selection: str, n_blocks: int) -> list[int]:
    """`all`, `last:K`, `first:K`, `3,5,7`, `10-14` (ranges inclusive), or a mix -> sorted block indices."""
    text = selection.strip().lower()
    if text == "all":
        return list(range(n_blocks))
    match = re.fullmatch(r"(last|first):(\d+)", text)
    if match:
        count = int(match.group(2))
        if not 1 <= count <= n_blocks:
            raise ConfigError(
                f"Block selection '{selection}' asks for {count} blocks but the model has {n_blocks} "
                f"(blocks 0-{n_blocks - 1}); use a count between 1 and {n_blocks}."
            )
        return list(range(n_blocks - count, n_blocks)) if match.group(1) == "last" else list(range(count))
    indices: set[int] = set()
    for part in text.replace(" ", "").split(","):
        range_match = re.fullmatch(r"(-?\d+)-(\d+)", part)
        if range_match:
            low, high = int(range_match.group(1)), int(range_match.group(2))
            if low > high:
                raise ConfigError(
                    f"Block selection '{selection}': the range {part} runs backwards; write it low to high, "
                    f"as {high}-{low}."
                )
            indices.update(range(low, high + 1))
        elif re.fullmatch(r"-?\d+", part):
            indices.add(int(part))
        else:
            raise ConfigError(
                f"Cannot read block selection '{selection}'. Use all, last:K, first:K, or indices like 0,3,7 or 10-14."
            )
    outside = sorted(i for i in indices if not 0 <= i < n_blocks)
    if outside or not indices:
        raise ConfigError(
            f"Block selection '{selection}' names block {outside[0] if outside else '(none)'}, "
            f"but the model has blocks 0-{n_blocks - 1}."
        )
    return sorted(indices)


def linear_module_names(stack: BlockStack) -> list[str]:
    """Leaf names of the linear projections inside the blocks (GPT-2's Conv1D counts as linear)."""
    from transformers.pytorch_utils import Conv1D

    names = set()
    for block in stack.blocks:
        for path, module in block.named_modules():
            if isinstance(module, (nn.Linear, Conv1D)):
                names.add(path.rsplit(".", 1)[-1])
    return sorted(names)
